"""Softmax attention mixers with rotary positions and the layers' gated output: global causal attention with
a KV cache, and sliding-window attention whose cache holds only the window."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from wavefield_jax import physics
from wavefield_jax.layers import PROJECTION, Cache, GatedOutput


def rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding (rotate-half form).

  Args:
    x: [B, L, H, K] queries or keys, K even.
    positions: [L] integer positions.

  Returns:
    [B, L, H, K], pairs (x_i, x_{i+K/2}) rotated by positions * base**(-2i/K).
  """
  half = x.shape[-1] // 2
  frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [K/2]
  angle = positions.astype(jnp.float32)[:, None] * frequencies[None, :]  # [L, K/2]
  cos, sin = jnp.cos(angle)[None, :, None, :], jnp.sin(angle)[None, :, None, :]
  first, second = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
  """Causal softmax attention with rotary positions and the same gated output as the wave mixer.

  Its decode cache is a preallocated KV cache of `max_len` positions and the index of the next one.
  `implementation` is passed to `jax.nn.dot_product_attention`: None lets JAX choose, 'xla' runs
  everywhere, 'cudnn' is the fused kernel on NVIDIA GPUs.
  """

  def __init__(
    self,
    dim: int,
    num_heads: int,
    *,
    implementation: str | None = None,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    if dim % num_heads or (dim // num_heads) % 2:
      raise ValueError(f"dim={dim} must split into num_heads={num_heads} heads of even size")
    self.dim, self.num_heads, self.implementation, self.dtype = dim, num_heads, implementation, dtype
    self.in_proj = nnx.Linear(dim, 4 * dim, use_bias=False, dtype=dtype, rngs=rngs)  # q, k, v, gate
    self.output = GatedOutput(dim, dtype=dtype, rngs=rngs)

  def init_cache(self, batch_size: int, max_len: int) -> Cache:
    shape = (batch_size, max_len, self.num_heads, self.dim // self.num_heads)
    return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype), "index": jnp.zeros((), jnp.int32)}

  def _project(self, x: jax.Array, start: jax.Array | int) -> tuple[jax.Array, ...]:
    batch, length, _ = x.shape
    q, k, v, gate = jnp.split(checkpoint_name(self.in_proj(x), PROJECTION), 4, axis=-1)
    q, k, v = (a.reshape(batch, length, self.num_heads, -1) for a in (q, k, v))  # [B, L, H, K]
    positions = start + jnp.arange(length)
    return rotary(q, positions), rotary(k, positions), v, gate

  def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """[B, L, D] -> [B, L, D], causal over x alone; with segment ids [B, L], within each document only."""
    q, k, v, gate = self._project(x, 0)
    if segment_ids is None:
      z = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=self.implementation)
    else:
      index = physics.document_index(segment_ids)  # [B, L]
      same = index[:, None, :, None] == index[:, None, None, :]  # [B, 1, L, L]: block-diagonal
      z = jax.nn.dot_product_attention(q, k, v, mask=same, is_causal=True, implementation=self.implementation)
    return self.output(z.reshape(gate.shape), gate)

  def prefill(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    """x [B, L, D] at positions index, ..., index + L - 1, attending to the cache and to itself."""
    index = cache["index"]
    q, k, v, gate = self._project(x, index)
    keys = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), index, axis=1)  # [B, S, H, K]
    values = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), index, axis=1)
    query_position = index + jnp.arange(x.shape[1])  # [L]
    visible = jnp.arange(keys.shape[1])[None, :] <= query_position[:, None]  # [L, S]
    # The masked form has no cuDNN kernel for arbitrary masks: let JAX pick.
    z = jax.nn.dot_product_attention(q, keys, values, mask=visible[None, None])
    new_cache = {"k": keys, "v": values, "index": index + x.shape[1]}
    return self.output(z.reshape(gate.shape), gate), new_cache

  def step(self, x_t: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    y, cache = self.prefill(x_t[:, None], cache)
    return y[:, 0], cache


def local_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  window: int,
  first_position: jax.Array | int = 0,
  segment_ids: jax.Array | None = None,
):
  """Causal softmax attention over the last `window` positions, in blocks: O(S * window), not O(S^2).

  Each block of `window` queries attends to the keys of its own block and of the block before it, masked
  to the positions t - window < s <= t; keys at negative positions (an unfilled cache) are masked too.

  Args:
    q: [B, S, H, K] at the consecutive positions first_position, ..., first_position + S - 1.
    k: [B, S, H, K] at the consecutive positions first_position, ..., first_position + S - 1.
    v: [B, S, H, K] at the consecutive positions first_position, ..., first_position + S - 1.
    window: W, how many positions each query sees, itself included.
    first_position: the position of the first row (a traced integer in prefill).
    segment_ids: optional [B, S] document ids: a query sees only the keys of its own document.

  Returns:
    [B, S, H, K] in the dtype of v.
  """
  batch, length, heads, channels = q.shape
  # Keys after the last query are never seen.
  q, k, v = (physics.to_chunks(a, window) for a in (q, k, v))  # [B, N, W, H, K]
  blocks = q.shape[1]  # N

  def with_previous(a):  # [B, N, 2W, ...]: block n - 1, then block n
    return jnp.concatenate([jnp.pad(a, ((0, 0), (1, 0)) + ((0, 0),) * (a.ndim - 2))[:, :-1], a], axis=2)

  keys, values = with_previous(k), with_previous(v)
  scores = jnp.einsum("bnqhk,bnshk->bnhqs", q, keys, preferred_element_type=jnp.float32) / math.sqrt(channels)
  block_start = first_position + window * jnp.arange(blocks)  # [N]
  query_position = block_start[:, None] + jnp.arange(window)[None, :]  # [N, W]
  key_position = block_start[:, None] - window + jnp.arange(2 * window)[None, :]  # [N, 2W]
  lag = query_position[:, :, None] - key_position[:, None, :]  # [N, W, 2W]
  visible = ((lag >= 0) & (lag < window) & (key_position[:, None, :] >= 0))[None]  # [1, N, W, 2W]
  if segment_ids is not None:
    index = physics.to_chunks(physics.document_index(segment_ids), window)  # [B, N, W]
    visible = visible & (index[:, :, :, None] == with_previous(index)[:, :, None, :])  # [B, N, W, 2W]
  # A finite fill keeps rows with no visible key (queries of an unfilled cache, discarded) free of NaNs.
  weights = jax.nn.softmax(jnp.where(visible[:, :, None], scores, -1e30), axis=-1)  # [B, N, H, W, 2W]
  out = jnp.einsum("bnhqs,bnshk->bnqhk", weights.astype(values.dtype), values)  # [B, N, W, H, K]
  return physics.from_chunks(out, length)


