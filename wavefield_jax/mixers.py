"""The mixers by kind: one table that the config's checks, the model, analysis and the Linen modules read.

Adding a mixer takes its physics functions, its module (`__call__`, `init_cache`, `prefill`, `step`, as the
layers here have) and one `register` call; `model.mixers` then accepts its name. See docs/development.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from wavefield_jax import attention, layers

# build(model config, compute dtype, mesh or None, rngs) -> the mixer of one layer.
Builder = Callable[[ml_collections.ConfigDict, Any, "jax.sharding.Mesh | None", nnx.Rngs], nnx.Module]


@dataclasses.dataclass(frozen=True)
class MixerKind:
  """What the rest of the package needs to know of one kind of mixer.

  Attributes:
    module: its class.
    build: makes the mixer of one layer from the model config.
    wave_family: its decode state does not grow with the context (so a document is read whole, state
      carried), and it has the three physical constants per head that analysis reads (`constants()`, and
      `field`, a `layers.WaveConstants`).
    rotary: it uses rotary positions, which need an even head width.
  """

  module: type[nnx.Module]
  build: Builder
  wave_family: bool
  rotary: bool = False


REGISTRY: dict[str, MixerKind] = {}


def register(name: str, module: type[nnx.Module], build: Builder, *, wave_family: bool, rotary: bool = False) -> None:
  """Adds a kind of mixer under `name`, the word `model.mixers` uses for it."""
  if not name.isidentifier():
    raise ValueError(f"a mixer's name must be an identifier; got {name!r}")
  REGISTRY[name] = MixerKind(module, build, wave_family, rotary)


def kind(name: str) -> MixerKind:
  """The registered kind called `name`; a ValueError lists the kinds there are."""
  if name not in REGISTRY:
    raise ValueError(f"unknown mixer {name!r}; choose from {tuple(REGISTRY)}")
  return REGISTRY[name]


def wave_family_modules() -> tuple[type[nnx.Module], ...]:
  """The classes of the wave-family mixers, for finding them in a model."""
  return tuple(entry.module for entry in REGISTRY.values() if entry.wave_family)


def _wave_builder(module: type[nnx.Module]) -> Builder:
  def build(config, dtype, mesh, rngs):
    return module(
      config.dim,
      config.num_heads,
      max_len=config.max_len,
      conv_width=config.conv_width,
      method=config.wave_method,
      chunk_size=config.wave_chunk_size,
      speed_init=config.speed_init,
      dtype=dtype,
      mesh=mesh,
      rngs=rngs,
    )

  return build


for _name, _module in (
  ("wave", layers.WaveFieldMixer),
  ("selective", layers.SelectiveWaveMixer),
  ("retention", layers.RetentionMixer),
):
  register(_name, _module, _wave_builder(_module), wave_family=True)
register(
  "attention",
  attention.Attention,
  lambda config, dtype, mesh, rngs: attention.Attention(
    config.dim, config.num_heads, implementation=config.attention_impl, dtype=dtype, rngs=rngs
  ),
  wave_family=False,
  rotary=True,
)
register(
  "local",
  attention.LocalAttention,
  lambda config, dtype, mesh, rngs: attention.LocalAttention(
    config.dim, config.num_heads, window=config.window, dtype=dtype, rngs=rngs
  ),
  wave_family=False,
  rotary=True,
)
