"""The pod model takes real steps: configs/wikitext103_125m.py (about 125M parameters, bf16 compute, GPT-2
BPE) trained on this CPU on the shipped corpus with a short window, for each mixer kind.

Each model trains twice from scratch with `train.py` in its own process: straight through, and stopped
at half way (`train.stop_at`) then resumed in a new process from its checkpoint. The resumed losses
must equal the straight ones; the loss must fall. Parameter counts are checked against the name.

  python -m benchmarks.pod_smoke [--models wave,hybrid,hybrid_local] [--steps 24]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common
from wavefield_jax import plots
from wavefield_jax.workdir import read_metrics

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "benchmarks" / "runs" / "pod_smoke"
CONFIG = "configs/wikitext103_125m.py"
NOMINAL_PARAMS = 125e6
SEQ_LEN, BATCH, WINDOW = 256, 2, 64


def train(model: str, workdir: Path, steps: int, *extra: str) -> float:
  """One train.py process; returns its wall-clock seconds."""
  command = [
    sys.executable,
    "train.py",
    f"--config={CONFIG}:{model}",
    f"--workdir={workdir}",
    "--config.data.source=shakespeare",
    f"--config.data.seq_len={SEQ_LEN}",
    f"--config.model.max_len={SEQ_LEN}",
    f"--config.model.window={WINDOW}",  # shorter than the window, so the local layers are local
    f"--config.train.batch_size={BATCH}",
    f"--config.train.steps={steps}",
    "--config.train.warmup_steps=2",
    "--config.train.log_every=1",
    f"--config.train.eval_every={steps}",
    "--config.train.eval_windows=8",
    f"--config.train.checkpoint_every={steps // 2}",
    "--config.train.sample_tokens=24",
    *extra,
  ]
  start = time.perf_counter()
  subprocess.run(command, check=True, cwd=REPO)
  return time.perf_counter() - start


def parameter_count(model: str) -> int:
  from flax import nnx

  from benchmarks.pod_plan import load_pod_config
  from wavefield_jax.model import WaveFieldLM, count_params

  config = load_pod_config(model)
  abstract = nnx.eval_shape(lambda: WaveFieldLM(config.model, rngs=nnx.Rngs(0)))
  return count_params(abstract)["total"]


def losses(workdir: Path) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in read_metrics(workdir / "metrics.jsonl") if r["kind"] == "train"}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="wave,hybrid,hybrid_local")
  parser.add_argument("--steps", type=int, default=24)
  args = parser.parse_args()
  if args.steps < 4 or args.steps % 2:
    raise SystemExit(f"--steps must be even and at least 4; got {args.steps}")
  rows = []
  for model in args.models.split(","):
    straight, split = RUNS / model / "straight", RUNS / model / "split"
    shutil.rmtree(RUNS / model, ignore_errors=True)  # a smoke run always starts from nothing
    seconds = train(model, straight, args.steps)
    train(model, split, args.steps, f"--config.train.stop_at={args.steps // 2}")
    train(model, split, args.steps)  # a new process, resumed from the half-way checkpoint
    want, got = losses(straight), losses(split)
    if sorted(want) != list(range(1, args.steps + 1)) or sorted(got) != sorted(want):
      raise SystemExit(f"{model}: logged steps {sorted(want)} straight, {sorted(got)} resumed")
    params = parameter_count(model)
    first, last = want[1], want[args.steps]
    rows.append(
      {
        "model": model,
        "params": params,
        "first_loss": first,
        "last_loss": last,
        "fall": 1 - last / first,
        "resume_max_diff": max(abs(want[s] - got[s]) for s in want),
        "s_per_step": seconds / args.steps,
        "straight": want,
        "resumed": got,
      }
    )
    print(rows[-1], flush=True)
  write(rows, args.steps)


def write(rows: list[dict], steps: int) -> None:
  plt = plots.pyplot()

  table = common.markdown_table(
    [
      [
        r["model"],
        f"{r['params'] / 1e6:.1f}M",
        f"{r['params'] / NOMINAL_PARAMS:.3f}",
        f"{r['first_loss']:.3f}",
        f"{r['last_loss']:.3f}",
        f"{100 * r['fall']:.0f}%",
        f"{r['resume_max_diff']:.1e}",
        f"{r['s_per_step']:.1f}",
      ]
      for r in rows
    ],
    [
      "model",
      "parameters",
      "/ 125M",
      "loss at step 1",
      f"loss at step {steps}",
      "fall",
      "resumed - straight",
      "s / step",
    ],
  )
  table += (
    f"\n\nconfigs/wikitext103_125m.py:<model> on the shipped corpus with GPT-2 BPE, bf16 compute, {steps} steps of "
    f"{BATCH} x {SEQ_LEN} tokens (local window {WINDOW}); resumed: stopped at step {steps // 2} and continued in a "
    "new process from the checkpoint (largest loss difference over all steps); s / step: the straight run's wall "
    "clock over its steps, compile, evaluation and sampling included, on a shared machine."
  )
  common.write_results("pod_smoke", {"machine": common.machine(), "steps": steps, "rows": rows}, table)
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for colour, r in enumerate(rows):
    xs = sorted(r["straight"])
    ax.plot(xs, [r["straight"][s] for s in xs], "-", color=f"C{colour}", label=f"{r['model']} straight")
    ax.plot(xs, [r["resumed"][s] for s in xs], "x", color=f"C{colour}", label=f"{r['model']} resumed")
  ax.axvline(steps // 2, color="grey", lw=0.8, ls=":")
  ax.set_xlabel("step")
  ax.set_ylabel("train loss (nats / token)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title("125M configuration on 2 CPU cores")
  plots.save(fig, common.RESULTS / "pod_smoke.png", dpi=120)


if __name__ == "__main__":
  main()
