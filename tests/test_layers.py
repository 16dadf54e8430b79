"""The NNX mixer: recurrent decoding equals the parallel forward, causality, its physical constants."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from reference import future_leak, relative_error

import wavefield_jax as wf
from wavefield_jax import attention, head_constants, layers
from wavefield_jax.train_lib import param_labels


def make_mixer(
  seed: int, dim=32, heads=4, max_len=256, conv_width=4, dtype=jnp.float32, method="auto", chunk_size=None
):
  return wf.WaveFieldMixer(
    dim,
    heads,
    max_len=max_len,
    conv_width=conv_width,
    method=method,
    chunk_size=chunk_size,
    dtype=dtype,
    rngs=nnx.Rngs(seed),
  )


# The parallel forward by each method, against the recurrence (decode) and the chunked prefill. The FFT
# method's cases are slow (every new length compiles its FFTs): `make test-fast` keeps the default method,
# and test_physics holds both methods in the fast set.
METHODS = [pytest.param("fft", None, marks=pytest.mark.slow), ("matmul", None), ("matmul", 16)]


def decode_token_by_token(mixer, x):
  cache = mixer.init_cache(x.shape[0])
  step = nnx.jit(lambda m, x_t, c: m.step(x_t, c))
  outputs = []
  for t in range(x.shape[1]):
    y_t, cache = step(mixer, x[:, t], cache)
    outputs.append(y_t)
  return jnp.stack(outputs, axis=1), cache


@pytest.mark.parametrize("method, chunk_size", METHODS)
@pytest.mark.parametrize("length", [1, 5, 256])
def test_token_by_token_equals_parallel_forward(rng, length, method, chunk_size):
  mixer = make_mixer(int(rng.integers(1 << 30)), method=method, chunk_size=chunk_size)
  x = rng.standard_normal((2, length, 32)).astype(np.float32)
  parallel = mixer(x)
  stepped, _ = decode_token_by_token(mixer, x)
  assert parallel.shape == x.shape
  assert relative_error(stepped, parallel) < 1e-4


@pytest.mark.parametrize("method, chunk_size", METHODS)
def test_prefill_then_steps_equals_parallel_forward(rng, method, chunk_size):
  mixer = make_mixer(int(rng.integers(1 << 30)), method=method, chunk_size=chunk_size)
  x = rng.standard_normal((3, 60, 32)).astype(np.float32)
  head, cache = mixer.prefill(x[:, :41])
  tail = []
  for t in range(41, 60):
    y_t, cache = mixer.step(x[:, t], cache)
    tail.append(y_t)
  got = jnp.concatenate([head, jnp.stack(tail, axis=1)], axis=1)
  assert relative_error(got, mixer(x)) < 1e-4
  # A prefill continued from a cache is the same as one prefill over everything.
  first, cache = mixer.prefill(x[:, :2])
  second, cache = mixer.prefill(x[:, 2:], cache)
  assert relative_error(jnp.concatenate([first, second], axis=1), mixer(x)) < 1e-4


@pytest.mark.parametrize("method, chunk_size", METHODS)
def test_mixer_is_causal(rng, method, chunk_size):
  mixer = make_mixer(int(rng.integers(1 << 30)), dim=16, heads=2, method=method, chunk_size=chunk_size)
  x = rng.standard_normal((1, 20, 16)).astype(np.float32)
  assert future_leak(lambda v: mixer(v), x) < 1e-6


def test_mixer_has_exactly_three_constants_per_head():
  mixer = make_mixer(0, dim=48, heads=6)
  constants = jax.tree.leaves(nnx.state(mixer, wf.WaveParam))
  assert sum(c.size for c in constants) == 3 * 6
  everything = jax.tree.leaves(nnx.state(mixer, nnx.Param))
  others = jax.tree.leaves(nnx.state(mixer, nnx.All(nnx.Param, nnx.Not(wf.WaveParam))))
  assert sum(a.size for a in everything) == sum(a.size for a in others) + 18


def test_initial_constants_span_the_scales():
  mixer = make_mixer(1, dim=64, heads=8, max_len=1024)
  speed, damping, phase = (np.asarray(a) for a in mixer.constants())
  np.testing.assert_allclose(damping.min(), 1 / 1024, rtol=1e-5)
  np.testing.assert_allclose(damping.max(), 1.0, rtol=1e-5)
  assert np.all((speed > 0) & (speed <= np.pi + 1e-5)) and np.ptp(speed) > np.pi / 2
  assert np.all((phase >= 0) & (phase < np.pi)) and np.ptp(phase) > np.pi / 2


@pytest.mark.parametrize("module", [wf.WaveFieldMixer, wf.SelectiveWaveMixer, wf.RetentionMixer])
def test_tied_speeds_start_at_each_heads_damping(rng, module):
  seed = int(rng.integers(1 << 30))
  tied, spread = (module(32, 4, max_len=512, speed_init=s, rngs=nnx.Rngs(seed)) for s in ("tied", "spread"))
  speed, damping, phase = (np.asarray(a) for a in tied.constants())
  np.testing.assert_allclose(speed, damping, rtol=1e-5)
  np.testing.assert_allclose(speed.min(), 1 / 512, rtol=1e-5)  # the global head turns a radian in the context
  spread_speed, spread_damping, spread_phase = (np.asarray(a) for a in spread.constants())
  np.testing.assert_array_equal(damping, spread_damping)
  np.testing.assert_array_equal(phase, spread_phase)  # the same draws: only the speeds differ
  assert np.ptp(spread_speed) > np.pi / 2


def test_an_unknown_speed_init_is_named():
  with pytest.raises(ValueError, match=r"speed_init must be one of \('spread', 'tied'\); got 'random'"):
    head_constants.initial_constants(4, 256, jax.random.key(0), "random")


def test_short_conv_matches_a_direct_sum(rng):
  x = rng.standard_normal((2, 9, 5)).astype(np.float32)
  kernel = rng.standard_normal((3, 5)).astype(np.float32)
  want = np.zeros_like(x)
  for t in range(9):
    for j in range(3):
      if t - j >= 0:
        want[:, t] += kernel[j] * x[:, t - j]
  np.testing.assert_allclose(layers.causal_depthwise_conv(x, kernel), want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_gradients_reach_the_physical_constants(rng):
  mixer = make_mixer(2)
  x = rng.standard_normal((2, 64, 32)).astype(np.float32)
  grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(mixer)
  for name in ("speed_raw", "damping_log", "phase"):
    g = np.asarray(getattr(grads.field, name)[...])
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, name


def test_bfloat16_mixer(rng):
  mixer = make_mixer(3, dtype=jnp.bfloat16)
  x = rng.standard_normal((2, 32, 32)).astype(np.float32)
  y = mixer(jnp.asarray(x, jnp.bfloat16))
  assert y.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y, np.float32)))
  reference = make_mixer(3)(x)
  assert relative_error(np.asarray(y, np.float32), reference) < 5e-2


def test_bad_mixer_config():
  with pytest.raises(ValueError, match="divisible by num_heads"):
    make_mixer(0, dim=30, heads=4)
  with pytest.raises(ValueError, match="conv_width"):
    make_mixer(0, conv_width=0)
  with pytest.raises(ValueError, match="method must be one of"):
    make_mixer(0, method="fast")
  with pytest.raises(ValueError, match="num_heads must be a positive integer; got 0"):
    make_mixer(0, heads=0)
  with pytest.raises(ValueError, match="max_len must be a positive integer; got 0"):
    make_mixer(0, max_len=0)
  mixer = make_mixer(0)
  for shape in ((2, 32), (2, 0, 32), (2, 5, 31)):
    with pytest.raises(ValueError, match=r"input must have shape \[B, L, D\] .* got shape " + re.escape(str(shape))):
      mixer(np.ones(shape, np.float32))


def local_attention_f64(q, k, v, window):
  """Softmax over the keys s with t - window < s <= t, written out per query in float64."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  out = np.zeros_like(v)
  for t in range(q.shape[1]):
    seen = slice(max(0, t - window + 1), t + 1)
    scores = np.einsum("bhk,bshk->bhs", q[:, t], k[:, seen]) / np.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    out[:, t] = np.einsum("bhs,bshk->bhk", weights / weights.sum(-1, keepdims=True), v[:, seen])
  return out


