"""What the three mixers' physics share: the oscillator lambda = exp(-damping + i speed) and its powers, the
readout Re(response * state) with its matmul-shaped gradient, and the chunked form's pieces (sources cut into
chunks, the state each chunk leaves, the state entering each chunk)."""

from __future__ import annotations

import functools
import math
import operator
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero


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


def rotation_angle(speed: jax.Array, length: int, offset: int = 0) -> jax.Array:
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


def norm(damping: jax.Array) -> jax.Array:
  # 1 - exp(-gamma), without the cancellation that a plain subtraction suffers at small gamma.
  return -jnp.expm1(-damping)


def rotation(phase: jax.Array) -> jax.Array:
  """exp(i phase), [H] complex."""
  return jax.lax.complex(jnp.cos(phase), jnp.sin(phase))


def powers(speed: jax.Array, damping: jax.Array, length: int, offset: int = 0) -> jax.Array:
  """lambda**t = exp((-gamma + i c) t) for t = offset, ..., offset + length - 1, as [H, length] complex64."""
  t = jnp.arange(offset, offset + length, dtype=speed.dtype)
  angle = rotation_angle(speed, length, offset)  # [H, L]
  return jnp.exp(-damping[:, None] * t[None, :]) * jax.lax.complex(jnp.cos(angle), jnp.sin(angle))


def carried_response(speed: jax.Array, damping: jax.Array, phase: jax.Array, length: int) -> jax.Array:
  """norm * exp(i phase) * lambda**(tau + 1), tau = 0, ..., length - 1: [H, length] complex. The real part
  of its product with a state is what the state contributes tau positions later."""
  return norm(damping)[:, None] * powers(speed, damping, length, offset=1) * rotation(phase)[:, None]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _readout_parts(per_chunk: bool, response_re, response_im, state_re, state_im):
  """Re(response * state) = response_re * state_re - response_im * state_im, broadcast to [B, C, T, H, K]
  from state [B, C, H, K] and response [B, C, T, H] (`per_chunk`) or [H, T] (the same for every chunk);
  real and imaginary parts given apart."""

  def lift(response):  # -> [B or 1, C or 1, T, H, 1]
    return response[..., None] if per_chunk else response.T[None, None, :, :, None]

  return lift(response_re) * state_re[:, :, None] - lift(response_im) * state_im[:, :, None]


def _readout_parts_jvp(per_chunk, primals, tangents):
  # The primal is a broadcast product: one fused pass, cheaper than an einsum over the size-2 (re, im) axis.
  # The tangent is written as outer-product einsums so that its transpose, the gradient, is matmuls
  # rather than the broadcast-and-reduce autodiff would derive from the product. A JVP rule, not a VJP rule,
  # so that forward mode (jax.jvp, jacfwd, hessian through the constants) works too. Symbolic zeros: a
  # tangent that is zero (the constants' when only u is differentiated) costs no pass; JAX calls the rule
  # only when some tangent is not, so at least one term remains. Minus signs go on the response factors.
  response_re, response_im, state_re, state_im = primals
  d_response_re, d_response_im, d_state_re, d_state_im = tangents
  spec = "bcth,bchk->bcthk" if per_chunk else "ht,bchk->bcthk"
  terms = [
    jnp.einsum(spec, sign * response, state)
    for sign, response, state in (
      (1, d_response_re, state_re),
      (-1, d_response_im, state_im),
      (1, response_re, d_state_re),
      (-1, response_im, d_state_im),
    )
    if not (isinstance(response, SymbolicZero) or isinstance(state, SymbolicZero))
  ]
  return _readout_parts(per_chunk, *primals), functools.reduce(operator.add, terms)


_readout_parts.defjvp(_readout_parts_jvp, symbolic_zeros=True)


def readout(response: jax.Array, state: jax.Array) -> jax.Array:
  """Re(response * state[b, c, h, k]) -> [B, C, T, H, K] real, the state read at each position of its chunk.

  Args:
    response: complex, [H, T] (what a state gives t positions on, the same in every chunk) or [B, C, T, H]
      (its own in each chunk, as the selective clock makes it).
    state: [B, C, H, K] complex, the state entering each chunk.
  """
  parts = (jnp.real(response), jnp.imag(response), jnp.real(state), jnp.imag(state))
  return _readout_parts(response.ndim == 4, *parts)


