"""Train a Wave Field (or Transformer, or hybrid) language model.

  python train.py --config configs/default.py --workdir runs/default [--config.train.steps=3000]

Rerunning with the same --workdir resumes from its latest checkpoint; Ctrl-C saves and stops.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.", required=True)
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (multi-host runs).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (default: from the cluster).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (default: from the cluster).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (default: from the cluster).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if _MULTIHOST.value:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes need it; GPUs/TPUs ignore it
    given = {
      "coordinator_address": _COORDINATOR.value,
      "num_processes": _NUM_PROCESSES.value,
      "process_id": _PROCESS_ID.value,
    }
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})
  from wavefield_jax.checkpointing import CheckpointError
  from wavefield_jax.data import DataError
  from wavefield_jax.train_lib import TrainingError, train_and_evaluate

  try:
    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (CheckpointError, DataError, TrainingError, ValueError) as error:
    sys.exit(f"error: {error}")
  if result.get("interrupted"):
    return
  print(f"\nvalidation: {result['loss']:.4f} nats per token, {result['bpb']:.4f} bits per byte (step {result['step']})")
  print("sample:\n" + "-" * 72 + f"\n{result['sample']}\n" + "-" * 72)


if __name__ == "__main__":
  app.run(main)
