"""The damped wave field: kernels, the O(L^2) reference field and the fast causal paths.

Every head is one normal mode of the damped wave equation `u_tt + 2 gamma u_t = c^2 u_xx`: a damped
oscillator whose causal impulse response, sampled once per token, is

  k_h(t) = (1 - exp(-gamma_h)) * exp(-gamma_h t) * cos(c_h t + phi_h),  t = 0, 1, 2, ...

With `lambda_h = exp(-gamma_h + i c_h)` this is `k_h(t) = norm_h * Re(exp(i phi_h) lambda_h**t)`, so the
same mixing runs three ways that agree to float32 rounding:

- `wave_conv`: causal convolution by FFT, zero padded to at least 2L - 1 (training, prefill);
- `wave_scan`: the recurrence `s_t = lambda s_{t-1} + u_t` (decoding, one `wave_step` per token);
- `wave_conv(..., chunk_size=T)`: FFT inside chunks, the complex state carried across them (very
  long or sequence-sharded inputs).

Everything here is a pure function of arrays: jit-able and differentiable in every argument. Called
outside `jit`, each public function runs as one compiled program per shape, its constants checked first.
Shapes: B batch, L length, H heads, K channels per head, F frequency bins, C chunks, T chunk length.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
import operator

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.experimental import checkify


def _split_two_pi() -> tuple[float, float, float]:
  """2*pi as three float32 parts (Cody-Waite); the first two have 8 and 12 significant bits, so
  `n * part` is exact for the integers n met when reducing angles of a few thousand radians."""
  parts, rest = [], 2 * math.pi
  for bits in (8, 12):
    scale = 2.0 ** (bits - 1 - math.floor(math.log2(rest)))
    parts.append(round(rest * scale) / scale)
    rest -= parts[-1]
  return parts[0], parts[1], float(np.float32(rest))


_TWO_PI_PARTS = _split_two_pi()


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


_TRACED_CHECKS = contextvars.ContextVar("wavefield_traced_checks", default=False)


@contextlib.contextmanager
def traced_checks():
  """Checks the constants' values under `jit` as well, where they are traced and cannot be read.

  Inside this context, functions traced check speed and damping (finite and > 0) with
  `jax.experimental.checkify`; wrap what you jit in `checkify.checkify` to get the error back.
  Outside it (the default), traced constants go unchecked and cost nothing.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax.experimental import checkify
    >>> f = lambda d: wave_conv(jnp.ones((1, 8, 1, 1)), jnp.array([1.0]), d, jnp.array([0.0]))
    >>> with traced_checks():
    ...   error, _ = jax.jit(checkify.checkify(f))(jnp.array([-0.5]))
    >>> error.get()
    'damping must be finite and > 0 for every head; got -0.5 (`check` failed)'
  """
  token = _TRACED_CHECKS.set(True)
  try:
    yield
  finally:
    _TRACED_CHECKS.reset(token)


def _real_dtype(*arrays) -> jnp.dtype:
  """float64 where any input is float64 (with jax_enable_x64), else float32: the FFT's precision."""
  wide = jax.config.jax_enable_x64 and any(getattr(a, "dtype", None) == jnp.float64 for a in arrays)
  return jnp.dtype(jnp.float64 if wide else jnp.float32)


def _complex_dtype(real: jnp.dtype) -> jnp.dtype:
  return jnp.dtype(jnp.complex128 if real == jnp.float64 else jnp.complex64)


