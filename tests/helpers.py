"""What several test files share: the tiny model and run, an in-memory corpus, loss and directory readers."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import ml_collections
import numpy as np

from wavefield_jax import input_pipeline, tokenizers
from wavefield_jax.workdir import read_metrics

REPO = Path(__file__).resolve().parent.parent


def load_config(name: str, kind: str | None = None) -> ml_collections.ConfigDict:
  """configs/<name>.py's get_config(kind), as `--config=configs/<name>.py:<kind>` loads it."""
  spec = importlib.util.spec_from_file_location(f"configs_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if kind is None else module.get_config(kind)


def tiny_config(**train) -> ml_collections.ConfigDict:
  """configs/tiny.py's model with one layer of each mixer (its `hybrid` kind) on windows of 32 bytes,
  short runs; `train` overrides the run's train section."""
  config = load_config("tiny", "hybrid")
  config.data.seq_len = 32
  config.train.update(dict(batch_size=8, warmup_steps=5, log_every=1, eval_every=10_000, eval_windows=4))
  config.train.update(train)
  return config


def tiny_corpus(seed: int = 0) -> input_pipeline.Corpus:
  """30 kB of random lowercase letters, tokenized as bytes; validation and test are its first 2 kB."""
  text = bytes(np.random.default_rng(seed).integers(97, 123, 30_000).astype(np.uint8))
  return input_pipeline.tokenize(
    {"train": [text], "validation": [text[:2000]], "test": [text[:2000]]}, tokenizers.ByteTokenizer(), 32
  )


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
