"""Runs a tiny training in this process, optionally killing itself (SIGKILL) at a chosen point.

  python tests/train_driver.py '{"workdir": ..., "train": {...}, "kill": {"when": "saving" | "step", "step": N}}'

"saving": right after the save of step N has started (orbax still writing it in the background);
"step": just before the train step that would take the state from step N to N + 1.
"""

import json
import os
import signal
import sys

import numpy as np

from wavefield_jax import checkpointing, data, train_lib
from wavefield_jax.config import base_config

TINY_MODEL = dict(dim=32, num_layers=2, num_heads=4, mixers=("wave", "attention"), mlp_dim=64, max_len=32)


def tiny_corpus(seed: int = 0) -> data.Corpus:
  text = bytes(np.random.default_rng(seed).integers(97, 123, 30_000).astype(np.uint8))
  return data.tokenize({"train": [text], "validation": [text[:2000]], "test": [text[:2000]]}, data.ByteTokenizer(), 32)


def tiny_config(**train):
  config = base_config()
  config.model.update(TINY_MODEL)
  config.data.seq_len = 32
  config.train.update(dict(batch_size=8, warmup_steps=5, log_every=1, eval_every=10_000, eval_windows=4))
  config.train.update(dict(sample_tokens=0) | train)
  return config


def kill_self() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def main(spec: dict) -> None:
  kill = spec.get("kill")
  if kill and kill["when"] == "saving":
    save = checkpointing.Checkpointer.save

    def save_then_die(self, step, *args, **kwargs):
      save(self, step, *args, **kwargs)
      if step == kill["step"]:
        kill_self()

    checkpointing.Checkpointer.save = save_then_die
  if kill and kill["when"] == "step":
    make_train_step = train_lib.make_train_step

    def make_dying_step(*args, **kwargs):
      step = make_train_step(*args, **kwargs)

      def dying_step(state, batch, **kw):
        if int(state["step"]) == kill["step"]:
          kill_self()
        return step(state, batch, **kw)

      return dying_step

    train_lib.make_train_step = make_dying_step
  result = train_lib.train_and_evaluate(tiny_config(**spec["train"]), spec["workdir"], corpus=tiny_corpus())
  print("RESULT " + json.dumps({k: v for k, v in result.items() if k != "sample"}))


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
