"""Runs a tiny training in this process, optionally killing itself (SIGKILL) at a chosen point.

  python tests/train_driver.py '{"workdir": ..., "train": {...}, "kill": {"when": "saving" | "step", "step": N}}'

"saving": right after the save of step N has started (orbax still writing it in the background);
"step": just before the train step that would take the state from step N to N + 1.
"""

import json
import os
import signal
import sys

from helpers import tiny_config, tiny_corpus

from wavefield_jax import checkpointing, train_lib


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

      def dying_step(state, batch, *rest):
        if int(state["step"]) == kill["step"]:
          kill_self()
        return step(state, batch, *rest)

      return dying_step

    train_lib.make_train_step = make_dying_step
  result = train_lib.train_and_evaluate(tiny_config(**spec["train"]), spec["workdir"], corpus=tiny_corpus())
  print("RESULT " + json.dumps({k: v for k, v in result.items() if k != "sample"}))


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