@pytest.mark.parametrize("length, window", [(1, 4), (37, 8), (64, 16), (50, 64)])
def test_local_attention_matches_the_windowed_softmax(rng, length, window):
  q, k, v = (rng.standard_normal((2, length, 3, 4)).astype(np.float32) for _ in range(3))
  got = attention.local_attention(q, k, v, window)
  assert relative_error(got, local_attention_f64(q, k, v, window)) < 1e-5


def make_local(seed: int, window: int = 8, dim: int = 32, heads: int = 4):
  return attention.LocalAttention(dim, heads, window=window, rngs=nnx.Rngs(seed))


def test_local_mixer_sees_exactly_its_window(rng):
  mixer = make_local(int(rng.integers(1 << 30)), window=5, dim=16, heads=2)
  x = rng.standard_normal((1, 24, 16)).astype(np.float32)
  jacobian = np.abs(np.asarray(jax.jacrev(lambda v: mixer(v))(jnp.asarray(x))))[0, :, :, 0, :, :]  # [L, D, L, D]
  reach = jacobian.max(axis=(1, 3))  # [t, s]
  lag = np.arange(24)[:, None] - np.arange(24)[None, :]
  assert reach[(lag < 0) | (lag >= 5)].max() == 0  # nothing from the future or from beyond the window
  assert reach[(lag >= 0) & (lag < 5)].min() > 0


