"""Pod scale: about 125M parameters, GPT-2 BPE, WikiText-103, bf16 compute. For GPUs and TPUs.

Prepare the data once: put the official `wikitext-103-raw-v1.zip` in ~/tensorflow_datasets/downloads/manual
(or set --config.data.manual_dir); the first run converts it to array_record.
"""

import ml_collections

from wavefield_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(
    dict(vocab_size=50304, dim=768, num_layers=12, num_heads=12, mlp_dim=2048, max_len=1024, dtype="bfloat16")
  )
  config.model.mixers = ("wave",) * 12
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
