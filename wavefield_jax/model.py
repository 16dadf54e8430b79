"""WaveFieldLM: embeddings, pre-norm blocks with a mixer chosen per layer, a head tied to the embedding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from wavefield_jax import layers
from wavefield_jax.config import validate_model_config
from wavefield_jax.parallel import DATA, SEQ


class WaveFieldLM(nnx.Module):
  """A decoder-only language model whose token mixers are wave fields, attention, or a mix of both.

  Call it on tokens [B, L] for logits [B, L, V] (float32). For generation, `init_cache`, `prefill`
  (the parallel paths over a prompt) and `step` (one token, O(1) for wave layers) share every weight.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs, mesh: jax.sharding.Mesh | None = None):
    """mesh: a ("data", "seq") mesh: activations are split over both axes, and wave layers convolve
    their own positions (see `parallel`)."""
    validate_model_config(config)
    self.config = config
    self.mesh = mesh
    dtype = jnp.dtype(config.dtype)
    self.embed = nnx.Embed(config.vocab_size, config.dim, dtype=dtype, rngs=rngs)
    blocks = []
    wave_kinds = {
      "wave": layers.WaveFieldMixer,
      "selective": layers.SelectiveWaveMixer,
      "retention": layers.RetentionMixer,
    }
    for kind in config.mixers:
      if kind in wave_kinds:
        mixer = wave_kinds[kind](
          config.dim,
          config.num_heads,
          max_len=config.max_len,
          conv_width=config.conv_width,
          method=config.wave_method,
          chunk_size=config.wave_chunk_size,
          dtype=dtype,
          mesh=mesh,
          rngs=rngs,
        )
      elif kind == "local":
        mixer = layers.LocalAttention(config.dim, config.num_heads, window=config.window, dtype=dtype, rngs=rngs)
      else:
        mixer = layers.Attention(
          config.dim, config.num_heads, implementation=config.attention_impl, dtype=dtype, rngs=rngs
        )
      blocks.append(layers.Block(mixer, config.dim, config.mlp_dim, dtype=dtype, rngs=rngs))
    self.blocks = nnx.List(blocks)
    self.final_norm = nnx.RMSNorm(config.dim, dtype=dtype, rngs=rngs)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """[..., D] -> [..., V] float32, through the transposed embedding."""
    return self.embed.attend(self.final_norm(hidden)).astype(jnp.float32)

  def from_embeddings(self, x: jax.Array) -> jax.Array:
    """Logits [B, L, V] from input embeddings [B, L, D]; the gradient path used to check causality."""
    for block in self.blocks:
      x = block(x)
    return self.logits(x)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """tokens [B, L] int -> logits [B, L, V] float32."""
    x = self.embed(tokens)  # [B, L, D]
    if self.mesh is not None:
      # Every layer then works on its own positions: without this only the wave convolution does, and
      # attention, the MLPs and the logits run whole on every device of a `seq` group.
      x = jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, P(DATA, SEQ)))
    return self.from_embeddings(x)

  def init_cache(self, batch_size: int, max_len: int) -> list:
    """One cache per layer for decoding up to `max_len` positions in total."""
    return [block.mixer.init_cache(batch_size, max_len) for block in self.blocks]

  def prefill(self, tokens: jax.Array, cache: list) -> tuple[jax.Array, list]:
    """tokens [B, L] continuing the cache: logits [B, L, V] and the advanced cache."""
    x = self.embed(tokens)
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache, strict=True):
      x, layer_cache = block.prefill(x, layer_cache)
      new_cache.append(layer_cache)
    return self.logits(x), new_cache

  def step(self, token: jax.Array, cache: list) -> tuple[jax.Array, list]:
    """token [B] int -> logits [B, V] float32 for the next position, and the advanced cache."""
    x = self.embed(token)  # [B, D]
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache, strict=True):
      x, layer_cache = block.step(x, layer_cache)
      new_cache.append(layer_cache)
    return self.logits(x), new_cache


def count_params(model: nnx.Module) -> dict[str, int]:
  """Parameter counts: `total`, the physical constants (`wave_constants`, 3 per wave head) and the rest."""
  total = sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
  physical = sum(a.size for a in jax.tree.leaves(nnx.state(model, layers.WaveParam)))
  return {"total": total, "wave_constants": physical, "other": total - physical}
