"""Train a Wave Field (or Transformer, or hybrid) language model.

  python train.py --config configs/default.py --workdir runs/default [--config.train.steps=3000]
  wavefield-train --config configs/default.py --workdir runs/default   (the same, installed)

Rerunning with the same --workdir resumes from its latest checkpoint; Ctrl-C saves and stops.
"""

from __future__ import annotations


def main() -> None:
  """The `wavefield-train` command."""
  from absl import flags

  from wavefield_jax import cli
  from wavefield_jax.workdir import TrainingError

  cli.define_config_flag("configs/default.py")  # the checkout's, or the wheel's outside one
  flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.", required=True)
  flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (multi-host runs).")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (default: from the cluster).")
  flags.DEFINE_integer("num_processes", None, "Processes in the run (default: from the cluster).")
  flags.DEFINE_integer("process_id", None, "This process's index (default: from the cluster).")
  cli.run(_train, errors=(TrainingError,), doc=__doc__, with_config=True)


def _train(f) -> None:
  if f.multihost:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes need it; GPUs/TPUs ignore it
    given = {"coordinator_address": f.coordinator_address, "num_processes": f.num_processes, "process_id": f.process_id}
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})
  from wavefield_jax.train_lib import train_and_evaluate

  result = train_and_evaluate(f.config, f.workdir)
  if result.get("interrupted"):
    return
  print(f"\nvalidation: {result['loss']:.4f} nats per token, {result['bpb']:.4f} bits per byte (step {result['step']})")
  if result["sample"]:  # train.sample_tokens=0 asks for none
    print("sample:\n" + "-" * 72 + f"\n{result['sample']}\n" + "-" * 72)


if __name__ == "__main__":
  main()
