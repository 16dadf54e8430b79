"""Long windows on the shipped corpus: 4096 bytes of context, where attention's L^2 starts to dominate."""

import ml_collections

from wavefield_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.data.seq_len = 4096
  config.model.max_len = 4096
  config.model.mixers = ("wave",) * config.model.num_layers
  config.train.batch_size = 1
  config.train.eval_windows = 8
  return config
