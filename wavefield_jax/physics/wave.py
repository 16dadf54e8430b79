"""The time-invariant wave: kernel, the O(L^2) field, the FFT and matmul convolutions, the chunked form that
carries the state, and the recurrence."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from wavefield_jax.physics._calls import (
  check_constants,
  check_length,
  check_segments,
  check_sources,
  check_state,
  one_program,
)
from wavefield_jax.physics._common import (
  carried_response,
  chunk_end_states,
  chunk_masks,
  document_starts,
  end_aligned,
  entering_states,
  from_chunks,
  norm,
  readout,
  rotation,
  rotation_angle,
  state_decay,
  to_chunks,
)


@one_program("length")
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
  length = check_length(length)
  t = jnp.arange(length, dtype=speed.dtype)
  angle = rotation_angle(speed, length) + phase[:, None]  # [H, L]
  return norm(damping)[:, None] * jnp.exp(-damping[:, None] * t[None, :]) * jnp.cos(angle)


@one_program("length")
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


@one_program("method", "chunk_size")
def wave_conv(
  u: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  *,
  method: str = "auto",
  chunk_size: int | None = None,
  segment_ids: jax.Array | None = None,
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
    segment_ids: optional [B, L] integers, one value per document of a packed row: nothing crosses a
      position whose id differs from the one before it. The FFT cannot skip a start, so "fft" then runs
      as "matmul" (its chunk size unless given).

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
  check_sources(u, speed.shape[0])
  length = u.shape[1]
  if segment_ids is not None and method == "fft":
    method = "matmul"
  method, chunk_size = check_method(method, chunk_size, length)
  if method == "matmul" or chunk_size < length:
    y, _ = wave_conv_chunked(u, speed, damping, phase, chunk_size, method=method, segment_ids=segment_ids)
    return y
  kernel = wave_kernel(speed, damping, phase, length)  # [H, L]
  y = _causal_fft_conv(_heads_last(u.astype(kernel.dtype)), kernel, fft_length(length))
  return _heads_back(y).astype(u.dtype)


@one_program()
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
  check_sources(u, speed.shape[0])
  return chunk_end_states(jnp.asarray(u).astype(speed.dtype)[:, None], speed, damping)[:, 0]  # all of u as one chunk


def _check_state_shape(state, num_heads: int, name: str = "state") -> jax.Array:
  """A [B, H, K] state with the constants' H heads, as an array."""
  state = jnp.asarray(state)  # lists are arrays too
  if state.ndim != 3 or state.shape[1] != num_heads:
    raise ValueError(f"{name} must have shape [B, H, K] with H = {num_heads} heads; got shape {state.shape}")
  return state


@one_program("length")
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
  length = check_length(length)
  return readout(carried_response(speed, damping, phase, length), state[:, None])[:, 0]


