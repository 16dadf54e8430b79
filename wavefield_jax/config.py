"""Model configuration: defaults and the checks run once, when a model or a run starts."""

from __future__ import annotations

import ml_collections

MIXERS = ("wave", "attention")
DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLEMENTATIONS = (None, "xla", "cudnn")


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The model section of a config, with every key defaulted.

  Keys:
    vocab_size: tokens in the vocabulary (256 for bytes).
    dim: model width D.
    num_layers: number of blocks.
    num_heads: heads per mixer; D / num_heads channels each.
    mixers: one of "wave" / "attention" per layer; a mix is a hybrid.
    mlp_dim: hidden width of the gated MLP.
    conv_width: width of the wave mixer's short causal conv.
    max_len: the training context; it sets the slowest initial damping (1 / max_len).
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32).
    attention_impl: None, "xla" or "cudnn" for jax.nn.dot_product_attention.
  """
  config = ml_collections.ConfigDict(
    dict(
      vocab_size=256,
      dim=256,
      num_layers=4,
      num_heads=8,
      mixers=("wave",) * 4,
      mlp_dim=768,
      conv_width=4,
      max_len=256,
      dtype="float32",
      attention_impl=ml_collections.FieldReference(None, field_type=str),
    )
  )
  config.update(overrides)
  return config


def validate_model_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key of the first invalid value."""
  for key in ("vocab_size", "dim", "num_layers", "num_heads", "mlp_dim", "conv_width", "max_len"):
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"model.{key} must be a positive integer; got {value!r}")
  if config.dim % config.num_heads:
    raise ValueError(f"model.dim={config.dim} must be divisible by model.num_heads={config.num_heads}")
  mixers = tuple(config.mixers)
  if len(mixers) != config.num_layers:
    raise ValueError(f"model.mixers must name one mixer per layer ({config.num_layers}); got {len(mixers)}: {mixers}")
  unknown = [m for m in mixers if m not in MIXERS]
  if unknown:
    raise ValueError(f"model.mixers has unknown mixer {unknown[0]!r}; choose from {MIXERS}")
  if "attention" in mixers and (config.dim // config.num_heads) % 2:
    raise ValueError(
      f"model.dim / model.num_heads must be even for rotary attention; got {config.dim // config.num_heads}"
    )
  if config.dtype not in DTYPES:
    raise ValueError(f"model.dtype must be one of {DTYPES}; got {config.dtype!r}")
  if config.attention_impl not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"model.attention_impl must be one of {ATTENTION_IMPLEMENTATIONS}; got {config.attention_impl!r}")
