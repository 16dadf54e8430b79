"""Sampling: reproducible, the requested length, top-k and top-p respected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wavefield_jax.config import model_config
from wavefield_jax.generate import generate, sample_logits
from wavefield_jax.model import WaveFieldLM


@pytest.fixture(scope="module")
def model():
  config = model_config(vocab_size=50, dim=32, num_layers=2, num_heads=4, mixers=("wave", "attention"), mlp_dim=64)
  return WaveFieldLM(config, rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_generate_is_reproducible_and_has_the_requested_length(rng, model):
  prompt = jnp.asarray(rng.integers(0, 50, (3, 7)))
  first = generate(model, prompt, 12, rng=jax.random.key(5))
  again = generate(model, prompt, 12, rng=jax.random.key(5))
  other = generate(model, prompt, 12, rng=jax.random.key(6))
  assert first.shape == (3, 19)
  np.testing.assert_array_equal(first, again)
  np.testing.assert_array_equal(first[:, :7], prompt)
  assert not np.array_equal(first, other)
  assert generate(model, prompt, 0, rng=jax.random.key(0)).shape == (3, 7)


@pytest.mark.slow
def test_greedy_generation_follows_the_parallel_argmax(rng, model):
  prompt = jnp.asarray(rng.integers(0, 50, (2, 5)))
  tokens = generate(model, prompt, 8, temperature=0.0, rng=jax.random.key(0))
  logits = model(tokens[:, :-1])  # the parallel forward over what was generated
  np.testing.assert_array_equal(tokens[:, 5:], np.argmax(logits[:, 4:], axis=-1))


def test_top_k_only_draws_from_the_k_most_likely(rng):
  logits = jnp.asarray(rng.standard_normal((4, 30)), jnp.float32)
  allowed = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
  draws = jax.vmap(lambda key: sample_logits(logits, key, top_k=3))(jax.random.split(jax.random.key(1), 500))
  for row in range(4):
    assert set(np.asarray(draws[:, row])) == set(allowed[row])


def test_top_p_only_draws_from_the_nucleus(rng):
  logits = jnp.asarray(3 * rng.standard_normal((4, 30)), jnp.float32)
  probs = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)
  draws = jax.vmap(lambda key: sample_logits(logits, key, top_p=0.8))(jax.random.split(jax.random.key(2), 800))
  for row in range(4):
    order = np.argsort(-probs[row])
    size = int(np.searchsorted(np.cumsum(probs[row][order]), 0.8) + 1)  # smallest set reaching 0.8
    assert set(np.asarray(draws[:, row])) <= set(order[:size])
    assert order[0] in set(np.asarray(draws[:, row]))


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=1.5), "top_p"),
    (dict(temperature=-1.0), "temperature"),
  ],
)
def test_bad_sampling_arguments(model, kwargs, match):
  call = dict(max_new_tokens=3) | kwargs
  with pytest.raises(ValueError, match=match):
    generate(model, jnp.zeros((1, 2), jnp.int32) + 7, rng=jax.random.key(0), **call)