def test_local_decode_and_prefill_equal_the_forward_beyond_the_window(rng):
  mixer = make_local(int(rng.integers(1 << 30)), window=8)
  x = rng.standard_normal((2, 30, 32)).astype(np.float32)  # nearly four windows
  want = mixer(x)
  stepped, _ = decode_token_by_token(mixer, x)
  assert relative_error(stepped, want) < 1e-5
  head, cache = mixer.prefill(x[:, :13], mixer.init_cache(2))
  tail, cache = mixer.prefill(x[:, 13:], cache)
  assert relative_error(jnp.concatenate([head, tail], axis=1), want) < 1e-5
  assert int(cache["index"]) == 30


def test_local_cache_does_not_grow_with_the_context():
  mixer = make_local(0, window=16)
  short, long = mixer.init_cache(1, 1024), mixer.init_cache(1, 65536)
  assert jax.tree.map(jnp.shape, short) == jax.tree.map(jnp.shape, long)
  assert short["k"].shape == (1, 16, 4, 8)


# The selective and content-addressed wave mixers (docs/design.md, section 7): the same three calls as the
# wave mixer, across many chunks of 8 and a length that is not a multiple of them.
SELECTIVE_AND_RETENTION = {"selective": layers.SelectiveWaveMixer, "retention": layers.RetentionMixer}


def make_mixer_of_kind(kind: str, seed: int, dim=32, heads=4, chunk_size=8, **kwargs):
  return SELECTIVE_AND_RETENTION[kind](dim, heads, max_len=256, chunk_size=chunk_size, rngs=nnx.Rngs(seed), **kwargs)


@pytest.mark.parametrize("kind", SELECTIVE_AND_RETENTION)
def test_selective_and_retention_decode_and_prefill_equal_the_forward(rng, kind):
  mixer = make_mixer_of_kind(kind, int(rng.integers(1 << 30)))
  x = rng.standard_normal((2, 61, 32)).astype(np.float32)
  parallel = nnx.jit(lambda m, x: m(x))(mixer, x)
  stepped, _ = decode_token_by_token(mixer, x)
  assert relative_error(stepped, parallel) < 1e-4
  prefill = nnx.jit(lambda m, x, c: m.prefill(x, c))
  first, cache = prefill(mixer, x[:, :29], mixer.init_cache(2))
  second, _ = prefill(mixer, x[:, 29:], cache)
  assert relative_error(jnp.concatenate([first, second], axis=1), parallel) < 1e-4


