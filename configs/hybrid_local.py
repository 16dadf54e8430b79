"""The bounded-memory hybrid: wave layers and sliding-window attention (window 64) alternating.

Decoding keeps the wave layers' [B, H, K] state and the local layers' last 64 keys and values: memory
that does not grow with the context.
"""

import ml_collections

from wavefield_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.mixers = ("wave", "local", "wave", "local")
  config.model.window = 64
  return config
