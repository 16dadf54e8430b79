"""Documents kept apart: a packed row [A | B | ...] with segment ids gives, position by position, the outputs,
end states and gradients of each document run alone, in every mixer and method and across devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import random_problem, relative_error

from wavefield_jax import physics, sequence_parallel, sharding
from wavefield_jax.config import model_config
from wavefield_jax.model import WaveFieldLM

# Document lengths in a row of chunks of 8: starts inside a chunk (5, 41), exactly on chunk edges (16, 24,
# 40), a one-position document, and a document that spans several chunks (23 positions).
LENGTHS = (5, 11, 8, 16, 1, 23)
CHUNK = 8


def packed_ids(lengths, rng) -> np.ndarray:
  """[2, L] segment ids: arbitrary values that change at each document start (rows differ)."""
  values = rng.permutation(100)[: len(lengths)]
  row = np.repeat(values, lengths)
  return np.stack([row, row]).astype(np.int32)


def pieces(lengths):
  cuts = np.cumsum((0, *lengths))
  return list(zip(cuts[:-1], cuts[1:], strict=True))


def physics_cases(rng, length):
  """name -> (packed(inputs, ids) -> (y, end state or None), the inputs [B, L, ...])."""
  u, speed, damping, phase = random_problem(rng, B=2, L=length, H=3, K=4)
  damping[0] = 1e-3  # a long memory that would cross every start
  constants = (speed, damping, phase)
  delta = rng.uniform(0.2, 2.0, u.shape[:3]).astype(np.float32)
  q, k = (rng.standard_normal(u.shape).astype(np.float32) for _ in range(2))
  wave = lambda method: (
    lambda a, ids: physics.wave_conv_chunked(  # noqa: E731
      a[0], *constants, None if method == "fft" else CHUNK, method=method, segment_ids=ids
    )
  )
  return {
    "wave_matmul": (wave("matmul"), (u,)),
    "wave_fft": (wave("fft"), (u,)),
    "wave_conv": (lambda a, ids: (physics.wave_conv(a[0], *constants, method="fft", segment_ids=ids), None), (u,)),
    "wave_scan": (lambda a, ids: (physics.wave_scan(a[0], *constants, segment_ids=ids), None), (u,)),
    "selective": (
      lambda a, ids: physics.selective_conv_chunked(a[0], a[1], *constants, CHUNK, segment_ids=ids),
      (u, delta),
    ),
    "selective_scan": (
      lambda a, ids: (physics.selective_scan(a[0], a[1], *constants, segment_ids=ids), None),
      (u, delta),
    ),
    "retention": (
      lambda a, ids: physics.retention_chunked(a[0], a[1], a[2], *constants, CHUNK, segment_ids=ids),
      (q, k, u),
    ),
  }


@pytest.mark.slow
def test_every_physics_form_keeps_documents_apart(rng):
  lengths = LENGTHS
  ids = packed_ids(lengths, rng)
  for name, (fn, inputs) in physics_cases(rng, sum(lengths)).items():
    y, state = fn(inputs, ids)
    alone = [fn(tuple(a[:, start:end] for a in inputs), None) for start, end in pieces(lengths)]
    want = np.concatenate([np.asarray(y_doc) for y_doc, _ in alone], axis=1)
    assert relative_error(y, want) < 1e-5, name
    if state is not None:  # the state after the row is the last document's alone
      assert relative_error(state, alone[-1][1]) < 1e-5, name
    # Without the ids the documents do mix: the comparison can fail.
    assert relative_error(fn(inputs, None)[0], want) > 1e-3, name


def test_segment_ids_are_checked_by_name(rng):
  u, speed, damping, phase = random_problem(rng, B=2, L=10, H=3, K=4)
  with pytest.raises(ValueError, match=r"segment_ids must have shape \[B, L\] = \(2, 10\)"):
    physics.wave_conv(u, speed, damping, phase, segment_ids=np.zeros((2, 9), np.int32))
  with pytest.raises(TypeError, match="segment_ids must be integers"):
    physics.wave_conv(u, speed, damping, phase, segment_ids=np.zeros((2, 10), np.float32))


def small_model(mixers, **overrides):
  config = model_config(
    vocab_size=61, dim=32, num_layers=len(mixers), num_heads=4, mixers=mixers, mlp_dim=64, max_len=64, window=8
  )
  config.update(overrides)
  return WaveFieldLM(config, rngs=nnx.Rngs(0))


def packed_and_alone(model, tokens, ids, lengths, gradients: bool):
  """(logits, parameter gradients or None) of the packed row and of its documents run alone; the gradients
  are those of the summed per-position log-probabilities under fixed random weights."""
  graphdef, params = nnx.split(model)
  weights = jax.random.normal(jax.random.key(1), (*tokens.shape, model.config.vocab_size))

  def loss(params, tokens, weights, ids):
    logits = nnx.merge(graphdef, params)(tokens, ids)
    return jnp.sum(jax.nn.log_softmax(logits) * weights), logits

  if gradients:
    run = jax.jit(jax.grad(loss, has_aux=True))
  else:
    run = jax.jit(lambda *args: (None, loss(*args)[1]))
  packed_grads, packed_logits = run(params, tokens, weights, ids)
  alone_grads, alone_logits = None, []
  for start, end in pieces(lengths):
    g, logits = run(params, tokens[:, start:end], weights[:, start:end], None)
    alone_logits.append(logits)
    alone_grads = g if alone_grads is None else jax.tree.map(jnp.add, alone_grads, g)
  return (packed_logits, packed_grads), (jnp.concatenate(alone_logits, axis=1), alone_grads)


# Logits through every mixer kind in one model (one compilation per length); gradients through the wave
# mixer and the sliding window (the remat policies with segment ids are compared in test_model).
MODEL_CASES = {
  "every_mixer_logits": (("wave", "selective", "retention", "attention", "local"), False),
  "wave_local_gradients": (("wave", "local"), True),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", MODEL_CASES)
def test_a_packed_row_gives_each_document_its_own_logits_and_gradients(rng, case):
  mixers, gradients = MODEL_CASES[case]
  lengths = (13, 27)  # a start inside a chunk; the local window (8) is shorter than both documents
  model = small_model(mixers, wave_chunk_size=CHUNK)
  tokens = jnp.asarray(rng.integers(0, 61, (2, sum(lengths))), jnp.int32)
  ids = packed_ids(lengths, rng)
  (logits, grads), (want_logits, want_grads) = packed_and_alone(model, tokens, ids, lengths, gradients)
  assert relative_error(logits, want_logits) < 1e-5
  if gradients:
    want = dict(jax.tree_util.tree_leaves_with_path(want_grads))
    for path, got in jax.tree_util.tree_leaves_with_path(grads):
      assert relative_error(got, want[path]) < 1e-4, jax.tree_util.keystr(path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wave", "selective", "retention"])
def test_documents_stay_apart_across_devices(rng, kind):
  # 4 devices along the sequence, 12 positions each: starts inside a device's shard, on its first position
  # (24) and on its last (35), and a document that spans three devices.
  lengths = (7, 17, 11, 1, 12)
  mesh = sharding.make_mesh(1, 4, devices=jax.devices()[:4])
  ids = packed_ids(lengths, rng)
  u, speed, damping, phase = random_problem(rng, B=2, L=sum(lengths), H=3, K=4)
  damping[0] = 1e-3
  delta = rng.uniform(0.2, 2.0, u.shape[:3]).astype(np.float32)
  q = rng.standard_normal(u.shape).astype(np.float32)
  constants = (speed, damping, phase)
  sharded, single = {
    "wave": (
      lambda ids: sequence_parallel.sharded_wave_conv(u, *constants, mesh, chunk_size=5, segment_ids=ids),
      lambda s, e: physics.wave_conv(u[:, s:e], *constants),
    ),
    "selective": (
      lambda ids: sequence_parallel.sharded_selective_conv(u, delta, *constants, mesh, chunk_size=5, segment_ids=ids),
      lambda s, e: physics.selective_conv_chunked(u[:, s:e], delta[:, s:e], *constants)[0],
    ),
    "retention": (
      lambda ids: sequence_parallel.sharded_retention(q, q, u, *constants, mesh, chunk_size=5, segment_ids=ids),
      lambda s, e: physics.retention_chunked(q[:, s:e], q[:, s:e], u[:, s:e], *constants)[0],
    ),
  }[kind]
  want = np.concatenate([np.asarray(single(s, e)) for s, e in pieces(lengths)], axis=1)
  assert relative_error(jax.jit(sharded)(ids), want) < 1e-5
  assert relative_error(jax.jit(sharded)(None), want) > 1e-3