def check_constants(speed, damping, phase, *others) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Validates the three [H] constants where the user's values enter; returns them in the compute
  dtype (float32, or float64 when any argument, `others` included, is float64)."""
  arrays = {"speed": speed, "damping": damping, "phase": phase}
  for name, value in arrays.items():
    if jnp.ndim(value) != 1:
      raise ValueError(f"{name} must be a 1-D array of per-head values [H]; got shape {jnp.shape(value)}")
  sizes = {name: jnp.shape(value)[0] for name, value in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"speed, damping and phase must have the same number of heads; got {sizes}")
  if sizes["speed"] == 0:
    raise ValueError("speed, damping and phase must hold at least one head; got H=0")
  _check_values(arrays)
  dtype = _real_dtype(speed, damping, phase, *others)
  return tuple(jnp.asarray(a, dtype) for a in (speed, damping, phase))


def _check_values(arguments: dict) -> None:
  """The value checks of whichever of speed, damping, phase and delta `arguments` holds: those given
  concretely are read; traced ones are checked inside `traced_checks` only."""
  for name in ("speed", "damping"):
    value = arguments.get(name)
    if value is None:
      continue
    if _is_concrete(value):
      host = np.asarray(value, dtype=np.float64)
      bad = ~(host > 0) | ~np.isfinite(host)
      if bad.any():
        head = int(np.argmax(bad))
        raise ValueError(f"{name} must be finite and > 0 for every head; got {host.flat[head]} at head {head}")
    elif _TRACED_CHECKS.get():
      bad = ~(value > 0) | ~jnp.isfinite(value)
      checkify.check(~bad.any(), f"{name} must be finite and > 0 for every head; got {{}}", value[jnp.argmax(bad)])
  phase = arguments.get("phase")
  if phase is not None and _is_concrete(phase) and not np.isfinite(np.asarray(phase, dtype=np.float64)).all():
    raise ValueError("phase must be finite for every head")
  delta = arguments.get("delta")
  if delta is not None and _is_concrete(delta):
    host = np.asarray(delta, dtype=np.float64)
    bad = ~(host >= 0) | ~np.isfinite(host)
    if bad.any():
      index = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(f"delta must be finite and >= 0 everywhere; got {host[index]} at [b, t, h] = {index}")


def _is_static(value) -> bool:
  return value is None or isinstance(value, (str, int, np.integer))


def _is_array_like(value) -> bool:
  return isinstance(value, (jax.Array, np.ndarray, np.generic, int, float, complex))


def _one_program(*static_argnames: str):
  """Runs a public function as one compiled program per shape and static arguments.

  Called outside `jit` (as in a notebook), JAX would otherwise dispatch and compile every primitive of
  the chunked forms on its own: seconds per call at a new shape. The concrete values are checked
  first, as they cannot be read inside the program; the `traced_checks` setting is part of the key.
  """

  def decorate(fn):
    signature = inspect.signature(fn)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def compiled(static: tuple, checks: bool, dynamic: dict):
      token = _TRACED_CHECKS.set(checks)
      try:
        return fn(**dict(static), **dynamic)
      finally:
        _TRACED_CHECKS.reset(token)

    @functools.wraps(fn)
    def run(*args, **kwargs):
      arguments = signature.bind(*args, **kwargs).arguments
      static = tuple((name, arguments.pop(name)) for name in static_argnames if name in arguments)
      if not all(_is_static(value) for _, value in static) or not all(map(_is_array_like, jax.tree.leaves(arguments))):
        return fn(*args, **kwargs)  # not a program's input: the function's own checks name the problem
      concrete = {name: value for name, value in arguments.items() if _is_concrete(value)}
      _check_values(concrete)
      # Traced constants are checked inside the program, and only under `traced_checks`: checked here,
      # a concrete call in that context would stage a check that no `checkify` takes back.
      traced = any(not _is_concrete(arguments.get(name)) for name in ("speed", "damping"))
      return compiled(static, traced and _TRACED_CHECKS.get(), arguments)

    return run

  return decorate


def _check_length(length: int) -> int:
  if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length < 1:
    raise ValueError(f"length must be a positive integer; got {length!r}")
  return int(length)


def _check_sources(u, num_heads: int, name: str = "u") -> None:
  if jnp.ndim(u) != 4:
    raise ValueError(f"{name} must have shape [B, L, H, K]; got rank {jnp.ndim(u)} shape {jnp.shape(u)}")
  if jnp.shape(u)[2] != num_heads:
    raise ValueError(f"{name} has {jnp.shape(u)[2]} heads on axis 2 but the constants have {num_heads}")
  if jnp.shape(u)[1] == 0:
    raise ValueError(f"{name} must hold at least one position; got shape {jnp.shape(u)}")
  if not jnp.issubdtype(jnp.result_type(u), jnp.floating):
    raise TypeError(f"{name} must be a floating point array; got dtype {jnp.result_type(u)}")


def _check_state(state, u, real: jnp.dtype) -> jax.Array:
  """The [B, H, K] complex state carried into u [B, L, H, K] (zeros if None)."""
  batch, _, heads, channels = u.shape
  if state is None:
    return jnp.zeros((batch, heads, channels), _complex_dtype(real))
  if jnp.shape(state) != (batch, heads, channels):
    raise ValueError(f"initial_state must have shape [B, H, K] = {(batch, heads, channels)}; got {jnp.shape(state)}")
  return jnp.asarray(state).astype(_complex_dtype(real))


def _rotation_angle(speed: jax.Array, length: int, offset: int = 0) -> jax.Array:
  """`speed * t` for t = offset, ..., offset + length - 1, accurate to ~1e-4 rad in float32.

  The plain product loses the phase at large t (c*t ~ 2e5 at t = 64k has a float32 spacing of
  0.016 rad). Writing t = a*M + b with M ~ sqrt(t) and reducing c*M modulo 2*pi first keeps both
  products small. Its derivative with respect to `speed` is still exactly t.

  Args:
    speed: [H].
    length: a static integer.
    offset: a static integer.

  Returns:
    [H, length] angles (not reduced to [0, 2*pi)).
  """
  last = offset + length - 1
  block = 2 ** max(0, math.ceil(math.log2(math.sqrt(max(last, 1)))))
  t = np.arange(offset, offset + length)
  coarse = jnp.asarray(t // block, speed.dtype)  # [L]
  fine = jnp.asarray(t % block, speed.dtype)  # [L]
  turned = speed * block  # [H], exact: block is a power of two
  turns = jax.lax.stop_gradient(jnp.round(turned / _TWO_PI_PARTS[0]))
  for part in _TWO_PI_PARTS:
    turned = turned - turns * part
  return turned[:, None] * coarse[None, :] + speed[:, None] * fine[None, :]  # [H, L]


def _norm(damping: jax.Array) -> jax.Array:
  # 1 - exp(-gamma), without the cancellation that a plain subtraction suffers at small gamma.
  return -jnp.expm1(-damping)


def _rotation(phase: jax.Array) -> jax.Array:
  """exp(i phase), [H] complex."""
  return jax.lax.complex(jnp.cos(phase), jnp.sin(phase))


def _powers(speed: jax.Array, damping: jax.Array, length: int, offset: int = 0) -> jax.Array:
  """lambda**t = exp((-gamma + i c) t) for t = offset, ..., offset + length - 1, as [H, length] complex64."""
  t = jnp.arange(offset, offset + length, dtype=speed.dtype)
  angle = _rotation_angle(speed, length, offset)  # [H, L]
  return jnp.exp(-damping[:, None] * t[None, :]) * jax.lax.complex(jnp.cos(angle), jnp.sin(angle))


@_one_program("length")
def wave_kernel(speed: jax.Array, damping: jax.Array, phase: jax.Array, length: int) -> jax.Array:
  """The causal impulse response of each head.

  Args:
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).
    phase: [H] phase, radians.
    length: number of samples, t = 0, ..., length - 1.

  Returns:
    [H, length] float32: k[h, t] = (1 - exp(-damping)) exp(-damping t) cos(speed t + phase).

  Example:
    >>> import jax.numpy as jnp
    >>> k = wave_kernel(jnp.array([jnp.pi / 2]), jnp.array([0.5]), jnp.array([0.0]), 3)
    >>> [round(float(v), 4) + 0.0 for v in k[0]]  # (1 - e^-0.5) e^(-0.5 t) cos(pi t / 2); + 0.0: no -0.0
    [0.3935, 0.0, -0.1447]
  """
  speed, damping, phase = check_constants(speed, damping, phase)
  length = _check_length(length)
  t = jnp.arange(length, dtype=speed.dtype)
  angle = _rotation_angle(speed, length) + phase[:, None]  # [H, L]
  return _norm(damping)[:, None] * jnp.exp(-damping[:, None] * t[None, :]) * jnp.cos(angle)


@_one_program("length")
def wave_field(speed: jax.Array, damping: jax.Array, phase: jax.Array, length: int) -> jax.Array:
  """The O(L^2) Toeplitz field W[h, t, s] = k[h, t - s] for s <= t, else 0. For reference and pictures.

  Returns:
    [H, length, length] float32.
  """
  kernel = wave_kernel(speed, damping, phase, length)  # [H, L]
  lag = np.arange(length)[:, None] - np.arange(length)[None, :]  # [L, L]
  return jnp.where(lag >= 0, kernel[:, np.clip(lag, 0, None)], 0.0)  # [H, L, L]


def fft_length(length: int) -> int:
  """The smallest 5-smooth size >= 2 * length - 1: a linear (not circular) convolution of `length` samples."""
  need = max(1, 2 * length - 1)
  best = 2 ** math.ceil(math.log2(need))
  power3 = 1
  while power3 < best:
    power5 = power3
    while power5 < best:
      size = power5 * 2 ** max(0, math.ceil(math.log2(need / power5)))
      best = min(best, size)
      power5 *= 5
    power3 *= 3
  return best


def _causal_fft_conv(u: jax.Array, kernel: jax.Array, n: int) -> jax.Array:
  """y[..., t] = sum_{s <= t} kernel[h, t - s] u[..., s] along the last axis, by FFT of size n.

  Args:
    u: [B, H, K, L] float32.
    kernel: [H, L] float32.
    n: FFT size; n >= 2L - 1 keeps it causal.

  Returns:
    [B, H, K, L] float32.
  """
  length = u.shape[-1]
  u_hat = jnp.fft.rfft(u, n=n, axis=-1)  # [B, H, K, F]
  k_hat = jnp.fft.rfft(kernel, n=n, axis=-1)  # [H, F]
  return jnp.fft.irfft(u_hat * k_hat[None, :, None, :], n=n, axis=-1)[..., :length]  # [B, H, K, L]


def _heads_last(u: jax.Array) -> jax.Array:
  return jnp.moveaxis(u, -3, -1)  # [..., L, H, K] -> [..., H, K, L]: the FFT wants L last


def _heads_back(y: jax.Array) -> jax.Array:
  return jnp.moveaxis(y, -1, -3)  # [..., H, K, L] -> [..., L, H, K]


METHODS = ("auto", "fft", "matmul")
# T of the matmul form: small enough that the T x T Toeplitz work stays below the state's, large enough that
# the scan over chunks is short (the chunk-size sweep in docs/results/scaling.md).
MATMUL_CHUNK = 32


def check_method(method: str, chunk_size: int | None, length: int) -> tuple[str, int]:
  """The concrete method and chunk length T (1 <= T <= L) for a call; names the bad argument."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}; got {method!r}")
  if chunk_size is not None and (
    not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1
  ):
    raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
  if method == "auto":
    # The matmul form at every length and on every backend: it puts the work on matrix units, which run
    # matmuls far faster than FFTs (the measured ratios are in docs/results/scaling.md).
    method = "matmul"
  if chunk_size is None:
    chunk_size = MATMUL_CHUNK if method == "matmul" else length
  return method, min(int(chunk_size), length)


