"""What the commands share: the workdir and step flags, and a run that ends an expected error in one line.

Flags are defined only when a command's `main` runs, never when a module is imported, so any of the
command modules can be imported together.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags, logging


def define_workdir_flags(step_use: str) -> None:
  """--workdir (required) and --step, for commands that read a trained run."""
  flags.DEFINE_string("workdir", None, "A training workdir (holds config.json and checkpoints/).", required=True)
  flags.DEFINE_integer("step", None, f"Checkpoint step to {step_use} (default: the latest).")


def run(body: Callable[[flags.FlagValues], None], errors: tuple[type[Exception], ...] = ()) -> None:
  """Parses the command line and calls body(FLAGS) with warnings-only logging (orbax logs every save at
  INFO); a bad checkpoint, corpus or value, or one of `errors`, exits with `error: <message>`."""
  from wavefield_jax.checkpointing import CheckpointError
  from wavefield_jax.data import DataError

  def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
      body(flags.FLAGS)
    except (CheckpointError, DataError, ValueError, *errors) as error:
      sys.exit(f"error: {error}")

  app.run(main)
