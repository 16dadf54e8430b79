"""The content-addressed wave: the field reads the sources whose keys match the query."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wavefield_jax.physics._calls import check_constants, check_segments, check_sources, complex_dtype, one_program
from wavefield_jax.physics._common import (
  carried_response,
  chunk_masks,
  end_aligned,
  entering_states,
  from_chunks,
  norm,
  powers,
  rotation,
  state_decay,
  to_chunks,
)
from wavefield_jax.physics.wave import check_method, wave_field

# The content-addressed wave (docs/design.md, section 7): the field reads the sources that match,
#   y_t = sum_{s <= t} k_h(t - s) (q_t . k_s) v_s,
# with k_h the kernel of the three constants. Since k_h(t - s) = norm Re(exp(i phi) lambda**(t - s)), the
# sources before a chunk fold into one [K, K] complex state per head: RetNet's chunkwise form on the wave.

RETENTION_CHUNK = 64


def _check_retention(q, k, v, speed, damping, phase):
  speed, damping, phase = check_constants(speed, damping, phase, q, k, v)
  for name, a in (("q", q), ("k", k), ("v", v)):
    check_sources(a, speed.shape[0], name)
  if jnp.shape(k) != jnp.shape(q) or jnp.shape(v)[:3] != jnp.shape(q)[:3]:
    raise ValueError(
      f"q and k must have one shape and v the same [B, L, H]; got q {jnp.shape(q)}, k {jnp.shape(k)}, v {jnp.shape(v)}"
    )
  return speed, damping, phase


def _check_matrix_state(state, q, v, real: jnp.dtype) -> jax.Array:
  """The [B, H, K, M] complex state carried into a retention call (zeros if None)."""
  shape = (*q.shape[:1], q.shape[2], q.shape[3], v.shape[3])
  if state is None:
    return jnp.zeros(shape, complex_dtype(real))
  if jnp.shape(state) != shape:
    raise ValueError(f"initial_state must have shape [B, H, K, M] = {shape}; got {jnp.shape(state)}")
  return jnp.asarray(state).astype(complex_dtype(real))


def _matrix_states(k: jax.Array, v: jax.Array, speed: jax.Array, damping: jax.Array) -> jax.Array:
  """The state each chunk leaves from zero: sum_s lambda**(T-1-s) k_s v_s^T.

  Args:
    k: [B, C, T, H, K].
    v: [B, C, T, H, M].

  Returns:
    [B, C, H, K, M] complex.
  """
  reversed_powers = powers(speed, damping, k.shape[2])[:, ::-1]  # [H, T]: lambda**(T-1-s)
  parts = jnp.stack([jnp.real(reversed_powers), jnp.imag(reversed_powers)])  # [2, H, T]
  state = jnp.einsum("rhs,bcshk,bcshv->bcrhkv", parts, k, v, precision=jax.lax.Precision.HIGHEST)
  return jax.lax.complex(state[:, :, 0], state[:, :, 1])


@one_program("chunk_size")
def retention_chunked(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  chunk_size: int = RETENTION_CHUNK,
  initial_state: jax.Array | None = None,
  segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The content-addressed wave field by chunks: exact, O(L (T + K) K) time, a [K, M] state per head.

  Args:
    q: [B, L, H, K] queries and keys.
    k: [B, L, H, K] queries and keys.
    v: [B, L, H, M] values (float32 or bfloat16).
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).
    phase: [H] phase, radians.
    chunk_size: T, positions per chunk; L need not be a multiple of it.
    initial_state: optional [B, H, K, M] complex state from positions before q.
    segment_ids: optional [B, L] document ids: nothing crosses a position whose id differs from the one
      before it (`physics.wave_conv`). The initial state belongs to the document at position 0.

  Returns:
    y: [B, L, H, M] in the dtype of v, y[b, t, h] = sum_{s <= t} k_h(t - s) (q_t . k_s) v_s, and the
    [B, H, K, M] complex state after the last position: sum_s lambda**(L - 1 - s) k_s v_s^T.
  """
  speed, damping, phase = _check_retention(q, k, v, speed, damping, phase)
  segment_ids = check_segments(segment_ids, q)
  chunk_size = check_method("matmul", chunk_size, q.shape[1])[1]
  masks = None if segment_ids is None else chunk_masks(segment_ids, chunk_size)
  batch, length, heads, channels = q.shape
  qc, kc, vc = (to_chunks(a.astype(speed.dtype), chunk_size) for a in (q, k, v))  # [B, C, T, H, .]
  num_chunks = qc.shape[1]
  precision = jax.lax.Precision.HIGHEST
  field = wave_field(speed, damping, phase, chunk_size)  # [H, T, T]
  if masks is not None:
    field = jnp.where(masks.same[:, :, None], field, 0)  # [B, C, H, T, T]
  scores = jnp.einsum("bcthk,bcshk->bchts", qc, kc, precision=precision) * field  # [B, C, H, T, T]
  local = jnp.einsum("bchts,bcshv->bcthv", scores, vc, precision=precision)  # [B, C, T, H, M]

  ending = kc if masks is None else jnp.where(masks.to_end[..., None, None], kc, 0)  # the last document's keys
  chunk_states = _matrix_states(end_aligned(ending, length), end_aligned(vc, length), speed, damping)  # [B, C, H, K, M]
  initial_state = _check_matrix_state(initial_state, q, v, speed.dtype)
  flat = chunk_states.reshape(batch, num_chunks, heads, -1)  # [B, C, H, K*M]: one state per (k, v) pair
  carries = None if masks is None else masks.carries
  entering = entering_states(flat, speed, damping, chunk_size, initial_state.reshape(batch, heads, -1), carries)
  entering = entering.reshape(chunk_states.shape)  # [B, C, H, K, M]
  # Re(response_t * (q_t . s)): each position reads the state through its own query, so these are matmuls
  # already (their gradients too); `readout`, which broadcasts one state over the chunk, has nothing to add.
  read = [jnp.einsum("bcthk,bchkv->bcthv", qc, part(entering), precision=precision) for part in (jnp.real, jnp.imag)]
  response = carried_response(speed, damping, phase, chunk_size).T[:, :, None]  # [T, H, 1]
  incoming = jnp.real(response) * read[0] - jnp.imag(response) * read[1]  # [B, C, T, H, M]
  if masks is not None:
    incoming = jnp.where(masks.from_entry[..., None, None], incoming, 0)
  y = from_chunks(local + incoming, length)

  # The state after the last real position, as `wave_conv_chunked` finds it.
  tail = length - (num_chunks - 1) * chunk_size
  tail_hop = state_decay(speed, damping, tail)[None, :, None, None] * entering[:, -1]
  if masks is not None:
    tail_hop = jnp.where(masks.carries[:, -1, None, None, None], tail_hop, 0)
  final_state = tail_hop + chunk_states[:, -1]
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
  """One token of the content-addressed wave: O(K M) per head whatever came before.

  Args:
    state: [B, H, K, M] complex, sum over earlier s of lambda**(t - 1 - s) k_s v_s^T.
    q_t: [B, H, K].
    k_t: [B, H, K].
    v_t: [B, H, M].
    speed: [H] wave speed, radians per token (> 0).
    damping: [H] damping, the inverse decay length (> 0).
    phase: [H] phase, radians.

  Returns:
    y_t [B, H, M] float32 = norm Re(exp(i phi) q_t^T state'), and the new [B, H, K, M] complex state'.
  """
  speed, damping, phase = _check_retention(q_t[:, None], k_t[:, None], v_t[:, None], speed, damping, phase)
  decay = state_decay(speed, damping, 1)[None, :, None, None]  # [1, H, 1, 1]
  outer = k_t.astype(speed.dtype)[..., :, None] * v_t.astype(speed.dtype)[..., None, :]  # [B, H, K, M]
  state = decay * state + outer
  read = jnp.einsum("bhk,bhkv->bhv", q_t.astype(state.dtype), state)  # [B, H, M] complex
  y_t = norm(damping)[None, :, None] * jnp.real(rotation(phase)[None, :, None] * read)
  return y_t, state
