"""A bounded soak: train the tiny config while killing it (SIGKILL) at random moments, then check that the
run that was killed again and again ends exactly where an uninterrupted run ends.

  python -m benchmarks.soak [--steps 2000] [--checkpoint-every 50] [--kills 10] [--seed 0]

Each kill lands at a random time after the process starts (startup, training, or an asynchronous
checkpoint save in flight); the next start resumes from the last complete checkpoint. Reported: the kills
survived (each restart resumed from a complete checkpoint no later than the progress made), and whether
every step's loss and the final validation loss equal the uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from wavefield_jax import plots
from wavefield_jax.workdir import read_metrics

REPO = Path(__file__).resolve().parent.parent
RESUMED = re.compile(r"resuming from step (\d+)")
FINAL = re.compile(r"validation: ([0-9.]+) nats per token, ([0-9.]+) bits per byte \(step (\d+)\)")


def start(workdir: Path, steps: int, checkpoint_every: int) -> subprocess.Popen:
  command = [
    sys.executable,
    str(REPO / "train.py"),
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.train.steps={steps}",
    f"--config.train.checkpoint_every={checkpoint_every}",
  ]
  environment = os.environ | {"PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen(
    command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment
  )


def step_losses(workdir: Path) -> dict[int, float]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return {}
  return {r["step"]: r["loss"] for r in read_metrics(path) if r["kind"] == "train"}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--checkpoint-every", type=int, default=50)
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  root = Path(tempfile.mkdtemp(prefix="wavefield_soak_"))

  began = time.perf_counter()
  reference = start(root / "reference", args.steps, args.checkpoint_every)
  reference_out, _ = reference.communicate()
  reference_seconds = time.perf_counter() - began
  if reference.returncode != 0:
    sys.exit(f"the uninterrupted run failed (exit {reference.returncode})")
  want = FINAL.search(reference_out).groups()
  print(f"uninterrupted: {reference_seconds:.0f} s, final {want}", flush=True)

  workdir = root / "killed"
  kills = []
  while len(kills) < args.kills:
    delay = float(rng.uniform(2.0, 0.5 * reference_seconds))
    progress_before = max(step_losses(workdir), default=0)
    process = start(workdir, args.steps, args.checkpoint_every)
    try:
      out, _ = process.communicate(timeout=delay)
      break  # it finished before the kill: the run is over
    except subprocess.TimeoutExpired:
      process.send_signal(signal.SIGKILL)
      out, _ = process.communicate()
    resumed = RESUMED.search(out)  # absent when killed during startup, or before the first checkpoint
    resumed_from = int(resumed.group(1)) if resumed else None
    kill = {
      "delay_s": round(delay, 2),
      "resumed_from": resumed_from,
      "progress_before": progress_before,
      "logged_when_killed": max(step_losses(workdir), default=0),
      "ok": resumed_from is None or (resumed_from <= progress_before and resumed_from % args.checkpoint_every == 0),
    }
    kills.append(kill)
    print(f"kill {len(kills)}: {kill}", flush=True)
  final = start(workdir, args.steps, args.checkpoint_every)
  final_out, _ = final.communicate()
  got = FINAL.search(final_out).groups() if final.returncode == 0 else None
  final_resumed = RESUMED.search(final_out)
  reference_losses, killed_losses = step_losses(root / "reference"), step_losses(workdir)
  same_steps = sorted(reference_losses) == sorted(killed_losses)
  equal = same_steps and all(reference_losses[s] == killed_losses[s] for s in reference_losses)
  summary = {
    "machine": common.machine(),
    "steps": args.steps,
    "checkpoint_every": args.checkpoint_every,
    "kills": kills,
    "kills_survived": sum(k["ok"] for k in kills),
    "final_run_exit": final.returncode,
    "final_run_resumed_from": int(final_resumed.group(1)) if final_resumed else None,
    "final": got,
    "uninterrupted_final": list(want),
    "final_equal": got is not None and list(got) == list(want),
    "every_logged_loss_equal": equal,
    "uninterrupted_seconds": round(reference_seconds, 1),
  }
  rows = [
    [
      i + 1,
      k["delay_s"],
      k["progress_before"],
      k["resumed_from"] or "-",
      k["logged_when_killed"],
      "yes" if k["ok"] else "NO",
    ]
    for i, k in enumerate(kills)
  ]
  header = ["start", "killed after (s)", "logged before it", "it resumed from", "logged when killed", "resume ok"]
  table = common.markdown_table(rows, header)
  table += (
    f"\n\n{summary['kills_survived']} of {len(kills)} kills survived; final validation loss "
    f"{got[0] if got else 'n/a'} vs {want[0]} uninterrupted ({'equal' if summary['final_equal'] else 'DIFFERENT'}); "
    f"every logged step's loss {'equal' if equal else 'NOT equal'} to the uninterrupted run "
    f"({args.steps} steps, a checkpoint every {args.checkpoint_every}; the last start resumed from step "
    f"{summary['final_run_resumed_from']}). '-': killed during startup, before it had restored a checkpoint."
  )
  common.write_results("soak", summary, table)
  plot(reference_losses, killed_losses, kills)


def plot(reference: dict[int, float], killed: dict[int, float], kills: list[dict]) -> None:
  plt = plots.pyplot()

  fig, ax = plt.subplots(figsize=(8, 3.8))
  ax.plot(sorted(reference), [reference[s] for s in sorted(reference)], lw=3, alpha=0.4, label="uninterrupted")
  ax.plot(sorted(killed), [killed[s] for s in sorted(killed)], lw=1, label="killed and resumed")
  for i, kill in enumerate(kills):
    ax.axvline(kill["logged_when_killed"], color="tab:red", lw=0.8, alpha=0.6, label="kill" if i == 0 else None)
  ax.set_xlabel("step")
  ax.set_ylabel("train loss (nats per token)")
  ax.legend()
  ax.grid(alpha=0.3)
  plots.save(fig, common.RESULTS / "soak.png", dpi=110)


if __name__ == "__main__":
  main()