@_one_program("method", "chunk_size")
def wave_conv(
  u: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  *,
  method: str = "auto",
  chunk_size: int | None = None,
) -> jax.Array:
  """Causal wave-field convolution along the sequence.

  Three exact ways to compute it (docs/design.md, section 1):
    "fft": zero-padded FFT of size >= 2L - 1 over the whole sequence; with `chunk_size`, FFTs inside
      chunks of that many positions and the recurrent state carried across them.
    "matmul": inside chunks of T = `chunk_size` (default 32) positions, one T x T lower-triangular Toeplitz
      matrix per head applied by a batched matmul; across chunks the complex state, carried by a short
      scan over L / T chunks (Mamba-2's SSD structure). No FFT and no transpose of u in the program.
    "auto": "matmul", at every length and on every backend (`check_method` says why).

  Args:
    u: [B, L, H, K] sources (float32 or bfloat16; the arithmetic runs in float32, float64 under x64).
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).
    phase: [H] phase, radians.
    method: "auto", "fft" or "matmul".
    chunk_size: positions per chunk (see `method`).

  Returns:
    [B, L, H, K] in the dtype of u: y[b, t, h] = sum_{s <= t} k_h(t - s) u[b, s, h].

  Example:
    >>> import jax.numpy as jnp
    >>> u = jnp.zeros((1, 5, 1, 1)).at[0, 0].set(1.0)  # an impulse at t = 0
    >>> speed, damping, phase = jnp.array([1.0]), jnp.array([0.2]), jnp.array([0.3])
    >>> y = wave_conv(u, speed, damping, phase)  # the matmul form
    >>> bool(jnp.allclose(y[0, :, 0, 0], wave_kernel(speed, damping, phase, 5)[0], atol=1e-6))
    True
    >>> bool(jnp.allclose(y, wave_conv(u, speed, damping, phase, method="fft"), atol=1e-6))
    True
  """
  speed, damping, phase = check_constants(speed, damping, phase, u)
  _check_sources(u, speed.shape[0])
  length = u.shape[1]
  method, chunk_size = check_method(method, chunk_size, length)
  if method == "matmul" or chunk_size < length:
    y, _ = wave_conv_chunked(u, speed, damping, phase, chunk_size, method=method)
    return y
  kernel = wave_kernel(speed, damping, phase, length)  # [H, L]
  y = _causal_fft_conv(_heads_last(u.astype(kernel.dtype)), kernel, fft_length(length))
  return _heads_back(y).astype(u.dtype)