class LocalAttention(Attention):
  """Causal softmax attention limited to the last `window` positions (sliding window), with the rotary
  positions and gated output of `Attention`.

  Training and prefill run `local_attention` in blocks, O(L * window) time and memory at any length. The
  decode cache holds the last `window` keys and values (the newest last) and the next position: its size
  does not depend on the context, so decoding runs in constant memory like the wave layers.
  """

  def __init__(self, dim: int, num_heads: int, *, window: int, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if window < 1:
      raise ValueError(f"window must be >= 1; got {window}")
    super().__init__(dim, num_heads, dtype=dtype, rngs=rngs)
    self.window = window

  def init_cache(self, batch_size: int, max_len: int | None = None) -> Cache:
    """The last `window` keys and values; `max_len` does not change its size."""
    del max_len
    shape = (batch_size, self.window, self.num_heads, self.dim // self.num_heads)
    return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype), "index": jnp.zeros((), jnp.int32)}

  def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """[B, L, D] -> [B, L, D], causal over x alone; with segment ids [B, L], within each document only."""
    q, k, v, gate = self._project(x, 0)
    z = local_attention(q, k, v, self.window, segment_ids=segment_ids)
    return self.output(z.reshape(gate.shape), gate)

  def prefill(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    """x [B, L, D] at positions index, ..., index + L - 1, after the `window` cached positions before it."""
    index = cache["index"]
    q, k, v, gate = self._project(x, index)
    keys = jnp.concatenate([cache["k"], k.astype(cache["k"].dtype)], axis=1)  # [B, W + L, H, K]
    values = jnp.concatenate([cache["v"], v.astype(cache["v"].dtype)], axis=1)
    queries = jnp.concatenate([jnp.zeros_like(cache["k"]), q.astype(cache["k"].dtype)], axis=1)  # cache rows unused
    z = local_attention(queries, keys, values, self.window, index - self.window)[:, self.window :]
    new_cache = {"k": keys[:, -self.window :], "v": values[:, -self.window :], "index": index + x.shape[1]}
    return self.output(z.reshape(gate.shape).astype(gate.dtype), gate), new_cache

  def step(self, x_t: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    """One token [B, D]: one query against the last `window` positions, O(window) whatever the context."""
    index = cache["index"]
    q, k, v, gate = self._project(x_t[:, None], index)  # [B, 1, H, K]
    keys = jnp.concatenate([cache["k"][:, 1:], k.astype(cache["k"].dtype)], axis=1)  # [B, W, H, K]: index-W+1..index
    values = jnp.concatenate([cache["v"][:, 1:], v.astype(cache["v"].dtype)], axis=1)
    visible = index - self.window + 1 + jnp.arange(self.window) >= 0  # [W]: positions before 0 are empty
    z = jax.nn.dot_product_attention(q, keys, values, mask=visible[None, None, None, :])  # [B, 1, H, K]
    y = self.output(z.reshape(gate.shape).astype(gate.dtype), gate)[:, 0]
    return y, {"k": keys, "v": values, "index": index + 1}
