"""A quarter-size model (D=64, 2 layers) for quality runs long enough to plateau on 2 CPU cores.

  python train.py --config=configs/small.py:transformer --workdir runs/small_transformer

The argument picks the mixers: wave (default), transformer, hybrid (wave below, global attention on top),
hybrid_local (wave below, sliding-window attention on top: decoding in bounded memory), selective and
retention (the wave on a data-dependent clock, the wave weighting the query-key match), selective_retention
(one of each), and selective_local / retention_local (the new mixer below a sliding window).
"""

import ml_collections

from wavefield_jax.config import TWO_LAYER_MIXERS, base_config


def get_config(kind: str = "wave") -> ml_collections.ConfigDict:
  if kind not in TWO_LAYER_MIXERS:
    raise ValueError(f"configs/small.py takes one of {sorted(TWO_LAYER_MIXERS)}; got {kind!r}")
  config = base_config()
  config.model.update(dict(dim=64, num_layers=2, num_heads=4, mlp_dim=192))
  config.model.mixers = TWO_LAYER_MIXERS[kind]
  return config
