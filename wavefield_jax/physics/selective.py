"""The selective wave: each head's clock runs at a data-dependent rate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from wavefield_jax.physics._calls import (
  check_constants,
  check_segments,
  check_sources,
  check_state,
  check_values,
  one_program,
)
from wavefield_jax.physics._common import chunk_masks, document_starts, from_chunks, norm, readout, rotation, to_chunks
from wavefield_jax.physics.wave import check_method

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
  check_values({"delta": delta})


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
  check_sources(u, speed.shape[0])
  _check_clock(delta, u)
  return speed, damping, phase


@one_program("chunk_size")
def selective_conv_chunked(
  u: jax.Array,
  delta: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  chunk_size: int = SELECTIVE_CHUNK,
  initial_state: jax.Array | None = None,
  segment_ids: jax.Array | None = None,
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
    segment_ids: optional [B, L] document ids: nothing crosses a position whose id differs from the one
      before it (`physics.wave_conv`). The initial state belongs to the document at position 0.

  Returns:
    y: [B, L, H, K] in the dtype of u, and the [B, H, K] complex state after the last position.
  """
  speed, damping, phase = _check_selective(u, delta, speed, damping, phase)
  segment_ids = check_segments(segment_ids, u)
  chunk_size = check_method("matmul", chunk_size, u.shape[1])[1]
  masks = None if segment_ids is None else chunk_masks(segment_ids, chunk_size)
  batch, length, heads, channels = u.shape
  # A zero step with a zero source after the end leaves the state as it is: the padding changes nothing.
  clock = to_chunks(delta.astype(speed.dtype), chunk_size)  # [B, C, T, H]
  x = to_chunks(u.astype(speed.dtype), chunk_size)  # [B, C, T, H, K]
  g, c = damping[:, None, None], speed[:, None, None]  # [H, 1, 1]
  x = x * norm(damping * clock)[..., None]  # [B, C, T, H, K]: the source normalised by its own step

  elapsed = segment_sum(jnp.moveaxis(clock, 2, -1))  # [B, C, H, T, T]: clock time from s to t
  causal = np.tril(np.ones((chunk_size, chunk_size), bool))
  # The masked entries are zeroed after the exp, and their elapsed time is 0, so no inf reaches a gradient.
  if masks is not None:
    causal = causal & masks.same[:, :, None]  # [B, C, 1, T, T]
  field = jnp.where(causal, jnp.exp(-g * elapsed) * jnp.cos(c * elapsed + phase[:, None, None]), 0)
  local = jnp.einsum("bchts,bcshk->bcthk", field, x, precision=jax.lax.Precision.HIGHEST)  # [B, C, T, H, K]

  to_end = _clock_decay(c[..., 0], g[..., 0], elapsed[..., -1, :])  # [B, C, H, T]: from s to the chunk's end
  parts = jnp.stack([jnp.real(to_end), jnp.imag(to_end)], axis=-1)  # [B, C, H, T, 2]
  ending = x if masks is None else jnp.where(masks.to_end[..., None, None], x, 0)  # the last document's sources
  ends = jnp.einsum("bchsr,bcshk->bcrhk", parts, ending, precision=jax.lax.Precision.HIGHEST)  # [B, C, 2, H, K]
  chunk_states = jax.lax.complex(ends[:, :, 0], ends[:, :, 1])  # [B, C, H, K]: each chunk's from zero
  chunk_decay = _clock_decay(speed, damping, clock.sum(axis=2))[..., None]  # [B, C, H, 1]
  if masks is not None:
    chunk_decay = jnp.where(masks.carries[..., None, None], chunk_decay, 0)

  initial_state = check_state(initial_state, u, speed.dtype)
  chunk_states = chunk_states.at[:, 0].add(chunk_decay[:, 0] * initial_state)

  def compose(earlier, later):  # (decay, state) of two consecutive spans -> of both together
    return later[0] * earlier[0], later[0] * earlier[1] + later[1]

  _, after = jax.lax.associative_scan(compose, (chunk_decay, chunk_states), axis=1)  # [B, C, H, K]
  entering = jnp.concatenate([initial_state[:, None], after[:, :-1]], axis=1)  # [B, C, H, K]
  since_start = jnp.cumsum(clock, axis=2)  # [B, C, T, H]: short sums inside one chunk
  response = _clock_decay(speed, damping, since_start) * rotation(phase)  # [B, C, T, H]
  incoming = readout(response, entering)  # [B, C, T, H, K]
  if masks is not None:
    incoming = jnp.where(masks.from_entry[..., None, None], incoming, 0)
  y = from_chunks(local + incoming, length)
  return y.astype(u.dtype), after[:, -1]


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
  state = decay * state + norm(damping[:, None] * delta_t) * u_t.astype(speed.dtype)
  return jnp.real(rotation(phase)[None, :, None] * state), state


@one_program()
def selective_scan(
  u: jax.Array,
  delta: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  initial_state: jax.Array | None = None,
  segment_ids: jax.Array | None = None,
) -> jax.Array:
  """The same y as `selective_conv_chunked`, by the recurrence one position at a time (lax.scan).

  Args:
    u: [B, L, H, K].
    delta: [B, L, H]; speed, damping, phase: [H].
    segment_ids: optional [B, L] document ids: the state is zeroed where a document starts.

  Returns:
    [B, L, H, K] in the dtype of u.
  """
  speed, damping, phase = _check_selective(u, delta, speed, damping, phase)
  initial_state = check_state(initial_state, u, speed.dtype)
  segment_ids = check_segments(segment_ids, u)
  resets = jnp.zeros(u.shape[:2], bool) if segment_ids is None else document_starts(segment_ids)

  def step(state, inputs):
    u_t, delta_t, reset_t = inputs
    y_t, state = selective_step(jnp.where(reset_t[:, None, None], 0, state), u_t, delta_t, speed, damping, phase)
    return state, y_t

  inputs = tuple(jnp.moveaxis(a, 1, 0) for a in (u, delta, resets))
  _, y = jax.lax.scan(step, initial_state, inputs)  # [L, B, H, K]
  return jnp.moveaxis(y, 0, 1).astype(u.dtype)