@pytest.mark.parametrize("kind", SELECTIVE_AND_RETENTION)
def test_selective_and_retention_are_causal(rng, kind):
  mixer = make_mixer_of_kind(kind, int(rng.integers(1 << 30)), dim=16, heads=2, chunk_size=4)
  x = rng.standard_normal((1, 18, 16)).astype(np.float32)
  assert future_leak(nnx.jit(lambda v: mixer(v)), x) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("kind", SELECTIVE_AND_RETENTION)
def test_selective_and_retention_keep_three_constants_per_head_and_a_bounded_cache(kind):
  mixer = make_mixer_of_kind(kind, 0, dim=48, heads=6)
  assert sum(c.size for c in jax.tree.leaves(nnx.state(mixer, wf.WaveParam))) == 3 * 6
  small, large = (jax.tree.map(jnp.shape, mixer.init_cache(2, n)) for n in (1024, 65536))
  assert small == large


@pytest.mark.slow
def test_selective_mixer_starts_as_the_wave_mixer(rng):
  seed = int(rng.integers(1 << 30))
  wave, selective = make_mixer(seed), make_mixer_of_kind("selective", seed, chunk_size=None)
  x = rng.standard_normal((2, 50, 32)).astype(np.float32)
  delta = np.asarray(selective.clock_steps(x))
  assert np.all((delta > 0.5) & (delta < 2.0)) and abs(delta.mean() - 1) < 0.1  # about one step per token
  selective.clock.kernel[...] = jnp.zeros_like(selective.clock.kernel[...])  # exactly one step per token
  np.testing.assert_allclose(np.asarray(selective.clock_steps(x)), 1.0, rtol=1e-6)
  assert relative_error(selective(x), wave(x)) < 1e-5


@pytest.mark.slow
def test_selective_mixer_gradients_reach_the_constants_and_the_clock(rng):
  mixer = make_mixer_of_kind("selective", int(rng.integers(1 << 30)))
  x = rng.standard_normal((2, 40, 32)).astype(np.float32)
  grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(mixer)
  field = grads.field
  for value in (field.speed_raw, field.damping_log, field.phase, grads.clock.kernel, grads.clock.bias):
    g = np.asarray(value[...])
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


@pytest.mark.slow
def test_retention_output_scale_does_not_grow_with_the_matches(rng):
  # The per-head norm: the same sources repeated 1x or 8x along the sequence give outputs of one scale.
  mixer = make_mixer_of_kind("retention", int(rng.integers(1 << 30)))
  x = rng.standard_normal((1, 8, 32)).astype(np.float32)
  once, many = mixer(x), mixer(np.tile(x, (1, 8, 1)))
  ratio = float(jnp.sqrt(jnp.mean(many[:, -8:] ** 2) / jnp.mean(once**2)))
  assert 0.5 < ratio < 2.0


@pytest.mark.slow
def test_param_labels_give_a_users_model_its_own_learning_rate_for_the_constants(rng):
  class Mine(nnx.Module):  # a user's model around the wave layer
    def __init__(self, rngs):
      self.mixer = wf.WaveFieldMixer(16, 2, max_len=64, rngs=rngs)
      self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
      return self.head(self.mixer(x))

  model = Mine(nnx.Rngs(0))
  labels = param_labels(model)
  assert labels["mixer"]["field"]["speed_raw"] == "wave" and labels["head"]["kernel"] == "decay"
  assert labels["head"]["bias"] == "no_decay"
  frozen = {"wave": optax.set_to_zero(), "decay": optax.adam(1e-2), "no_decay": optax.adam(1e-2)}
  optimizer = nnx.Optimizer(model, optax.multi_transform(frozen, labels), wrt=nnx.Param)
  before = nnx.state(model, nnx.Param)
  before = jax.tree.map(jnp.copy, before)
  x = jnp.asarray(rng.standard_normal((2, 12, 16)), jnp.float32)
  grads = nnx.grad(lambda m: (m(x) ** 2).mean())(model)
  optimizer.update(model, grads)
  after = nnx.state(model, nnx.Param)
  np.testing.assert_array_equal(after["mixer"]["field"]["speed_raw"][...], before["mixer"]["field"]["speed_raw"][...])
  assert not np.allclose(after["head"]["kernel"][...], before["head"]["kernel"][...])
