"""The pure physics functions against independent float64 references (docs/design.md, sections 1-2)."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from reference import (
  conv_f64,
  conv_f64_fft,
  field_f64,
  future_leak,
  kernel_f64,
  random_constants,
  random_problem,
  relative_error,
  retention_f64,
  retention_recurrence_f64,
  selective_f64,
  selective_recurrence_f64,
)

import wavefield_jax as wf
from wavefield_jax import physics

# Every property of the convolution holds for each way of computing it.
METHODS = ["fft", "matmul"]


@pytest.mark.parametrize("length", [1, 100, 4096, 65536])
def test_kernel_matches_float64_formula(rng, length):
  speed, damping, phase = random_constants(rng, 6)
  # The hard corners: the smallest and largest damping, speeds next to 0 and pi.
  damping[:2] = [1e-4, 5.0]
  speed[2:4] = [1e-4, np.float32(np.pi) - 1e-4]
  damping[2:4] = 1e-4
  got = np.asarray(wf.wave_kernel(speed, damping, phase, length))
  want = kernel_f64(speed, damping, phase, length)
  assert got.shape == (6, length) and got.dtype == np.float32
  for head in range(6):
    assert relative_error(got[head], want[head]) < 1e-3, (head, speed[head], damping[head])


def test_kernel_keeps_its_phase_at_long_range():
  # At t ~ 64k the plain float32 product c*t is off by ~0.01 rad; the kernel must not be.
  speed, damping, phase = np.float32([3.1]), np.float32([1e-5]), np.float32([0.3])
  length = 65536
  got = np.asarray(wf.wave_kernel(speed, damping, phase, length))[0, -4096:]
  want = kernel_f64(speed, damping, phase, length)[0, -4096:]
  assert relative_error(got, want) < 1e-4


def test_field_is_the_toeplitz_matrix_of_the_kernel(rng):
  speed, damping, phase = random_constants(rng, 3)
  got = np.asarray(wf.wave_field(speed, damping, phase, 40))
  np.testing.assert_allclose(got, field_f64(speed, damping, phase, 40), rtol=1e-4, atol=1e-7)
  assert np.all(np.triu(got[0], k=1) == 0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("length", [1, 7, 63, 64, 1000, 4097])
def test_conv_matches_quadratic_field(rng, length, method):
  small = length > 1000
  B, H, K = (1, 2, 2) if small else tuple(rng.integers(1, 4, size=3))
  u, speed, damping, phase = random_problem(rng, B=B, L=length, H=H, K=K)
  got = wf.wave_conv(u, speed, damping, phase, method=method)
  assert got.shape == u.shape and got.dtype == jnp.float32
  assert relative_error(got, conv_f64(u, speed, damping, phase)) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("method, chunk_size", [("fft", None), ("matmul", 64), ("matmul", 16)])
def test_conv_matches_float64_at_64k_with_long_lived_heads(rng, method, chunk_size):
  # 64k positions are 1024 chunks of 64 (4096 of 16): a head with damping 1e-6 sums every one of them,
  # so an error in the state carried from chunk to chunk would add up here.
  u, speed, damping, phase = random_problem(rng, B=1, L=65536, H=4, K=2)
  damping[:] = [1e-6, 1e-6, 1e-4, 0.3]
  speed[:2] = [1e-4, np.float32(np.pi) - 1e-4]  # next to 0 and to pi
  got = np.asarray(wf.wave_conv(u, speed, damping, phase, method=method, chunk_size=chunk_size))
  want = conv_f64_fft(u, speed, damping, phase)
  for head in range(4):
    assert relative_error(got[:, :, head], want[:, :, head]) < 1e-4, (head, damping[head])


@pytest.mark.parametrize("method", METHODS)
def test_conv_holds_across_nine_decades_of_damping(rng, method):
  u, speed, damping, phase = random_problem(rng, B=2, L=300, H=6, K=2)
  damping[:] = [1e-9, 1e-6, 1e-3, 1.0, 1e3, 1e6]  # from one-wave-for-all-positions to the identity
  got = np.asarray(wf.wave_conv(u, speed, damping, phase, method=method, chunk_size=32))
  want = conv_f64(u, speed, damping, phase)
  for head in range(6):
    assert relative_error(got[:, :, head], want[:, :, head]) < 1e-4, (head, damping[head])


def test_fft_length_is_long_enough_for_a_linear_convolution():
  for length in [1, 2, 3, 7, 64, 1000, 4097, 65536]:
    n = wf.fft_length(length)
    assert n >= 2 * length - 1
    remainder = n
    for p in (2, 3, 5):
      while remainder % p == 0:
        remainder //= p
    assert remainder == 1, n


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("length", [1, 37, 512])
def test_scan_matches_conv(rng, length, method):
  u, speed, damping, phase = random_problem(rng, B=2, L=length, H=3, K=4)
  want = wf.wave_conv(u, speed, damping, phase, method=method)
  assert relative_error(wf.wave_scan(u, speed, damping, phase), want) < 1e-3
  assert relative_error(want, conv_f64(u, speed, damping, phase)) < 1e-3


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunk_size", [1, 16, 50, 64, 300])
def test_chunked_matches_conv_and_scan(rng, chunk_size, method):
  u, speed, damping, phase = random_problem(rng, B=2, L=256, H=3, K=2)
  want = conv_f64(u, speed, damping, phase)
  chunked = wf.wave_conv(u, speed, damping, phase, method=method, chunk_size=chunk_size)
  assert relative_error(chunked, want) < 1e-3
  assert relative_error(chunked, wf.wave_scan(u, speed, damping, phase)) < 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_chunked_returns_the_state_the_recurrence_reaches(rng, method):
  u, speed, damping, phase = random_problem(rng, B=2, L=77, H=3, K=2)
  initial = (rng.standard_normal((2, 3, 2)) + 1j * rng.standard_normal((2, 3, 2))).astype(np.complex64)
  y, state = wf.wave_conv_chunked(u, speed, damping, phase, chunk_size=20, initial_state=initial, method=method)
  # The recurrence written out in float64.
  lam = np.exp(-damping.astype(np.float64) + 1j * speed.astype(np.float64))
  norm = -np.expm1(-damping.astype(np.float64))
  s, ys = initial.astype(np.complex128), []
  for t in range(77):
    s = lam[None, :, None] * s + u[:, t]
    ys.append(norm[None, :, None] * np.real(np.exp(1j * phase.astype(np.float64))[None, :, None] * s))
  assert relative_error(y, np.stack(ys, axis=1)) < 1e-4
  assert relative_error(state, s) < 1e-4


@pytest.mark.parametrize(
  "name, fn",
  [
    ("fft", lambda u, c, g, p: wf.wave_conv(u, c, g, p, method="fft")),
    ("scan", lambda u, c, g, p: wf.wave_scan(u, c, g, p)),
    ("fft chunked", lambda u, c, g, p: wf.wave_conv(u, c, g, p, method="fft", chunk_size=7)),
    ("matmul", lambda u, c, g, p: wf.wave_conv(u, c, g, p, method="matmul", chunk_size=7)),
  ],
)
def test_output_never_depends_on_the_future(rng, name, fn):
  u, speed, damping, phase = random_problem(rng, B=1, L=24, H=2, K=2)
  damping[:] = [1e-3, 0.05]  # long memory: a wrap-around would be loud
  assert future_leak(lambda x: fn(x, speed, damping, phase), u) < 1e-6, name


def test_causality_check_catches_a_leaky_fft(rng):
  u, speed, damping, phase = random_problem(rng, B=1, L=24, H=2, K=2)
  damping[:] = [1e-3, 0.05]
  kernel = wf.wave_kernel(speed, damping, phase, 24)

  def circular(x):  # FFT length L < 2L - 1: the future wraps into the past
    return physics.wave._heads_back(physics.wave._causal_fft_conv(physics.wave._heads_last(x), kernel, n=24))

  assert future_leak(circular, u) > 1e-2


@pytest.mark.slow
def test_gradients_through_constants_match_finite_differences(rng):
  with jax.enable_x64(True):
    u, speed, damping, phase = (np.float64(a) for a in random_problem(rng, B=2, L=50, H=3, K=2))
    damping[0] = 1e-3
    weights = rng.standard_normal(u.shape)

    def losses(c, g, p):
      return {
        "fft": jnp.sum(weights * wf.wave_conv(u, c, g, p, method="fft")),
        "fft chunked": jnp.sum(weights * wf.wave_conv(u, c, g, p, method="fft", chunk_size=16)),
        "matmul": jnp.sum(weights * wf.wave_conv(u, c, g, p, method="matmul", chunk_size=16)),
        "scan": jnp.sum(weights * wf.wave_scan(u, c, g, p)),
        "kernel": jnp.sum(weights[0, :, :, 0].T * wf.wave_kernel(c, g, p, 50)),
      }

    def reference_loss(name, c, g, p):
      if name == "kernel":
        return np.sum(weights[0, :, :, 0].T * kernel_f64(c, g, p, 50))
      return np.sum(weights * conv_f64(u, c, g, p))

    constants = (speed, damping, phase)
    numeric = {}  # (reference, which constant, head) -> central difference, shared by the conv methods
    for name in ("fft", "fft chunked", "matmul", "scan", "kernel"):
      grads = jax.grad(lambda *a, name=name: losses(*a)[name], argnums=(0, 1, 2))(*constants)
      reference = "kernel" if name == "kernel" else "conv"
      for which, (value, grad) in enumerate(zip(constants, grads, strict=True)):
        assert grad.dtype == jnp.float64
        for head in range(3):
          key = (reference, which, head)
          if key not in numeric:
            eps = 1e-6 * max(1.0, abs(value[head]))
            plus, minus = [list(constants) for _ in range(2)]
            plus[which], minus[which] = value.copy(), value.copy()
            plus[which][head] += eps
            minus[which][head] -= eps
            numeric[key] = (reference_loss(reference, *plus) - reference_loss(reference, *minus)) / (2 * eps)
          assert abs(grad[head] - numeric[key]) <= 1e-5 * max(1.0, abs(numeric[key])), (name, which, head)


@pytest.mark.parametrize(
  "method, chunk_size",
  # The chunked carry (matmul) and the FFT; the FFT in chunks is made of the two.
  [pytest.param("matmul", 16, marks=pytest.mark.slow), pytest.param("fft", None, marks=pytest.mark.slow)],
)
def test_forward_and_reverse_mode_through_the_constants_to_second_order(rng, method, chunk_size):
  # Analysing a trained model takes jvp, jacfwd and hessian through the constants, not only grad: every
  # mode against numerical differences, in float64 (damping as its log, the trained parameter, stays > 0).
  with jax.enable_x64(True):
    u, speed, damping, phase = (np.float64(a) for a in random_problem(rng, B=1, L=40, H=2, K=2))

    @jax.jit  # check_grads calls it and its derivatives many times: compiled once each, not op by op
    def conv(speed, log_damping, phase):
      return wf.wave_conv(u, speed, jnp.exp(log_damping), phase, method=method, chunk_size=chunk_size)

    # A step of 1e-6: the default 1e-4 leaves a truncation error of eps^2 * t^3 ~ 1e-4 when speed * t spans
    # tens of radians; in float64 the rounding error at 1e-6 is ~1e-10.
    check_grads(conv, (speed, np.log(damping), phase), order=2, modes=("fwd", "rev"), eps=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_with_respect_to_sources_is_the_transposed_field(rng, method):
  u, speed, damping, phase = random_problem(rng, B=1, L=30, H=2, K=1)
  weights = rng.standard_normal(u.shape).astype(np.float32)
  conv = lambda x: wf.wave_conv(x, speed, damping, phase, method=method, chunk_size=8)  # noqa: E731
  grad = jax.grad(lambda x: jnp.sum(weights * conv(x)))(u)
  want = np.einsum("hts,bthk->bshk", field_f64(speed, damping, phase, 30), weights)
  assert relative_error(grad, want) < 1e-4


class TransformsTest(chex.TestCase):
  """The same cases jitted, unjitted and under pmap (each of the 8 host devices computes them)."""

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_every_method_equals_the_float64_field_under_each_transform(self):
    # A chex TestCase takes no fixtures: the session seed comes from the environment conftest.py sets.
    rng = np.random.default_rng([int(os.environ["TEST_SEED"]), 12])
    u, speed, damping, phase = random_problem(rng, B=2, L=70, H=3, K=2)
    want = conv_f64(u, speed, damping, phase)
    for method, chunk_size in (("fft", None), ("fft", 16), ("matmul", 16)):
      conv = self.variant(lambda *a, m=method, t=chunk_size: wf.wave_conv(*a, method=m, chunk_size=t))
      got = conv(u, speed, damping, phase)
      chex.assert_shape(got, u.shape)
      assert relative_error(got, want) < 1e-4, (method, chunk_size)
    scan = self.variant(wf.wave_scan)
    assert relative_error(scan(u, speed, damping, phase), want) < 1e-4


def test_functions_jit(rng):
  u, speed, damping, phase = random_problem(rng, B=1, L=33, H=2, K=3)
  for fn in (wf.wave_conv, wf.wave_scan):
    assert relative_error(jax.jit(fn)(u, speed, damping, phase), fn(u, speed, damping, phase)) < 1e-6
  kernel = jax.jit(wf.wave_kernel, static_argnums=3)(speed, damping, phase, 33)
  assert relative_error(kernel, kernel_f64(speed, damping, phase, 33)) < 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_in_bfloat16_out(rng, method):
  u, speed, damping, phase = random_problem(rng, B=2, L=300, H=4, K=8)
  got = wf.wave_conv(jnp.asarray(u, jnp.bfloat16), speed, damping, phase, method=method)
  assert got.dtype == jnp.bfloat16
  want = conv_f64(np.asarray(jnp.asarray(u, jnp.bfloat16).astype(jnp.float32)), speed, damping, phase)
  assert relative_error(got.astype(jnp.float32), want) < 1e-2  # bf16 keeps 8 bits of mantissa
  assert wf.wave_scan(jnp.asarray(u, jnp.bfloat16), speed, damping, phase).dtype == jnp.bfloat16


@pytest.mark.parametrize(
  "args, match",
  [
    (dict(speed=np.ones(3)), "same number of heads"),
    (dict(damping=np.ones((4, 1))), "damping must be a 1-D"),
    (dict(speed=np.array([1.0, -0.5, 1.0, 1.0])), "speed must be finite and > 0.*head 1"),
    (dict(damping=np.array([0.1, 0.1, 0.0, 0.1])), "damping must be finite and > 0.*head 2"),
    (dict(phase=np.array([0.0, np.nan, 0.0, 0.0])), "phase must be finite"),
    (dict(u=np.ones((2, 5, 4))), "u must have shape \\[B, L, H, K\\]"),
    (dict(u=np.ones((2, 5, 3, 2))), "u has 3 heads"),
  ],
)
def test_bad_input_names_the_argument(rng, args, match):
  u, speed, damping, phase = random_problem(rng, B=2, L=5, H=4, K=2)
  call = dict(u=u, speed=speed, damping=damping, phase=phase) | args
  for fn in (wf.wave_conv, wf.wave_scan):
    with pytest.raises(ValueError, match=match):
      fn(call["u"], call["speed"], call["damping"], call["phase"])


def test_bad_length_and_chunk_size(rng):
  u, speed, damping, phase = random_problem(rng, B=1, L=5, H=2, K=2)
  with pytest.raises(ValueError, match="length must be a positive integer"):
    wf.wave_kernel(speed, damping, phase, 0)
  with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
    wf.wave_conv(u, speed, damping, phase, chunk_size=0)
  with pytest.raises(ValueError, match="method must be one of"):
    wf.wave_conv(u, speed, damping, phase, method="fast")
  with pytest.raises(ValueError, match="initial_state must have shape"):
    wf.wave_scan(u, speed, damping, phase, initial_state=np.zeros((1, 2, 3), np.complex64))


# The selective wave and the content-addressed wave (docs/design.md, section 7). Compiled once per shape:
# op by op, their many small einsums take seconds per call.
selective_chunked = jax.jit(physics.selective_conv_chunked, static_argnums=5)
retention_chunked = jax.jit(physics.retention_chunked, static_argnums=6)


def random_clock(rng: np.random.Generator, B: int, L: int, H: int) -> np.ndarray:
  """Clock steps spread over two decades, some near 0 (the field held still) and some large (flushed)."""
  return np.exp(rng.uniform(np.log(0.02), np.log(4.0), (B, L, H))).astype(np.float32)


def random_retention(rng: np.random.Generator, B: int, L: int, H: int, K: int, V: int):
  q, k = (rng.standard_normal((B, L, H, K)).astype(np.float32) / K**0.25 for _ in range(2))
  return q, k, rng.standard_normal((B, L, H, V)).astype(np.float32), *random_constants(rng, H)


@pytest.mark.parametrize("length, chunk_size", [(1, 32), (7, 4), (64, 16), (100, 32), (129, 64)])
def test_selective_matches_its_quadratic_field(rng, length, chunk_size):
  u, speed, damping, phase = random_problem(rng, B=2, L=length, H=3, K=4)
  delta = random_clock(rng, 2, length, 3)
  y, _ = selective_chunked(u, delta, speed, damping, phase, chunk_size)
  assert relative_error(y, selective_f64(u, delta, speed, damping, phase)) < 2e-5


def test_selective_at_unit_clock_is_the_wave(rng):
  u, speed, damping, phase = random_problem(rng, B=2, L=90, H=3, K=2)
  y, _ = selective_chunked(u, np.ones(u.shape[:3], np.float32), speed, damping, phase, 16)
  assert relative_error(y, conv_f64(u, speed, damping, phase)) < 2e-5


@pytest.mark.parametrize("chunk_size", [pytest.param(1, marks=pytest.mark.slow), 8, 50])
def test_selective_chunks_scan_and_state_agree(rng, chunk_size):
  u, speed, damping, phase = random_problem(rng, B=2, L=75, H=3, K=2)
  delta = random_clock(rng, 2, 75, 3)
  y, state = selective_chunked(u, delta, speed, damping, phase, chunk_size)
  want_y, want_state = selective_recurrence_f64(u, delta, speed, damping, phase)
  assert relative_error(y, want_y) < 2e-5
  assert relative_error(state, want_state) < 2e-5
  assert relative_error(jax.jit(physics.selective_scan)(u, delta, speed, damping, phase), want_y) < 2e-5
  # A prompt in two pieces, the second started from the first's state, gives the whole.
  first_y, first_state = selective_chunked(u[:, :31], delta[:, :31], speed, damping, phase, chunk_size)
  rest_y, rest_state = selective_chunked(
    u[:, 31:], delta[:, 31:], speed, damping, phase, chunk_size, initial_state=first_state
  )
  assert relative_error(np.concatenate([first_y, rest_y], 1), want_y) < 2e-5
  assert relative_error(rest_state, want_state) < 2e-5


def test_selective_long_lived_heads_over_thousands_of_chunks(rng):
  u, speed, damping, phase = random_problem(rng, B=1, L=16384, H=3, K=2)
  damping[:] = [1e-5, 1e-4, 3e-3]  # memory across the whole sequence
  delta = random_clock(rng, 1, 16384, 3)
  y, state = selective_chunked(u, delta, speed, damping, phase, 8)  # 2048 chunks
  want_y, want_state = selective_recurrence_f64(u, delta, speed, damping, phase)
  assert relative_error(y, want_y) < 2e-4
  assert relative_error(state, want_state) < 2e-4


@pytest.mark.parametrize("length, chunk_size", [(1, 64), (7, 4), (64, 16), (100, 32)])
def test_retention_matches_its_quadratic_sum(rng, length, chunk_size):
  q, k, v, speed, damping, phase = random_retention(rng, B=2, L=length, H=3, K=4, V=5)
  y, _ = retention_chunked(q, k, v, speed, damping, phase, chunk_size)
  assert relative_error(y, retention_f64(q, k, v, speed, damping, phase)) < 2e-5


@pytest.mark.parametrize("chunk_size", [pytest.param(1, marks=pytest.mark.slow), 8, 50])
def test_retention_chunks_steps_and_state_agree(rng, chunk_size):
  q, k, v, speed, damping, phase = random_retention(rng, B=2, L=75, H=3, K=4, V=3)
  y, state = retention_chunked(q, k, v, speed, damping, phase, chunk_size)
  want_y, want_state = retention_recurrence_f64(q, k, v, speed, damping, phase)
  assert relative_error(y, want_y) < 2e-5
  assert relative_error(state, want_state) < 2e-5
  step = jax.jit(physics.retention_step)
  running, steps = jnp.zeros(want_state.shape, jnp.complex64), []
  for t in range(75):
    y_t, running = step(running, q[:, t], k[:, t], v[:, t], speed, damping, phase)
    steps.append(y_t)
  assert relative_error(np.stack(steps, 1), want_y) < 2e-5
  first_y, first_state = retention_chunked(q[:, :31], k[:, :31], v[:, :31], speed, damping, phase, chunk_size)
  rest_y, _ = retention_chunked(
    q[:, 31:], k[:, 31:], v[:, 31:], speed, damping, phase, chunk_size, initial_state=first_state
  )
  assert relative_error(np.concatenate([first_y, rest_y], 1), want_y) < 2e-5


def test_retention_long_lived_heads_over_thousands_of_chunks(rng):
  q, k, v, speed, damping, phase = random_retention(rng, B=1, L=8192, H=2, K=2, V=2)
  damping[:] = [1e-5, 2e-3]
  y, state = retention_chunked(q, k, v, speed, damping, phase, 4)  # 2048 chunks
  want_y, want_state = retention_recurrence_f64(q, k, v, speed, damping, phase)
  assert relative_error(y, want_y) < 2e-4
  assert relative_error(state, want_state) < 2e-4


def test_selective_and_retention_never_depend_on_the_future(rng):
  _, speed, damping, phase = random_problem(rng, B=1, L=1, H=2, K=2)
  damping[:] = [1e-3, 0.05]
  x = rng.standard_normal((1, 24, 2, 4)).astype(np.float32)

  def selective(x):  # the clock and the source both come from x: neither may carry the future back
    delta = jax.nn.softplus(x[..., 0])
    return selective_chunked(x[..., 1:3], delta, speed, damping, phase, 5)[0]

  def retention(x):
    return retention_chunked(x[..., :2], x[..., 2:], x, speed, damping, phase, 5)[0]

  assert future_leak(selective, x) < 1e-6
  assert future_leak(retention, x) < 1e-6


@pytest.mark.slow
def test_selective_and_retention_gradients_to_second_order(rng):
  with jax.enable_x64(True):
    u, speed, damping, phase = (np.float64(a) for a in random_problem(rng, B=1, L=10, H=2, K=2))
    delta = np.float64(random_clock(rng, 1, 10, 2))
    q, k, v = (rng.standard_normal((1, 10, 2, 2)) for _ in range(3))

    @jax.jit
    def selective(delta, speed, log_damping, phase):
      return selective_chunked(u, delta, speed, jnp.exp(log_damping), phase, 6)[0]

    @jax.jit
    def retention(q, speed, log_damping, phase):
      return retention_chunked(q, k, v, speed, jnp.exp(log_damping), phase, 6)[0]

    # Forward mode to second order (the selective readout's own JVP rule, applied to itself) and reverse mode
    # to the first (that rule transposed): mixed second-order checks took a minute of compiles.
    for fn, args in (
      (selective, (delta, speed, np.log(damping), phase)),
      (retention, (q, speed, np.log(damping), phase)),
    ):
      check_grads(fn, args, order=2, modes=("fwd",), eps=1e-6)
      check_grads(fn, args, order=1, modes=("rev",), eps=1e-6)


def test_selective_and_retention_bfloat16_in_bfloat16_out(rng):
  u, speed, damping, phase = random_problem(rng, B=1, L=50, H=2, K=4)
  delta = random_clock(rng, 1, 50, 2)
  y, _ = selective_chunked(jnp.asarray(u, jnp.bfloat16), delta, speed, damping, phase, 16)
  assert y.dtype == jnp.bfloat16
  assert relative_error(np.float32(y), selective_f64(u, delta, speed, damping, phase)) < 2e-2
  q, k, v, *_ = random_retention(rng, B=1, L=50, H=2, K=4, V=4)
  y, _ = retention_chunked(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), speed, damping, phase, 16)
  assert y.dtype == jnp.bfloat16
  assert relative_error(np.float32(y), retention_f64(q, k, v, speed, damping, phase)) < 3e-2


def test_selective_and_retention_bad_input_names_the_argument(rng):
  u, speed, damping, phase = random_problem(rng, B=2, L=10, H=3, K=4)
  delta = random_clock(rng, 2, 10, 3)
  with pytest.raises(ValueError, match="delta must have shape"):
    physics.selective_conv_chunked(u, delta[:, :, :2], speed, damping, phase)
  backwards = delta.copy()
  backwards[1, 4, 2] = -1.0
  with pytest.raises(ValueError, match="delta must be finite and >= 0.*at \\[b, t, h\\] = \\(1, 4, 2\\)"):
    physics.selective_conv_chunked(u, backwards, speed, damping, phase)
  with pytest.raises(ValueError, match="damping must be finite and > 0"):
    physics.selective_step(jnp.zeros((2, 3, 4), jnp.complex64), u[:, 0], delta[:, 0], speed, -damping, phase)
  with pytest.raises(ValueError, match="q and k must have one shape"):
    physics.retention_chunked(u, u[..., :2], u, speed, damping, phase)
  with pytest.raises(ValueError, match="initial_state must have shape \\[B, H, K, M\\]"):
    physics.retention_chunked(u, u, u, speed, damping, phase, initial_state=jnp.zeros((2, 3, 4), jnp.complex64))
  with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
    physics.retention_chunked(u, u, u, speed, damping, phase, chunk_size=0)


def test_state_functions_check_their_inputs_by_name(rng):
  u, speed, damping, phase = random_problem(rng, B=2, L=6, H=4, K=3)
  state = jnp.zeros((2, 4, 3), jnp.complex64)
  with pytest.raises(ValueError, match=r"state must have shape \[B, H, K\] with H = 4 heads; got shape \(2, 3, 3\)"):
    wf.wave_step(state[:, :3], u[:, 0, :3], speed, damping, phase)
  with pytest.raises(ValueError, match="damping must be finite and > 0 for every head"):
    wf.wave_step(state, u[:, 0], speed, -damping, phase)
  with pytest.raises(ValueError, match=r"u_t must have the state's shape"):
    wf.wave_step(state, u[:1, 0], speed, damping, phase)
  with pytest.raises(ValueError, match="u has 3 heads on axis 2 but the constants have 4"):
    physics.wave_state(u[:, :, :3], speed, damping)
  with pytest.raises(ValueError, match="u must have shape"):
    physics.wave_state(u[:, 0], speed, damping)
  with pytest.raises(ValueError, match="length must be a positive integer"):
    physics.state_response(state, speed, damping, phase, 0)
  # Lists are arrays too, as wave_conv takes them.
  got, _ = wf.wave_step(state.tolist(), u[:, 0].tolist(), speed, damping, phase)
  want, new_state = wf.wave_step(state, u[:, 0], speed, damping, phase)
  assert want.dtype == jnp.float32 and new_state.dtype == jnp.complex64  # output first, then the state
  assert relative_error(got, want) < 1e-7


def test_traced_checks_name_bad_constants_under_jit(rng):
  from jax.experimental import checkify

  u = jnp.asarray(rng.standard_normal((1, 2000, 2, 3)), jnp.float32)
  speed, damping, phase = jnp.asarray([0.3, 1.2]), jnp.asarray([0.01, 0.2]), jnp.asarray([0.0, 0.5])
  conv = jax.jit(checkify.checkify(lambda s, d: wf.wave_conv(u, s, d, phase)))
  with physics.traced_checks():
    fine, y = conv(speed, damping)
    negative, _ = conv(speed, damping.at[1].set(-0.01))
    not_a_number, _ = conv(speed.at[0].set(jnp.nan), damping)
  assert fine.get() is None
  np.testing.assert_allclose(y, wf.wave_conv(u, speed, damping, phase), atol=1e-6)
  assert "damping must be finite and > 0 for every head; got -0.0099" in negative.get()
  assert "speed must be finite and > 0" in not_a_number.get()
  # Inside the context, concrete constants are still checked where they enter, with no checkify needed.
  with physics.traced_checks():
    np.testing.assert_allclose(wf.wave_conv(u, speed, damping, phase), y, atol=1e-6)
    with pytest.raises(ValueError, match="damping must be finite and > 0 for every head; got -0.0099"):
      wf.wave_conv(u, speed, damping.at[1].set(-0.01), phase)
  # Outside the context the same traced call is not checked (and costs nothing): the field grows as e^(0.01 t).
  assert np.abs(np.asarray(jax.jit(wf.wave_conv)(u, speed, damping.at[1].set(-0.01), phase))).max() > 1e6