def state_decay(speed: jax.Array, damping: jax.Array, steps: int) -> jax.Array:
  """lambda**steps = exp((-damping + i speed) * steps), [H] complex: what a state becomes after `steps`
  positions without new sources."""
  return powers(speed, damping, 1, offset=steps)[:, 0]


def chunk_end_states(x: jax.Array, speed: jax.Array, damping: jax.Array) -> jax.Array:
  """The state each chunk leaves from a zero start: [B, C, T, H, K] real -> [B, C, H, K] complex.

  A real matmul against the real and imaginary parts of lambda**(T-1-s): a complex einsum would first
  copy x to complex."""
  reversed_powers = powers(speed, damping, x.shape[2])[:, ::-1]  # [H, T]: lambda**(T-1-s)
  parts = jnp.stack([jnp.real(reversed_powers), jnp.imag(reversed_powers)], axis=-1)  # [H, T, 2]
  state = jnp.einsum("hsr,bcshk->bcrhk", parts, x, precision=jax.lax.Precision.HIGHEST)  # [B, C, 2, H, K]
  return jax.lax.complex(state[:, :, 0], state[:, :, 1])


def entering_states(
  chunk_states: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  chunk_size: int,
  initial_state: jax.Array,
  carries: jax.Array | None = None,
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
    carries: optional [B, C] bool, False where a document starts inside the chunk: the state entering it
      then reaches no further (`ChunkMasks.carries`).

  Returns:
    [B, C, H, K] complex: the state entering each chunk.
  """
  num_chunks = chunk_states.shape[1]
  group = max(1, math.isqrt(num_chunks))  # G
  # Zero states after the last chunk change nothing before them.
  z = to_chunks(chunk_states, group)  # [B, N, G, H, K]
  hops = powers(speed, damping, group * chunk_size + 1)[:, ::chunk_size]  # [H, G + 1]: lambda**(T n)
  # Within a group, from a zero start: row r (0..G) sums lambda**(T (r - 1 - q)) z_q over q < r.
  lag = np.arange(group + 1)[:, None] - 1 - np.arange(group)[None, :]  # [G + 1, G]
  within = jnp.where(lag >= 0, hops[:, np.clip(lag, 0, None)], 0)  # [H, G + 1, G]
  hop = hops[None, :, group, None]  # [1, H, 1]: lambda**(T G)
  if carries is None:
    partial = jnp.einsum("hrq,bnqhk->bnrhk", within, z, precision=jax.lax.Precision.HIGHEST)  # [B, N, G+1, H, K]
    through_group, from_group_start = jnp.ones(z.shape[:2], bool), None  # [B, N]
  else:
    # starts_before[r]: chunks holding a document start among the group's first r. z_q reaches row r only
    # when none lies strictly between them, the group's entering state only when none precedes row r.
    blocked = to_chunks(~carries, group).astype(jnp.int32)  # [B, N, G]
    starts_before = jnp.pad(jnp.cumsum(blocked, axis=-1), ((0, 0), (0, 0), (1, 0)))  # [B, N, G + 1]
    reaches = starts_before[:, :, :, None] == starts_before[:, :, None, 1:]  # [B, N, G + 1, G]
    within = jnp.where(reaches[:, :, None], within, 0)  # [B, N, H, G + 1, G]
    partial = jnp.einsum("bnhrq,bnqhk->bnrhk", within, z, precision=jax.lax.Precision.HIGHEST)
    through_group = starts_before[:, :, group] == 0
    from_group_start = starts_before[:, :, :group] == 0

  def carry(state, inputs):
    group_end, through = inputs
    return jnp.where(through[:, None, None], hop * state, 0) + group_end, state

  scanned = (jnp.moveaxis(partial[:, :, group], 1, 0), jnp.moveaxis(through_group, 1, 0))
  _, group_entering = jax.lax.scan(carry, initial_state, scanned)  # [N, B, H, K]
  group_entering = jnp.moveaxis(group_entering, 0, 1)[:, :, None]  # [B, N, 1, H, K]
  reached = hops.T[None, None, :group, :, None] * group_entering  # [B, N, G, H, K]
  if from_group_start is not None:
    reached = jnp.where(from_group_start[..., None, None], reached, 0)
  entering = reached + partial[:, :, :group]
  entering = from_chunks(entering, num_chunks)
  chex.assert_equal_shape([entering, chunk_states])  # checked when traced; free at run time
  return entering


def to_chunks(x: jax.Array, size: int, num_chunks: int | None = None) -> jax.Array:
  """[B, L, ...] -> [B, C, T, ...]: chunks of T = `size` positions, zeros after position L.

  C is ceil(L / T) unless `num_chunks` asks for more. Zeros after the end change nothing before them in
  any causal computation, so each caller cuts them off again with `from_chunks`."""
  batch, length = x.shape[:2]
  num_chunks = max(num_chunks or 0, -(-length // size))
  x = jnp.pad(x, ((0, 0), (0, num_chunks * size - length)) + ((0, 0),) * (x.ndim - 2))
  return x.reshape(batch, num_chunks, size, *x.shape[2:])


def end_aligned(x: jax.Array, length: int) -> jax.Array:
  """Chunks [B, C, T, ...] of `to_chunks` with the last chunk's padding moved before its positions, so that
  every chunk ends at its last real position and the state it leaves (`chunk_end_states`) is the state
  after that position. For end states only: the last chunk's positions no longer line up with the others'."""
  size = x.shape[2]
  pad = x.shape[1] * size - length
  if pad == 0:
    return x
  return jnp.concatenate([x[:, :-1], jnp.roll(x[:, -1:], pad, axis=2)], axis=1)


def from_chunks(x: jax.Array, length: int) -> jax.Array:
  """[B, C, T, ...] -> [B, L, ...], the inverse of `to_chunks` without its padding."""
  return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def document_starts(segment_ids: jax.Array) -> jax.Array:
  """[B, L] segment ids -> [B, L] bool, True where a document starts after position 0: where the id
  differs from the one before it (where a scan zeroes its state)."""
  return jnp.pad(segment_ids[:, 1:] != segment_ids[:, :-1], ((0, 0), (1, 0)))


def document_index(segment_ids: jax.Array) -> jax.Array:
  """[B, L] segment ids -> [B, L] int32 counting the document starts up to each position (0 for the first
  document of a row). A position starts a document where its id differs from the one before it, so ids
  need only change at the starts: [7, 7, 3, 3, 7] is three documents."""
  return jnp.cumsum(document_starts(segment_ids), axis=1, dtype=jnp.int32)


class ChunkMasks(NamedTuple):
  """Where a chunked form lets nothing cross a document start, for chunks of T positions.

  same: [B, C, T, T] bool, positions t and s in one document: the chunk's own field is masked by it.
  to_end: [B, C, T] bool, s in the document the chunk ends in: only those sources enter the state it leaves.
  from_entry: [B, C, T] bool, t still in the document open when the chunk began: only those positions read
    the state entering it.
  carries: [B, C] bool, no document starts inside the chunk: the entering state passes through it whole.
  """

  same: jax.Array
  to_end: jax.Array
  from_entry: jax.Array
  carries: jax.Array


def chunk_masks(segment_ids: jax.Array, chunk_size: int) -> ChunkMasks:
  """The masks of `ChunkMasks` for segment ids [B, L] and chunks of `chunk_size` positions.

  Positions after L (the chunks' padding) continue the last document: they start nothing. A state entering
  the first chunk (from a cache or another device) belongs to the document at position 0."""
  index = document_index(segment_ids)
  length = index.shape[1]
  num_chunks = -(-length // chunk_size)
  index = jnp.pad(index, ((0, 0), (0, num_chunks * chunk_size - length)), mode="edge")
  index = index.reshape(index.shape[0], num_chunks, chunk_size)  # [B, C, T]
  entry = jnp.concatenate([index[:, :1, 0], index[:, :-1, -1]], axis=1)  # [B, C]: the document open before
  return ChunkMasks(
    same=index[..., :, None] == index[..., None, :],
    to_end=index == index[..., -1:],
    from_entry=index == entry[..., None],
    carries=index[..., -1] == entry,
  )