@_one_program()
def wave_state(u: jax.Array, speed: jax.Array, damping: jax.Array) -> jax.Array:
  """The recurrent state after the last position of u, started from zero.

  Args:
    u: [B, L, H, K] sources.
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).

  Returns:
    [B, H, K] complex64: s = sum_s lambda**(L - 1 - s) u[:, s].
  """
  speed, damping, _ = check_constants(speed, damping, jnp.zeros(jnp.shape(speed)), u)
  _check_sources(u, speed.shape[0])
  return _chunk_states(jnp.asarray(u).astype(speed.dtype)[:, None], speed, damping)[:, 0]  # all of u as one chunk


def _check_state_shape(state, num_heads: int, name: str = "state") -> jax.Array:
  """A [B, H, K] state with the constants' H heads, as an array."""
  state = jnp.asarray(state)  # lists are arrays too
  if state.ndim != 3 or state.shape[1] != num_heads:
    raise ValueError(f"{name} must have shape [B, H, K] with H = {num_heads} heads; got shape {state.shape}")
  return state


def _response(speed: jax.Array, damping: jax.Array, phase: jax.Array, length: int) -> jax.Array:
  """norm * exp(i phase) * lambda**(tau + 1), tau = 0, ..., length - 1: [H, length] complex. The real part
  of its product with a state is what the state contributes tau positions later."""
  return _norm(damping)[:, None] * _powers(speed, damping, length, offset=1) * _rotation(phase)[:, None]


@_one_program("length")
def state_response(state: jax.Array, speed: jax.Array, damping: jax.Array, phase: jax.Array, length: int) -> jax.Array:
  """What the next `length` positions receive from a state carried in from before them.

  Args:
    state: [B, H, K] complex state after the previous position.
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).
    phase: [H] phase, radians.

  Returns:
    [B, length, H, K] float32: norm * Re(exp(i phase) lambda**(tau + 1) state), tau = 0, ..., length - 1.
  """
  speed, damping, phase = check_constants(speed, damping, phase)
  state = _check_state_shape(state, speed.shape[0])
  length = _check_length(length)
  return _state_readout(_response(speed, damping, phase, length), state[:, None])[:, 0]


@jax.custom_jvp
def _readout_parts(response_re, response_im, state_re, state_im):
  """Re(response * state) = response_re * state_re - response_im * state_im, broadcast to [B, C, T, H, K]
  from response [H, T] and state [B, C, H, K] (real and imaginary parts given apart)."""
  return (
    response_re.T[None, None, :, :, None] * state_re[:, :, None]
    - response_im.T[None, None, :, :, None] * state_im[:, :, None]
  )  # [B, C, T, H, K]


def _readout_parts_jvp(primals, tangents):
  # The primal is a broadcast product: one fused pass, cheaper than an einsum over the size-2 (re, im) axis.
  # The tangent is written as outer-product einsums so that its transpose, the gradient, is matmuls
  # rather than the broadcast-and-reduce autodiff would derive from the product. A JVP rule, not a VJP rule,
  # so that forward mode (jax.jvp, jacfwd, hessian through the constants) works too. Symbolic zeros: a
  # tangent that is zero (the constants' when only u is differentiated) costs no pass; JAX calls the rule
  # only when some tangent is not, so at least one term remains. Minus signs go on the [H, T] factors.
  response_re, response_im, state_re, state_im = primals
  d_response_re, d_response_im, d_state_re, d_state_im = tangents
  terms = [
    jnp.einsum("ht,bchk->bcthk", sign * response, state)
    for sign, response, state in (
      (1, d_response_re, state_re),
      (-1, d_response_im, state_im),
      (1, response_re, d_state_re),
      (-1, response_im, d_state_im),
    )
    if not (isinstance(response, SymbolicZero) or isinstance(state, SymbolicZero))
  ]
  return _readout_parts(*primals), functools.reduce(operator.add, terms)


_readout_parts.defjvp(_readout_parts_jvp, symbolic_zeros=True)


def _state_readout(response: jax.Array, state: jax.Array) -> jax.Array:
  """Re(response[h, t] * state[b, c, h, k]): [H, T] complex and [B, C, H, K] complex -> [B, C, T, H, K] real."""
  return _readout_parts(jnp.real(response), jnp.imag(response), jnp.real(state), jnp.imag(state))


def state_decay(speed: jax.Array, damping: jax.Array, steps: int) -> jax.Array:
  """lambda**steps = exp((-damping + i speed) * steps), [H] complex: what a state becomes after `steps`
  positions without new sources."""
  return _powers(speed, damping, 1, offset=steps)[:, 0]


def _local_conv(x: jax.Array, speed, damping, phase, method: str, matmul_dtype: jnp.dtype) -> jax.Array:
  """The convolution inside each chunk, from a zero state.

  Args:
    x: [B, C, T, H, K] chunks of sources, float32 (float64 under x64).
    method: "fft" or "matmul".
    matmul_dtype: the operand dtype of the matmul (bfloat16 feeds matrix units at full rate).

  Returns:
    [B, C, T, H, K] in the dtype of x.
  """
  chunk_size = x.shape[2]
  if method == "fft":
    kernel = wave_kernel(speed, damping, phase, chunk_size)  # [H, T]
    return _heads_back(_causal_fft_conv(_heads_last(x), kernel, fft_length(chunk_size)))
  field = wave_field(speed, damping, phase, chunk_size)  # [H, T, T]: field[h, t, s] = k_h(t - s)
  # float32 operands at full float32 precision: TPUs and GPUs otherwise round them to bf16 / tf32.
  precision = jax.lax.Precision.DEFAULT if matmul_dtype == jnp.bfloat16 else jax.lax.Precision.HIGHEST
  operands = field.astype(matmul_dtype), x.astype(matmul_dtype)
  return jnp.einsum("hts,bcshk->bcthk", *operands, precision=precision, preferred_element_type=x.dtype)


def _chunk_states(x: jax.Array, speed: jax.Array, damping: jax.Array) -> jax.Array:
  """The state each chunk leaves from a zero start: [B, C, T, H, K] real -> [B, C, H, K] complex.

  A real matmul against the real and imaginary parts of lambda**(T-1-s): a complex einsum would first
  copy x to complex."""
  reversed_powers = _powers(speed, damping, x.shape[2])[:, ::-1]  # [H, T]: lambda**(T-1-s)
  parts = jnp.stack([jnp.real(reversed_powers), jnp.imag(reversed_powers)], axis=-1)  # [H, T, 2]
  state = jnp.einsum("hsr,bcshk->bcrhk", parts, x, precision=jax.lax.Precision.HIGHEST)  # [B, C, 2, H, K]
  return jax.lax.complex(state[:, :, 0], state[:, :, 1])


