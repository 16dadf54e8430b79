"""The default run: a Wave Field LM on the shipped Shakespeare corpus, bytes, a few minutes on 2 CPU cores."""

import ml_collections

from wavefield_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.mixers = ("wave",) * config.model.num_layers
  return config
