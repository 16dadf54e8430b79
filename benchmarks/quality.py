"""Quality: wave, Transformer and hybrid models of equal size trained on the shipped corpus, same steps
and tokens, several seeds; validation and test bits per byte, ratios to the Transformer, loss curves.

Two sizes: `default` (D=128, 4 layers: configs/default.py, transformer.py, hybrid.py) and `small`
(D=64, 2 layers: configs/small.py), which reaches the plateau in a run length 2 CPU cores can afford.
Each run is `train.py` in its own process and workdir (benchmarks/runs/quality/<size>/<steps>_steps/
<model>_s<seed>), so a run cut short resumes from its checkpoint when this script is started again;
finished runs are not redone. Validation (Julius Caesar, Twelfth Night) and test (Macbeth, The Tempest)
are scored in full at the end. Results: benchmarks/results/quality_<size>_<steps>[_<tag>].{json,md,png}.

  python -m benchmarks.quality [--size default] [--steps 2000] [--seeds 0,1] [--models wave,hybrid_local64] [--tag T]
                               [--reuse benchmarks/results/quality_default_3000.json]

Models: wave, transformer, hybrid (global attention), hybrid_local<W> (sliding-window attention of W
positions: bounded decode memory), each with optional overrides: _h<H> for H heads per layer (wave_h16),
_wlr<R> for the wave constants' learning rate (wave_wlr3e-2), _ml<N> for model.max_len, which sets the
slowest head's initial damping to 1/N (wave_ml4096).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common
from wavefield_jax import plots
from wavefield_jax.workdir import read_metrics

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "benchmarks" / "runs" / "quality"
CONFIGS = {
  "default": {
    "wave": "configs/default.py",
    "transformer": "configs/transformer.py",
    "hybrid": "configs/hybrid.py",
    "hybrid_local": "configs/hybrid_local.py",
  },
  "small": {
    kind: f"configs/small.py:{kind}"
    for kind in ("wave", "transformer", "hybrid", "hybrid_local", "selective", "retention", "selective_retention")
    + ("selective_local", "retention_local")
  },
}
# A model name is a config kind, the local window after `hybrid_local`, then overrides, each a suffix and
# a value: wave, hybrid_local32, wave_h16, hybrid_local64_h16, wave_wlr3e-2, wave_ml4096.
OVERRIDE = re.compile(r"_([a-z]+)([0-9.e-]+)")
MODEL_NAME = re.compile(
  r"(?P<kind>wave|transformer|hybrid_local(?=\d)|hybrid|selective_retention|selective_local(?=\d)|selective"
  r"|retention_local(?=\d)|retention)"
  rf"(?P<window>\d+)?(?P<overrides>(?:{OVERRIDE.pattern})*)"
)
OVERRIDES = {"h": ("model.num_heads", int), "wlr": ("train.wave_learning_rate", float), "ml": ("model.max_len", int)}
SIZE_NOTES = {"default": "D=128, 4 layers, 0.96M parameters", "small": "D=64, 2 layers"}


def run_dir(size: str, model: str, seed: int, steps: int) -> Path:
  """One workdir per size and run length: the learning-rate schedule depends on the steps, so runs of
  another length must not resume from each other."""
  return RUNS / size / f"{steps}_steps" / f"{model}_s{seed}"


def config_flags(size: str, model: str) -> list[str]:
  """The train.py flags that build `model` at `size`: its config file and overrides."""
  match = MODEL_NAME.fullmatch(model)
  if match is None or match["kind"].endswith("_local") != (match["window"] is not None):
    raise ValueError(
      f"unknown model {model!r}: wave, transformer, hybrid, selective, retention, selective_retention or"
      " hybrid_local<W>, selective_local<W>, retention_local<W>, then optional _h<H>, _wlr<R>, _ml<N>"
    )
  if match["kind"] not in CONFIGS[size]:
    raise ValueError(f"model {model!r}: the {size} size has no {match['kind']} config; it has {sorted(CONFIGS[size])}")
  flags = [f"--config={CONFIGS[size][match['kind']]}"]
  if match["window"]:
    flags.append(f"--config.model.window={match['window']}")
  for suffix, value in OVERRIDE.findall(match["overrides"]):
    if suffix not in OVERRIDES:
      raise ValueError(f"model {model!r}: unknown override _{suffix}; the overrides are {sorted(OVERRIDES)}")
    key, kind = OVERRIDES[suffix]
    try:
      kind(value)
    except ValueError:
      raise ValueError(f"model {model!r}: _{suffix} takes {kind.__name__} ({key}); got {value!r}") from None
    flags.append(f"--config.{key}={value}")
  return flags


def train(size: str, model: str, seed: int, steps: int) -> float:
  """Trains (or finishes) one run; returns the wall-clock seconds this call spent."""
  workdir = run_dir(size, model, seed, steps)
  command = [
    sys.executable,
    "train.py",
    *config_flags(size, model),
    f"--workdir={workdir}",
    f"--config.seed={seed}",
    f"--config.train.steps={steps}",
    "--config.train.eval_every=250",
    "--config.train.eval_windows=256",
    "--config.train.checkpoint_every=250",
    "--config.train.sample_tokens=200",
  ]
  start = time.perf_counter()
  subprocess.run(command, check=True, cwd=REPO)
  return time.perf_counter() - start


def model_config_of(size: str, model: str):
  """The config `model` names at `size`, parsed from the very train.py flags a run gets."""
  from absl import flags
  from ml_collections import config_flags as ml_config_flags

  argv = ["train.py", *config_flags(size, model)]
  flag_values = flags.FlagValues()
  # sys_argv: the override flags (--config.model.num_heads=...) are found in the arguments given here.
  ml_config_flags.DEFINE_config_file("config", flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def parameter_count(size: str, model: str) -> int:
  """Parameters of the model `model` names, from its shapes alone (nothing allocated)."""
  from flax import nnx

  from wavefield_jax.model import WaveFieldLM, count_params

  config = model_config_of(size, model).model
  return count_params(nnx.eval_shape(lambda: WaveFieldLM(config, rngs=nnx.Rngs(0))))["total"]


def score(size: str, model: str, seed: int, steps: int) -> dict:
  """Full validation and test splits of the shipped corpus, with the run's final checkpoint, and the
  physical constants its wave layers learned (one row per layer and head; none for a Transformer)."""
  import jax.numpy as jnp
  from flax import nnx

  from wavefield_jax import analysis, input_pipeline, sources, tokenizers
  from wavefield_jax.checkpointing import load_trained
  from wavefield_jax.train_lib import evaluate, make_eval_step

  graphdef, params, config, step = load_trained(run_dir(size, model, seed, steps))
  corpus = input_pipeline.tokenize(
    sources.shakespeare_documents(), tokenizers.get_tokenizer(config.data.tokenizer), config.data.seq_len
  )
  eval_step = make_eval_step(graphdef)
  token_bytes = jnp.asarray(corpus.tokenizer.token_bytes)
  wave = "wave" in config.model.mixers
  result = {"step": step, "constants": analysis.constants_table(nnx.merge(graphdef, params)) if wave else []}
  for split in ("validation", "test"):
    windows, weights = input_pipeline.eval_windows(corpus.tokens[split], config.data.seq_len)
    result[split] = evaluate(eval_step, params, windows, weights, token_bytes, batch_size=16)["bpb"]
  return result


def curves(size: str, model: str, seed: int, steps: int) -> list[tuple[int, float]]:
  rows = read_metrics(run_dir(size, model, seed, steps) / "metrics.jsonl")
  return [(r["step"], r["bpb"]) for r in rows if r["kind"] == "eval"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", choices=sorted(CONFIGS), default="default")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--models", default="wave,transformer,hybrid")
  parser.add_argument("--tag", default="", help="results go to quality_<size>_<steps>[_<tag>].*")
  parser.add_argument(
    "--reuse",
    default="",
    help="comma-separated results files (same size and steps) whose runs are taken as scored, not trained again",
  )
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  models = args.models.split(",")
  reused = reused_runs(args.reuse.split(",") if args.reuse else [], args.size, args.steps)
  timing_path = RUNS / args.size / f"{args.steps}_steps" / "wall_clock.json"
  timing_path.parent.mkdir(parents=True, exist_ok=True)
  for model in models:  # every name checked before hours of training
    config_flags(args.size, model)
  for seed in seeds:
    for model in models:
      if f"{model}_s{seed}" in reused:
        continue
      seconds = train(args.size, model, seed, args.steps)
      # Read just before writing: one process per seed may share the file.
      wall = json.loads(timing_path.read_text()) if timing_path.exists() else {}
      wall[f"{model}_s{seed}"] = wall.get(f"{model}_s{seed}", 0.0) + seconds
      timing_path.write_text(json.dumps(wall, indent=1))
  wall = json.loads(timing_path.read_text()) if timing_path.exists() else {}
  results = {
    f"{m}_s{s}": reused.get(f"{m}_s{s}")
    or score(args.size, m, s, args.steps) | {"wall_s": wall[f"{m}_s{s}"], "curve": curves(args.size, m, s, args.steps)}
    for m in models
    for s in seeds
  }
  write(results, models, seeds, args.steps, args.size, args.tag)


def reused_runs(paths: list[str], size: str, steps: int) -> dict:
  """The runs recorded in earlier results files (e.g. the baselines of a study whose workdirs are gone)."""
  runs = {}
  for path in paths:
    payload = json.loads(Path(path).read_text())
    if (payload["size"], payload["steps"]) != (size, steps):
      raise ValueError(f"{path} holds {payload['size']} runs of {payload['steps']} steps, not {size} of {steps}")
    runs |= payload["runs"]
  return runs


def write(results: dict, models: list[str], seeds: list[int], steps: int, size: str, tag: str) -> None:
  plt = plots.pyplot()

  rows = []
  for model in models:
    runs = [results[f"{model}_s{s}"] for s in seeds]
    cells = [model]
    for split in ("validation", "test"):
      values = [r[split] for r in runs]
      cells.append(f"{statistics.mean(values):.4f} ({min(values):.4f}–{max(values):.4f})")
    for split in ("validation", "test"):
      ratios = [results[f"{model}_s{s}"][split] / results[f"transformer_s{s}"][split] for s in seeds]
      cells.append(f"{statistics.mean(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})")
    cells.append(f"{parameter_count(size, model):,}")
    cells.append(f"{statistics.mean(r['wall_s'] for r in runs) / 60:.1f}")
    rows.append(cells)
  # The plateau check: how much the Transformer's validation BPB still fell over the last quarter.
  plateau = []
  for seed in seeds:
    curve = dict(results[f"transformer_s{seed}"]["curve"])
    quarter = max(s for s in curve if s <= 0.75 * steps)
    plateau.append(1 - curve[steps] / curve[quarter])
  table = common.markdown_table(
    rows,
    [
      "model",
      "validation BPB mean (range)",
      "test BPB mean (range)",
      "val / transformer (range)",
      "test / transformer (range)",
      "parameters",
      "wall min / run",
    ],
  )
  table += (
    f"\n\n{SIZE_NOTES[size]}; {steps} steps x 8 x 256 bytes, seeds {seeds}; "
    "ratios per seed against the Transformer of the same seed. "
    f"Transformer validation BPB fell {100 * max(plateau):.1f}% (worst seed) over the last quarter of training."
  )
  payload = {
    "machine": common.machine(),
    "size": size,
    "steps": steps,
    "seeds": seeds,
    "runs": results,
    "plateau_drop": plateau,
  }
  name = f"quality_{size}_{steps}" + (f"_{tag}" if tag else "")
  common.write_results(name, payload, table)
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for colour, model in enumerate(models):
    for i, seed in enumerate(seeds):
      xs, ys = zip(*results[f"{model}_s{seed}"]["curve"], strict=True)
      ax.plot(xs, ys, "o-", color=f"C{colour}", alpha=0.8, label=model if i == 0 else None, markersize=3)
  ax.set_xlabel("step")
  ax.set_ylabel("validation bits per byte")
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title(f"{SIZE_NOTES[size]}, {steps} steps")
  plots.save(fig, common.RESULTS / f"{name}.png", dpi=120)


if __name__ == "__main__":
  main()
