"""What several test files share: the tiny model and run, an in-memory corpus, loss and directory readers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import ml_collections
import numpy as np

from wavefield_jax import data
from wavefield_jax.config import base_config
from wavefield_jax.workdir import read_metrics

# Two layers, one of each mixer, small enough to train for dozens of steps in seconds.
TINY_MODEL = dict(dim=32, num_layers=2, num_heads=4, mixers=("wave", "attention"), mlp_dim=64, max_len=32)


def tiny_config(**train) -> ml_collections.ConfigDict:
  """The tiny model on windows of 32 bytes; `train` overrides the run's train section."""
  config = base_config()
  config.model.update(TINY_MODEL)
  config.data.seq_len = 32
  config.train.update(dict(batch_size=8, warmup_steps=5, log_every=1, eval_every=10_000, eval_windows=4))
  config.train.update(dict(sample_tokens=0) | train)
  return config


def tiny_corpus(seed: int = 0) -> data.Corpus:
  """30 kB of random lowercase letters, tokenized as bytes; validation and test are its first 2 kB."""
  text = bytes(np.random.default_rng(seed).integers(97, 123, 30_000).astype(np.uint8))
  return data.tokenize({"train": [text], "validation": [text[:2000]], "test": [text[:2000]]}, data.ByteTokenizer(), 32)


def read_losses(workdir: Path) -> dict[int, float]:
  """The train loss of every step; a step logged again after a resume keeps its last value."""
  return {r["step"]: r["loss"] for r in read_metrics(workdir / "metrics.jsonl") if r["kind"] == "train"}


def file_digests(directory: Path) -> dict[str, str]:
  """sha256 of every file under `directory`, by relative path: equal dicts mean nothing was changed."""
  digests = {}
  for path in sorted(p for p in directory.rglob("*") if p.is_file()):
    with path.open("rb") as f:
      digests[str(path.relative_to(directory))] = hashlib.file_digest(f, "sha256").hexdigest()
  return digests
