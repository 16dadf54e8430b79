"""The tiled head and cross entropy against the dense one and a float64 reference; no [B, L, V] logits."""

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import relative_error

from wavefield_jax import losses
from wavefield_jax.config import validate_model_config
from wavefield_jax.train_lib import init_state, token_losses


def cross_entropy_f64(hidden, embedding, targets) -> np.ndarray:
  logits = np.einsum("bld,vd->blv", np.float64(hidden), np.float64(embedding))
  top = logits.max(-1, keepdims=True)
  normaliser = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
  return normaliser - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("length, tile", [(1, 8), (37, 8), (64, 16), (50, 64)])
def test_tiled_loss_and_gradients_equal_the_dense(rng, length, tile):
  hidden = rng.standard_normal((3, length, 16)).astype(np.float32)
  embedding = rng.standard_normal((97, 16)).astype(np.float32) / 4
  targets = rng.integers(0, 97, (3, length))
  weights = rng.standard_normal((3, length)).astype(np.float32)  # a cotangent that is not all ones
  tiled = jax.jit(losses.tiled_cross_entropy, static_argnums=3)
  assert relative_error(tiled(hidden, embedding, targets, tile), cross_entropy_f64(hidden, embedding, targets)) < 1e-6

  def dense_loss(h, e):
    return jnp.sum(weights * losses.dense_cross_entropy(jnp.einsum("bld,vd->blv", h, e), targets))

  def tiled_loss(h, e):
    return jnp.sum(weights * tiled(h, e, targets, tile))

  want = jax.grad(dense_loss, argnums=(0, 1))(hidden, embedding)
  got = jax.jit(jax.grad(tiled_loss, argnums=(0, 1)))(hidden, embedding)
  for g, w in zip(got, want, strict=True):
    assert relative_error(g, w) < 1e-5


def tiny_config(**model):
  config = helpers.load_config("tiny", "hybrid")
  config.model.update(dict(vocab_size=512) | model)  # a vocabulary that is not a multiple of the tiles
  return config


def loss_and_grads(config, batch):
  graphdef, state, _ = init_state(config, 0)
  fn = jax.jit(jax.value_and_grad(lambda p: token_losses(graphdef, p, batch).mean()))
  return fn, state["params"]


@pytest.mark.slow
def test_model_loss_with_tiles_equals_dense_logits(rng):
  batch = jnp.asarray(rng.integers(0, 512, (2, 51)))
  dense_fn, params = loss_and_grads(tiny_config(), batch)
  tiled_fn, _ = loss_and_grads(tiny_config(loss_chunk_size=8), batch)
  (dense, dense_grads), (tiled, tiled_grads) = dense_fn(params), tiled_fn(params)
  assert abs(float(tiled) - float(dense)) < 1e-5 * float(dense)
  for g, w in zip(jax.tree.leaves(tiled_grads), jax.tree.leaves(dense_grads), strict=True):
    assert relative_error(g, w) < 1e-4


def holds_logits(compiled_text: str, batch: int, length: int, vocab: int) -> bool:
  return f"f32[{batch},{length},{vocab}]" in compiled_text


@pytest.mark.slow
def test_tiled_step_never_builds_the_logits(rng):
  # Training and evaluation: the compiled program of each has no [B, L, V] float32 array; the dense one
  # has, so the check can fail.
  batch = jnp.asarray(rng.integers(0, 512, (2, 65)))
  for chunk, expected in ((None, True), (16, False)):
    fn, params = loss_and_grads(tiny_config(loss_chunk_size=chunk), batch)
    graphdef, _, _ = init_state(tiny_config(loss_chunk_size=chunk), 0)
    evaluation = jax.jit(lambda p, g=graphdef: token_losses(g, p, batch).sum())
    for compiled in (fn.lower(params).compile(), evaluation.lower(params).compile()):
      assert holds_logits(compiled.as_text(), 2, 64, 512) == expected, chunk


def test_bad_loss_chunk_size_names_the_key():
  with pytest.raises(ValueError, match="model.loss_chunk_size must be a positive integer"):
    validate_model_config(tiny_config(loss_chunk_size=0).model)
