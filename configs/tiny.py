"""A tiny model on the shipped corpus: seconds per hundred steps on a CPU; for smoke tests, the soak and
the test suite.

  python train.py --config=configs/tiny.py --workdir runs/tiny   (configs/tiny.py:hybrid: wave, attention)

The argument names the two layers' mixers as in configs/small.py (wave by default).
"""

import ml_collections

from wavefield_jax.config import TWO_LAYER_MIXERS, base_config


def get_config(kind: str = "wave") -> ml_collections.ConfigDict:
  if kind not in TWO_LAYER_MIXERS:
    raise ValueError(f"configs/tiny.py takes one of {sorted(TWO_LAYER_MIXERS)}; got {kind!r}")
  config = base_config()
  config.model.update(dict(dim=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=64))
  config.model.mixers = TWO_LAYER_MIXERS[kind]
  config.data.seq_len = 64
  config.train.update(
    dict(steps=2000, batch_size=8, warmup_steps=50, log_every=10, eval_every=1000, eval_windows=16, sample_tokens=0)
  )
  return config
