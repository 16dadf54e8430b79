"""The wave mixers as Linen modules, for Linen models: every trained value under `params`.

`flax.nnx.bridge.to_linen` files the wave constants under a collection named after their type
(`WaveParam`), so the usual `apply({"params": p}, x)` re-creates them at random on every call and a
gradient over `params` never reaches them. These modules instead declare the NNX mixer's whole
parameter state, constants included, as one Linen param; the forward pass merges it back into the NNX
mixer, so the math is the same code.

  mixer = linen.WaveFieldMixer(dim=256, num_heads=8, max_len=4096)
  params = mixer.init(jax.random.key(0), x)["params"]  # params["mixer"]["field"]["speed_raw"], ... included
  y = mixer.apply({"params": params}, x)  # [B, L, D]
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from wavefield_jax import mixers


class WaveFieldMixer(nn.Module):
  """`layers.WaveFieldMixer` (or, with `kind`, the selective or retention mixer) as a Linen module.

  Attributes:
    dim: D, the model width.
    num_heads: H.
    max_len: the training context (the slowest head's initial damping is 1 / max_len).
    kind: "wave", "selective" or "retention".
    conv_width: width of the short causal conv.
    method: how the wave convolution is computed (`physics.wave_conv`).
    chunk_size: positions per chunk of that method.
    dtype: compute dtype of the projections.
    param_dtype: storage dtype of the projection weights.
    constants: optional starting (speed, damping, phase), each [H].
    speed_init: the starting speeds without `constants`, "spread" or "tied" (`head_constants.initial_constants`).
  """

  dim: int
  num_heads: int
  max_len: int
  kind: str = "wave"
  conv_width: int = 4
  method: str = "auto"
  chunk_size: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  constants: tuple | None = None
  speed_init: str = "spread"

  def _build(self, key: jax.Array) -> nnx.Module:
    wave_kinds = tuple(name for name, entry in mixers.REGISTRY.items() if entry.wave_family)
    if self.kind not in wave_kinds:
      raise ValueError(f"kind must be one of {wave_kinds}; got {self.kind!r}")
    options = dict(conv_width=self.conv_width, method=self.method, chunk_size=self.chunk_size, dtype=self.dtype)
    options |= dict(param_dtype=self.param_dtype, constants=self.constants, speed_init=self.speed_init)
    return mixers.REGISTRY[self.kind].module(
      self.dim, self.num_heads, max_len=self.max_len, rngs=nnx.Rngs(key), **options
    )

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, L, D] -> [B, L, D]."""
    # The structure comes from an abstract build (nothing allocated); the values are the Linen param.
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: self._build(jax.random.key(0))))
    values = self.param("mixer", lambda key: nnx.to_pure_dict(nnx.state(self._build(key))))
    nnx.replace_by_pure_dict(abstract, values)
    return nnx.merge(graphdef, abstract)(x)
