"""Pod scale: about 125M parameters, GPT-2 BPE, WikiText-103, bf16 compute. For GPUs and TPUs.

  python train.py --config=configs/wikitext103_125m.py:hybrid_local --workdir runs/125m_hybrid_local

The argument picks the mixers of the 12 layers: wave (default), transformer, hybrid (every fourth layer
global attention) or hybrid_local (every other layer sliding-window attention of 512 positions: decoding
in bounded memory).

Prepare the data once: put the official `wikitext-103-raw-v1.zip` in ~/tensorflow_datasets/downloads/manual
(or set --config.data.manual_dir); the first run converts it to array_record.
"""

import ml_collections

from wavefield_jax.config import base_config

MIXERS = {
  "wave": ("wave",) * 12,
  "transformer": ("attention",) * 12,
  "hybrid": ("wave", "wave", "wave", "attention") * 3,
  "hybrid_local": ("wave", "local") * 6,
}


def get_config(kind: str = "wave") -> ml_collections.ConfigDict:
  if kind not in MIXERS:
    raise ValueError(f"configs/wikitext103_125m.py takes one of {sorted(MIXERS)}; got {kind!r}")
  config = base_config()
  config.model.update(
    dict(vocab_size=50304, dim=768, num_layers=12, num_heads=12, mlp_dim=2048, max_len=1024, dtype="bfloat16")
  )
  config.model.mixers = MIXERS[kind]
  config.model.window = 512
  config.data.update(dict(source="wikitext103", tokenizer="gpt2", seq_len=1024))
  config.train.update(
    dict(
      steps=100_000,
      batch_size=256,
      learning_rate=6e-4,
      wave_learning_rate=3e-3,
      warmup_steps=2000,
      log_every=100,
      eval_every=2000,
      eval_windows=512,
      checkpoint_every=2000,
      sample_tokens=200,
    )
  )
  return config