def _entering_states(
  chunk_states: jax.Array, speed: jax.Array, damping: jax.Array, chunk_size: int, initial_state: jax.Array
) -> jax.Array:
  """The state entering each chunk: s_j = lambda**T s_{j-1} + z_{j-1}, s_0 = initial_state.

  Multiplying by lambda**T once per chunk would compound its float32 rounding: a head with damping 1e-6
  lost 1e-4 of relative accuracy over 4096 chunks that way. Instead the chunks are grouped by G ~ sqrt(C):
  inside a group every power lambda**(T n) comes straight from its reduced angle and is applied by a
  small matmul, and only the G-fold hop between groups is carried by a scan, over C / G steps.

  Args:
    chunk_states: [B, C, H, K] complex, z_j: the state chunk j leaves from a zero start.
    chunk_size: T.
    initial_state: [B, H, K] complex, the state before the first chunk.

  Returns:
    [B, C, H, K] complex: the state entering each chunk.
  """
  batch, num_chunks, heads, channels = chunk_states.shape
  group = max(1, math.isqrt(num_chunks))  # G
  num_groups = -(-num_chunks // group)
  # Zero states after the last chunk change nothing before them.
  z = jnp.pad(chunk_states, ((0, 0), (0, num_groups * group - num_chunks), (0, 0), (0, 0)))
  z = z.reshape(batch, num_groups, group, heads, channels)  # [B, N, G, H, K]
  hops = _powers(speed, damping, group * chunk_size + 1)[:, ::chunk_size]  # [H, G + 1]: lambda**(T n)
  # Within a group, from a zero start: row r (0..G) sums lambda**(T (r - 1 - q)) z_q over q < r.
  lag = np.arange(group + 1)[:, None] - 1 - np.arange(group)[None, :]  # [G + 1, G]
  within = jnp.where(lag >= 0, hops[:, np.clip(lag, 0, None)], 0)  # [H, G + 1, G]
  partial = jnp.einsum("hrq,bnqhk->bnrhk", within, z, precision=jax.lax.Precision.HIGHEST)  # [B, N, G+1, H, K]
  hop = hops[None, :, group, None]  # [1, H, 1]: lambda**(T G)

  def carry(state, group_end):
    return hop * state + group_end, state

  _, group_entering = jax.lax.scan(carry, initial_state, jnp.moveaxis(partial[:, :, group], 1, 0))  # [N, B, H, K]
  group_entering = jnp.moveaxis(group_entering, 0, 1)  # [B, N, H, K]
  entering = hops.T[None, None, :group, :, None] * group_entering[:, :, None] + partial[:, :, :group]
  entering = entering.reshape(batch, num_groups * group, heads, channels)[:, :num_chunks]
  chex.assert_equal_shape([entering, chunk_states])  # checked when traced; free at run time
  return entering


@_one_program("chunk_size", "method")
def wave_conv_chunked(
  u: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  chunk_size: int | None = None,
  initial_state: jax.Array | None = None,
  *,
  method: str = "auto",
) -> tuple[jax.Array, jax.Array]:
  """The state-carrying form: each chunk convolved on its own, the complex state carried across chunks.

  Prefill (a prompt after a cache) and the sequence-parallel path (a shard after the devices before it)
  use it; `wave_conv` is it with a zero initial state.

  Args:
    u: [B, L, H, K]; L need not be a multiple of chunk_size.
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).
    phase: [H] phase, radians.
    chunk_size: T, positions per chunk; None for the method's default (all of L for "fft", 32 for "matmul").
    initial_state: optional [B, H, K] complex state from positions before u (e.g. another device).
    method: "auto", "fft" or "matmul": how each chunk is convolved (see `wave_conv`).

  Returns:
    y: [B, L, H, K] in the dtype of u, and the [B, H, K] complex64 state after the last position.
  """
  speed, damping, phase = check_constants(speed, damping, phase, u)
  _check_sources(u, speed.shape[0])
  batch, length, heads, channels = u.shape
  method, chunk_size = check_method(method, chunk_size, length)
  num_chunks = -(-length // chunk_size)
  padded = num_chunks * chunk_size
  # Zeros appended after the end change nothing before them: the convolution is causal.
  x = jnp.pad(u.astype(speed.dtype), ((0, 0), (0, padded - length), (0, 0), (0, 0)))
  x = x.reshape(batch, num_chunks, chunk_size, heads, channels)  # [B, C, T, H, K]
  matmul_dtype = jnp.bfloat16 if u.dtype == jnp.bfloat16 else x.dtype
  local = _local_conv(x, speed, damping, phase, method, matmul_dtype)  # [B, C, T, H, K]
  local_states = _chunk_states(x, speed, damping)  # [B, C, H, K]

  initial_state = _check_state(initial_state, u, speed.dtype)
  entering = _entering_states(local_states, speed, damping, chunk_size, initial_state)  # [B, C, H, K]
  incoming = _state_readout(_response(speed, damping, phase, chunk_size), entering)  # [B, C, T, H, K]
  chex.assert_equal_shape([local, incoming, x])
  y = (local + incoming).reshape(batch, padded, heads, channels)[:, :length]
  # The state after the real last position, not after the zero padding that follows it.
  tail = length - (num_chunks - 1) * chunk_size
  tail_hop = state_decay(speed, damping, tail)  # [H]: lambda**tail
  tail_sources = u[:, (num_chunks - 1) * chunk_size :]  # [B, tail, H, K]
  final_state = tail_hop[None, :, None] * entering[:, -1] + wave_state(tail_sources, speed, damping)
  return y.astype(u.dtype), final_state


def wave_step(
  state: jax.Array, u_t: jax.Array, speed: jax.Array, damping: jax.Array, phase: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Advances the field by one token: O(1) time and memory whatever came before.

  Args:
    state: [B, H, K] complex state after the previous token (zeros before the first).
    u_t: [B, H, K] source of the new token.
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).
    phase: [H] phase, radians.

  Returns:
    y_t [B, H, K] float32 = norm * Re(exp(i phase) state), then the new [B, H, K] complex64 state (output
    first, as every step and chunked function returns).
  """
  speed, damping, phase = check_constants(speed, damping, phase, u_t)
  state = _check_state_shape(state, speed.shape[0])
  u_t = _check_state_shape(u_t, speed.shape[0], "u_t")
  if jnp.shape(u_t) != jnp.shape(state):
    raise ValueError(f"u_t must have the state's shape [B, H, K] = {jnp.shape(state)}; got {jnp.shape(u_t)}")
  decay = state_decay(speed, damping, 1)  # [H]: lambda
  state = decay[None, :, None] * state + u_t.astype(decay.dtype)
  y_t = _norm(damping)[None, :, None] * jnp.real(_rotation(phase)[None, :, None] * state)
  return y_t, state


@_one_program()
def wave_scan(
  u: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  initial_state: jax.Array | None = None,
) -> jax.Array:
  """The same y as `wave_conv`, by running the recurrence one position at a time (lax.scan).

  Args:
    u: [B, L, H, K] sources.
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).
    phase: [H] phase, radians.
    initial_state: optional [B, H, K] complex state from before the first position.

  Returns:
    [B, L, H, K] in the dtype of u.
  """
  speed, damping, phase = check_constants(speed, damping, phase, u)
  _check_sources(u, speed.shape[0])
  initial_state = _check_state(initial_state, u, speed.dtype)

  def step(state, u_t):
    y_t, state = wave_step(state, u_t, speed, damping, phase)
    return state, y_t

  _, y = jax.lax.scan(step, initial_state, jnp.moveaxis(u.astype(speed.dtype), 1, 0))  # y: [L, B, H, K]
  return jnp.moveaxis(y, 0, 1).astype(u.dtype)


# The selective wave (docs/design.md, section 7): each head's clock runs at a data-dependent rate
# delta[b, t, h] > 0, so position t sees the source at s <= t through
#   (1 - exp(-gamma delta_s)) exp(-gamma (T_t - T_s)) cos(c (T_t - T_s) + phi),   T_t = sum_{r <= t} delta_r.
# With delta = 1 everywhere it is the wave above. Not a convolution: inside chunks the decay matrix comes
# from segment sums of the clock, across chunks the [B, H, K] complex state is carried (Mamba-2's SSD form).

SELECTIVE_CHUNK = 32


def _check_clock(delta, u) -> None:
  if jnp.ndim(delta) != 3 or jnp.shape(delta) != jnp.shape(u)[:3]:
    raise ValueError(
      f"delta must have shape [B, L, H] = {jnp.shape(u)[:3]} (that of u without K); got {jnp.shape(delta)}"
    )
  _check_values({"delta": delta})


def segment_sum(x: jax.Array) -> jax.Array:
  """Sums of x over the segments between each pair of positions, without differences of a cumulative sum.

  Args:
    x: [..., T].

  Returns:
    [..., T, T]: out[..., t, s] = sum_{s < r <= t} x[..., r] for s <= t, and 0 for s > t. A difference of
    cumulative sums would lose the short segments' digits to the long prefix before them.
  """
  length = x.shape[-1]
  below = np.tril(np.ones((length, length), bool), k=-1)  # [T, T]: r > s
  spread = jnp.where(below, x[..., :, None], 0)  # [..., T(r), T(s)]
  return jnp.cumsum(spread, axis=-2)  # [..., T(t), T(s)]


def _clock_decay(speed: jax.Array, damping: jax.Array, elapsed: jax.Array) -> jax.Array:
  """exp((-gamma + i c) elapsed) for elapsed [..., H, ...] with the head on axis -1 of speed's broadcast."""
  return jnp.exp(-damping * elapsed) * jax.lax.complex(jnp.cos(speed * elapsed), jnp.sin(speed * elapsed))


def _check_selective(u, delta, speed, damping, phase):
  speed, damping, phase = check_constants(speed, damping, phase, u, delta)
  _check_sources(u, speed.shape[0])
  _check_clock(delta, u)
  return speed, damping, phase


@_one_program("chunk_size")
def selective_conv_chunked(
  u: jax.Array,
  delta: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  chunk_size: int = SELECTIVE_CHUNK,
  initial_state: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The selective wave field by chunks: exact, O(L T) time, the complex state carried across chunks.

  s_t = exp((-gamma + i c) delta_t) s_{t-1} + (1 - exp(-gamma delta_t)) u_t,  y_t = Re(exp(i phi) s_t).

  Args:
    u: [B, L, H, K] sources (float32 or bfloat16; the arithmetic runs in float32, float64 under x64).
    delta: [B, L, H] the clock's step at each position (>= 0; 1 everywhere gives `wave_conv`).
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).
    phase: [H] phase, radians.
    chunk_size: T, positions per chunk; L need not be a multiple of it.
    initial_state: optional [B, H, K] complex state from positions before u.

  Returns:
    y: [B, L, H, K] in the dtype of u, and the [B, H, K] complex state after the last position.
  """
  speed, damping, phase = _check_selective(u, delta, speed, damping, phase)
  chunk_size = check_method("matmul", chunk_size, u.shape[1])[1]
  batch, length, heads, channels = u.shape
  num_chunks = -(-length // chunk_size)
  padded = num_chunks * chunk_size
  # A zero step with a zero source after the end leaves the state as it is: the padding changes nothing.
  pad = ((0, 0), (0, padded - length), (0, 0))
  clock = jnp.pad(delta.astype(speed.dtype), pad).reshape(batch, num_chunks, chunk_size, heads)  # [B, C, T, H]
  x = jnp.pad(u.astype(speed.dtype), (*pad, (0, 0))).reshape(batch, num_chunks, chunk_size, heads, channels)
  g, c = damping[:, None, None], speed[:, None, None]  # [H, 1, 1]
  x = x * _norm(damping * clock)[..., None]  # [B, C, T, H, K]: the source normalised by its own step

  elapsed = segment_sum(jnp.moveaxis(clock, 2, -1))  # [B, C, H, T, T]: clock time from s to t
  causal = np.tril(np.ones((chunk_size, chunk_size), bool))
  # The masked entries are zeroed after the exp, and their elapsed time is 0, so no inf reaches a gradient.
  field = jnp.where(causal, jnp.exp(-g * elapsed) * jnp.cos(c * elapsed + phase[:, None, None]), 0)
  local = jnp.einsum("bchts,bcshk->bcthk", field, x, precision=jax.lax.Precision.HIGHEST)  # [B, C, T, H, K]

  to_end = _clock_decay(c[..., 0], g[..., 0], elapsed[..., -1, :])  # [B, C, H, T]: from s to the chunk's end
  parts = jnp.stack([jnp.real(to_end), jnp.imag(to_end)], axis=-1)  # [B, C, H, T, 2]
  ends = jnp.einsum("bchsr,bcshk->bcrhk", parts, x, precision=jax.lax.Precision.HIGHEST)  # [B, C, 2, H, K]
  chunk_states = jax.lax.complex(ends[:, :, 0], ends[:, :, 1])  # [B, C, H, K]: each chunk's from zero
  chunk_decay = _clock_decay(speed, damping, clock.sum(axis=2))[..., None]  # [B, C, H, 1]

  initial_state = _check_state(initial_state, u, speed.dtype)
  chunk_states = chunk_states.at[:, 0].add(chunk_decay[:, 0] * initial_state)

  def compose(earlier, later):  # (decay, state) of two consecutive spans -> of both together
    return later[0] * earlier[0], later[0] * earlier[1] + later[1]

  _, after = jax.lax.associative_scan(compose, (chunk_decay, chunk_states), axis=1)  # [B, C, H, K]
  entering = jnp.concatenate([initial_state[:, None], after[:, :-1]], axis=1)  # [B, C, H, K]
  since_start = jnp.cumsum(clock, axis=2)  # [B, C, T, H]: short sums inside one chunk
  response = _clock_decay(speed, damping, since_start) * _rotation(phase)  # [B, C, T, H]
  incoming = _readout_parts_complex(response, entering)  # [B, C, T, H, K]
  y = (local + incoming).reshape(batch, padded, heads, channels)[:, :length]
  return y.astype(u.dtype), after[:, -1]


def _readout_parts_complex(response: jax.Array, state: jax.Array) -> jax.Array:
  """Re(response[b, c, t, h] * state[b, c, h, k]) -> [B, C, T, H, K] real."""
  return (
    jnp.real(response)[..., None] * jnp.real(state)[:, :, None]
    - jnp.imag(response)[..., None] * jnp.imag(state)[:, :, None]
  )


def selective_decay(delta: jax.Array, speed: jax.Array, damping: jax.Array) -> jax.Array:
  """What a selective state becomes across the positions of delta [B, L, H] without new sources: [B, H]
  complex exp((-gamma + i c) sum_t delta_t)."""
  return _clock_decay(speed, damping, jnp.sum(delta.astype(speed.dtype), axis=1))


def selective_step(
  state: jax.Array,
  u_t: jax.Array,
  delta_t: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """One token of the selective wave: O(1) whatever came before.

  Args:
    state: [B, H, K] complex state after the previous token.
    u_t: [B, H, K] source.
    delta_t: [B, H] the clock's step.
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).
    phase: [H] phase, radians.

  Returns:
    y_t [B, H, K] float32 = Re(exp(i phi) state'), and the new [B, H, K] complex state'.
  """
  speed, damping, phase = _check_selective(u_t[:, None], delta_t[:, None], speed, damping, phase)
  delta_t = delta_t.astype(speed.dtype)[..., None]  # [B, H, 1]
  decay = _clock_decay(speed[:, None], damping[:, None], delta_t)  # [B, H, 1]
  state = decay * state + _norm(damping[:, None] * delta_t) * u_t.astype(speed.dtype)
  return jnp.real(_rotation(phase)[None, :, None] * state), state


@_one_program()
def selective_scan(
  u: jax.Array,
  delta: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  initial_state: jax.Array | None = None,
) -> jax.Array:
  """The same y as `selective_conv_chunked`, by the recurrence one position at a time (lax.scan).

  Args:
    u: [B, L, H, K].
    delta: [B, L, H]; speed, damping, phase: [H].

  Returns:
    [B, L, H, K] in the dtype of u.
  """
  speed, damping, phase = _check_selective(u, delta, speed, damping, phase)
  initial_state = _check_state(initial_state, u, speed.dtype)

  def step(state, inputs):
    y_t, state = selective_step(state, *inputs, speed, damping, phase)
    return state, y_t

  _, y = jax.lax.scan(step, initial_state, (jnp.moveaxis(u, 1, 0), jnp.moveaxis(delta, 1, 0)))  # [L, B, H, K]
  return jnp.moveaxis(y, 0, 1).astype(u.dtype)


# The content-addressed wave (docs/design.md, section 7): the field reads the sources that match,
#   y_t = sum_{s <= t} k_h(t - s) (q_t . k_s) v_s,
# with k_h the kernel of the three constants. Since k_h(t - s) = norm Re(exp(i phi) lambda**(t - s)), the
# sources before a chunk fold into one [K, K] complex state per head: RetNet's chunkwise form on the wave.

RETENTION_CHUNK = 64


def _check_retention(q, k, v, speed, damping, phase):
  speed, damping, phase = check_constants(speed, damping, phase, q, k, v)
  for name, a in (("q", q), ("k", k), ("v", v)):
    _check_sources(a, speed.shape[0], name)
  if jnp.shape(k) != jnp.shape(q) or jnp.shape(v)[:3] != jnp.shape(q)[:3]:
    raise ValueError(
      f"q and k must have one shape and v the same [B, L, H]; got q {jnp.shape(q)}, k {jnp.shape(k)}, v {jnp.shape(v)}"
    )
  return speed, damping, phase


def _check_matrix_state(state, q, v, real: jnp.dtype) -> jax.Array:
  """The [B, H, K, V] complex state carried into a retention call (zeros if None)."""
  shape = (*q.shape[:1], q.shape[2], q.shape[3], v.shape[3])
  if state is None:
    return jnp.zeros(shape, _complex_dtype(real))
  if jnp.shape(state) != shape:
    raise ValueError(f"initial_state must have shape [B, H, K, V] = {shape}; got {jnp.shape(state)}")
  return jnp.asarray(state).astype(_complex_dtype(real))


def _matrix_states(k: jax.Array, v: jax.Array, speed: jax.Array, damping: jax.Array) -> jax.Array:
  """The state each chunk leaves from zero: sum_s lambda**(T-1-s) k_s v_s^T.

  Args:
    k: [B, C, T, H, K].
    v: [B, C, T, H, V].

  Returns:
    [B, C, H, K, V] complex.
  """
  reversed_powers = _powers(speed, damping, k.shape[2])[:, ::-1]  # [H, T]: lambda**(T-1-s)
  parts = jnp.stack([jnp.real(reversed_powers), jnp.imag(reversed_powers)])  # [2, H, T]
  state = jnp.einsum("rhs,bcshk,bcshv->bcrhkv", parts, k, v, precision=jax.lax.Precision.HIGHEST)
  return jax.lax.complex(state[:, :, 0], state[:, :, 1])


@_one_program("chunk_size")
def retention_chunked(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  chunk_size: int = RETENTION_CHUNK,
  initial_state: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The content-addressed wave field by chunks: exact, O(L (T + K) K) time, a [K, V] state per head.

  Args:
    q: [B, L, H, K] queries and keys.
    k: [B, L, H, K] queries and keys.
    v: [B, L, H, V] values (float32 or bfloat16).
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).
    phase: [H] phase, radians.
    chunk_size: T, positions per chunk; L need not be a multiple of it.
    initial_state: optional [B, H, K, V] complex state from positions before q.

  Returns:
    y: [B, L, H, V] in the dtype of v, y[b, t, h] = sum_{s <= t} k_h(t - s) (q_t . k_s) v_s, and the
    [B, H, K, V] complex state after the last position: sum_s lambda**(L - 1 - s) k_s v_s^T.
  """
  speed, damping, phase = _check_retention(q, k, v, speed, damping, phase)
  chunk_size = check_method("matmul", chunk_size, q.shape[1])[1]
  batch, length, heads, channels = q.shape
  num_chunks = -(-length // chunk_size)
  padded = num_chunks * chunk_size

  def chunks(a):  # [B, L, H, .] -> [B, C, T, H, .], zeros after the end
    a = jnp.pad(a.astype(speed.dtype), ((0, 0), (0, padded - length), (0, 0), (0, 0)))
    return a.reshape(batch, num_chunks, chunk_size, heads, a.shape[-1])

  qc, kc, vc = chunks(q), chunks(k), chunks(v)
  precision = jax.lax.Precision.HIGHEST
  field = wave_field(speed, damping, phase, chunk_size)  # [H, T, T]
  scores = jnp.einsum("bcthk,bcshk->bchts", qc, kc, precision=precision) * field  # [B, C, H, T, T]
  local = jnp.einsum("bchts,bcshv->bcthv", scores, vc, precision=precision)  # [B, C, T, H, V]

  chunk_states = _matrix_states(kc, vc, speed, damping)  # [B, C, H, K, V]
  initial_state = _check_matrix_state(initial_state, q, v, speed.dtype)
  flat = chunk_states.reshape(batch, num_chunks, heads, -1)  # [B, C, H, K*V]: one state per (k, v) pair
  entering = _entering_states(flat, speed, damping, chunk_size, initial_state.reshape(batch, heads, -1))
  entering = entering.reshape(chunk_states.shape)  # [B, C, H, K, V]
  read = [jnp.einsum("bcthk,bchkv->bcthv", qc, part(entering), precision=precision) for part in (jnp.real, jnp.imag)]
  response = _response(speed, damping, phase, chunk_size).T[:, :, None]  # [T, H, 1]
  incoming = jnp.real(response) * read[0] - jnp.imag(response) * read[1]  # [B, C, T, H, V]
  y = (local + incoming).reshape(batch, padded, heads, -1)[:, :length]

  # The state after the real last position, not after the zero padding that follows it.
  tail = length - (num_chunks - 1) * chunk_size
  tail_states = _matrix_states(kc[:, -1:, :tail], vc[:, -1:, :tail], speed, damping)[:, 0]  # [B, H, K, V]
  final_state = state_decay(speed, damping, tail)[None, :, None, None] * entering[:, -1] + tail_states
  return y.astype(v.dtype), final_state


def retention_step(
  state: jax.Array,
  q_t: jax.Array,
  k_t: jax.Array,
  v_t: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """One token of the content-addressed wave: O(K V) per head whatever came before.

  Args:
    state: [B, H, K, V] complex, sum over earlier s of lambda**(t - 1 - s) k_s v_s^T.
    q_t: [B, H, K].
    k_t: [B, H, K].
    v_t: [B, H, V].
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).
    phase: [H] phase, radians.

  Returns:
    y_t [B, H, V] float32 = norm Re(exp(i phi) q_t^T state'), and the new [B, H, K, V] complex state'.
  """
  speed, damping, phase = _check_retention(q_t[:, None], k_t[:, None], v_t[:, None], speed, damping, phase)
  decay = state_decay(speed, damping, 1)[None, :, None, None]  # [1, H, 1, 1]
  outer = k_t.astype(speed.dtype)[..., :, None] * v_t.astype(speed.dtype)[..., None, :]  # [B, H, K, V]
  state = decay * state + outer
  read = jnp.einsum("bhk,bhkv->bhv", q_t.astype(state.dtype), state)  # [B, H, V] complex
  y_t = _norm(damping)[None, :, None] * jnp.real(_rotation(phase)[None, :, None] * read)
  return y_t, state
