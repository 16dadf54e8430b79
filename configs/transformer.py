"""The Transformer baseline: the default run with causal softmax attention in every layer (same size)."""

import ml_collections

from wavefield_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.mixers = ("attention",) * config.model.num_layers
  return config
