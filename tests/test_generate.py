"""Sampling: reproducible, the requested length, top-k and top-p respected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wavefield_jax.config import model_config
from wavefield_jax.generate import TRACE_COUNT, generate, sample_logits
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


@pytest.mark.slow
def test_a_second_call_with_the_same_shapes_traces_nothing(rng, model):
  prompt = jnp.asarray(rng.integers(0, 50, (2, 9)))
  generate(model, prompt, 6, rng=jax.random.key(1))
  traces = dict(TRACE_COUNT)
  # Another model object of the same structure, other weights, another prompt, another key.
  other = WaveFieldLM(model.config, rngs=nnx.Rngs(3))
  generate(other, jnp.asarray(rng.integers(0, 50, (2, 9))), 6, rng=jax.random.key(2))
  assert traces == TRACE_COUNT


@pytest.mark.slow
def test_long_and_ragged_prompts_follow_the_parallel_argmax(rng, model):
  """Prompts past one prefill chunk, and rows of other lengths in one batch (right-padded), continue as the
  parallel forward over each row alone says."""
  lengths = [150, 70, 129]
  prompt = rng.integers(0, 50, (3, 150))
  tokens = generate(model, prompt, 5, temperature=0.0, rng=jax.random.key(0), prompt_lengths=jnp.asarray(lengths))
  for row, length in enumerate(lengths):
    alone = np.concatenate([prompt[row, :length], np.asarray(tokens[row, 150:])])[None]
    logits = model(jnp.asarray(alone[:, :-1]))
    np.testing.assert_array_equal(alone[0, length:], np.argmax(logits[0, length - 1 :], axis=-1))


@pytest.mark.slow
def test_a_row_stops_at_its_stop_token(rng, model):
  prompt = jnp.asarray(rng.integers(0, 50, (2, 6)))
  free = np.asarray(generate(model, prompt, 8, temperature=0.0, rng=jax.random.key(0)))
  stop = int(free[0, 6 + 2])  # row 0's third new token
  stopped = np.asarray(generate(model, prompt, 8, temperature=0.0, rng=jax.random.key(0), stop_tokens=(stop,)))
  for row in range(2):
    first = 6 + int(np.flatnonzero(free[row, 6:] == stop)[0]) if stop in free[row, 6:] else None
    if first is None:
      np.testing.assert_array_equal(stopped[row], free[row])
    else:  # the same tokens up to the stop, then the stop repeated
      np.testing.assert_array_equal(stopped[row, : first + 1], free[row, : first + 1])
      assert np.all(stopped[row, first:] == stop)


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
