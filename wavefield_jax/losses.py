"""Next-token cross entropy through the tied head, dense or over tiles of positions.

With a large vocabulary the logits dominate a long sequence's memory: 64k positions x 50,304 tokens in
float32 is 13 GB per copy, and autodiff keeps the logits and their softmax for the backward pass. The tiled
form computes the head and the loss a tile of positions at a time (a scan) and recomputes each tile's
logits in the backward pass (a custom VJP), so no [B, L, V] array exists in the compiled step: what it
keeps between the passes is one float32 log-normaliser per position.

Tiles are strided, not contiguous: tile j holds the positions j, j + N, j + 2N, ... (N tiles). Positions
split over devices in contiguous blocks then split every tile the same way, so the scan runs on each
device's own positions with no gather.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from wavefield_jax import physics


def dense_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross entropy in nats [B, L] from logits [B, L, V] and integer targets [B, L]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def _tiles(x: jax.Array, tile: int) -> jax.Array:
  """[B, L, ...] -> [N, B, T, ...], tile j holding positions j, j + N, ...; zeros pad L up to N * T."""
  num_tiles = -(-x.shape[1] // tile)  # N
  # Chunks of N positions, T of them: position t * N + j at [:, t, j].
  return jnp.moveaxis(physics.to_chunks(x, num_tiles, num_chunks=tile), 2, 0)


def _untile(x: jax.Array, length: int) -> jax.Array:
  """[N, B, T] -> [B, L], the inverse of `_tiles` without its padding."""
  return physics.from_chunks(jnp.moveaxis(x, 0, 2), length)


def _tile_logits(hidden: jax.Array, embedding: jax.Array) -> jax.Array:
  """[B, T, D] x [V, D] -> [B, T, V] float32 (the head in the compute dtype, accumulated in float32)."""
  return jnp.einsum("btd,vd->btv", hidden, embedding.astype(hidden.dtype), preferred_element_type=jnp.float32)


def _forward(hidden, embedding, targets, tile):
  def one_tile(_, inputs):
    h, y = inputs  # [B, T, D], [B, T]
    logits = _tile_logits(h, embedding)  # [B, T, V]
    normaliser = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
    picked = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
    return None, (normaliser - picked, normaliser)

  _, (losses, normalisers) = jax.lax.scan(one_tile, None, (_tiles(hidden, tile), _tiles(targets, tile)))
  return losses, normalisers  # [N, B, T] each


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def tiled_cross_entropy(hidden: jax.Array, embedding: jax.Array, targets: jax.Array, tile: int) -> jax.Array:
  """Cross entropy in nats of logits = hidden @ embedding^T, a tile of positions at a time.

  Args:
    hidden: [B, L, D] final (normalised) hidden states, in the compute dtype.
    embedding: [V, D] the tied embedding, the head's weights.
    targets: [B, L] integer next tokens.
    tile: T, positions per tile (over the whole batch: B * T * V float32 logits exist at once).

  Returns:
    [B, L] float32, equal to `dense_cross_entropy(hidden @ embedding^T, targets)`.

  Example:
    >>> import jax
    >>> hidden = jax.random.normal(jax.random.key(0), (2, 6, 8))
    >>> embedding = jax.random.normal(jax.random.key(1), (11, 8))
    >>> targets = jax.random.randint(jax.random.key(2), (2, 6), 0, 11)
    >>> dense = dense_cross_entropy(hidden @ embedding.T, targets)
    >>> bool(jax.numpy.allclose(tiled_cross_entropy(hidden, embedding, targets, tile=4), dense, atol=1e-5))
    True
  """
  losses, _ = _forward(hidden, embedding, targets, tile)
  return _untile(losses, hidden.shape[1])


def _tiled_fwd(hidden, embedding, targets, tile):
  losses, normalisers = _forward(hidden, embedding, targets, tile)
  return _untile(losses, hidden.shape[1]), (hidden, embedding, targets, normalisers)


def _tiled_bwd(tile, residuals, cotangent):
  hidden, embedding, targets, normalisers = residuals
  vocab = embedding.shape[0]

  def one_tile(embedding_grad, inputs):
    h, y, normaliser, g = inputs  # [B, T, D], [B, T], [B, T], [B, T]
    probabilities = jnp.exp(_tile_logits(h, embedding) - normaliser[..., None])  # [B, T, V], recomputed
    logits_grad = g[..., None] * (probabilities - jax.nn.one_hot(y, vocab, dtype=jnp.float32))
    hidden_grad = jnp.einsum("btv,vd->btd", logits_grad, embedding.astype(jnp.float32))
    embedding_grad = embedding_grad + jnp.einsum("btv,btd->vd", logits_grad, h.astype(jnp.float32))
    return embedding_grad, hidden_grad.astype(hidden.dtype)

  inputs = (_tiles(hidden, tile), _tiles(targets, tile), normalisers, _tiles(cotangent, tile))
  embedding_grad, hidden_grads = jax.lax.scan(one_tile, jnp.zeros(embedding.shape, jnp.float32), inputs)
  hidden_grad = jnp.moveaxis(hidden_grads, 0, 2).reshape(hidden.shape[0], -1, hidden.shape[2])
  return hidden_grad[:, : hidden.shape[1]], embedding_grad.astype(embedding.dtype), None


tiled_cross_entropy.defvjp(_tiled_fwd, _tiled_bwd)
