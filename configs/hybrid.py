"""A hybrid of the default size: wave layers with one attention layer third from the bottom."""

import ml_collections

from wavefield_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.mixers = ("wave", "wave", "attention", "wave")
  return config