def _local_conv(
  x: jax.Array, speed, damping, phase, method: str, matmul_dtype: jnp.dtype, same: jax.Array | None
) -> jax.Array:
  """The convolution inside each chunk, from a zero state.

  Args:
    x: [B, C, T, H, K] chunks of sources, float32 (float64 under x64).
    method: "fft" or "matmul".
    matmul_dtype: the operand dtype of the matmul (bfloat16 feeds matrix units at full rate).
    same: optional [B, C, T, T] bool, t and s in one document (`ChunkMasks.same`); "matmul" only.

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
  if same is None:
    operands = field.astype(matmul_dtype), x.astype(matmul_dtype)
    return jnp.einsum("hts,bcshk->bcthk", *operands, precision=precision, preferred_element_type=x.dtype)
  field = jnp.where(same[:, :, None], field, 0).astype(matmul_dtype)  # [B, C, H, T, T]
  return jnp.einsum(
    "bchts,bcshk->bcthk", field, x.astype(matmul_dtype), precision=precision, preferred_element_type=x.dtype
  )


@one_program("chunk_size", "method")
def wave_conv_chunked(
  u: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  chunk_size: int | None = None,
  initial_state: jax.Array | None = None,
  *,
  method: str = "auto",
  segment_ids: jax.Array | None = None,
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
    segment_ids: optional [B, L] document ids (see `wave_conv`); "fft" then runs as "matmul". The
      initial state belongs to the document at position 0.

  Returns:
    y: [B, L, H, K] in the dtype of u, and the [B, H, K] complex64 state after the last position.
  """
  speed, damping, phase = check_constants(speed, damping, phase, u)
  check_sources(u, speed.shape[0])
  segment_ids = check_segments(segment_ids, u)
  batch, length, heads, channels = u.shape
  if segment_ids is not None and method == "fft":
    method, chunk_size = "matmul", None if chunk_size == length else chunk_size
  method, chunk_size = check_method(method, chunk_size, length)
  masks = None if segment_ids is None else chunk_masks(segment_ids, chunk_size)
  x = to_chunks(u.astype(speed.dtype), chunk_size)  # [B, C, T, H, K]
  num_chunks = x.shape[1]
  matmul_dtype = jnp.bfloat16 if u.dtype == jnp.bfloat16 else x.dtype
  same = None if masks is None else masks.same
  local = _local_conv(x, speed, damping, phase, method, matmul_dtype, same)  # [B, C, T, H, K]
  ending = x if masks is None else jnp.where(masks.to_end[..., None, None], x, 0)  # the last document's sources
  local_states = chunk_end_states(end_aligned(ending, length), speed, damping)  # [B, C, H, K]

  initial_state = check_state(initial_state, u, speed.dtype)
  carries = None if masks is None else masks.carries
  entering = entering_states(local_states, speed, damping, chunk_size, initial_state, carries)  # [B, C, H, K]
  incoming = readout(carried_response(speed, damping, phase, chunk_size), entering)  # [B, C, T, H, K]
  if masks is not None:
    incoming = jnp.where(masks.from_entry[..., None, None], incoming, 0)
  chex.assert_equal_shape([local, incoming, x])
  y = from_chunks(local + incoming, length)
  # The state after the last real position: the entering state carried over the tail, plus what the
  # tail's own sources leave (the last chunk's end state, its padding moved in front by `end_aligned`).
  tail = length - (num_chunks - 1) * chunk_size
  tail_hop = state_decay(speed, damping, tail)[None, :, None] * entering[:, -1]  # [B, H, K]: lambda**tail s
  if masks is not None:
    tail_hop = jnp.where(masks.carries[:, -1, None, None], tail_hop, 0)
  final_state = tail_hop + local_states[:, -1]
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
  y_t = norm(damping)[None, :, None] * jnp.real(rotation(phase)[None, :, None] * state)
  return y_t, state


@one_program()
def wave_scan(
  u: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  initial_state: jax.Array | None = None,
  segment_ids: jax.Array | None = None,
) -> jax.Array:
  """The same y as `wave_conv`, by running the recurrence one position at a time (lax.scan).

  Args:
    u: [B, L, H, K] sources.
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).
    phase: [H] phase, radians.
    initial_state: optional [B, H, K] complex state from before the first position.
    segment_ids: optional [B, L] document ids: the state is zeroed where a document starts.

  Returns:
    [B, L, H, K] in the dtype of u.
  """
  speed, damping, phase = check_constants(speed, damping, phase, u)
  check_sources(u, speed.shape[0])
  initial_state = check_state(initial_state, u, speed.dtype)
  segment_ids = check_segments(segment_ids, u)
  resets = jnp.zeros(u.shape[:2], bool) if segment_ids is None else document_starts(segment_ids)

  def step(state, inputs):
    u_t, reset_t = inputs
    y_t, state = wave_step(jnp.where(reset_t[:, None, None], 0, state), u_t, speed, damping, phase)
    return state, y_t

  inputs = (jnp.moveaxis(u.astype(speed.dtype), 1, 0), jnp.moveaxis(resets, 1, 0))
  _, y = jax.lax.scan(step, initial_state, inputs)  # y: [L, B, H, K]
  return jnp.moveaxis(y, 0, 1).astype(u.dtype)
