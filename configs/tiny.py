"""A tiny wave model on the shipped corpus: seconds per hundred steps on a CPU; for smoke tests and the soak."""

import ml_collections

from wavefield_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(dict(dim=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=64))
  config.model.mixers = ("wave", "wave")
  config.data.seq_len = 64
  config.train.update(
    dict(steps=2000, batch_size=8, warmup_steps=50, log_every=10, eval_every=1000, eval_windows=16, sample_tokens=0)
  )
  return config
