"""Exact recall: multi-query associative recall (MQAR) and induction copying, wave vs Transformer vs hybrid.

  mqar       16 key-value pairs (keys 1..127, values 128..255) open the sequence; later each key is asked
             once at a random position and the next token must be its value.
  induction  a random sequence of L/2 tokens, then the same sequence again: the second half must be copied.

Each model (2 layers, D=64, 4 heads: wave-wave, attention-attention, wave-attention) is trained on fresh
random sequences with the loss on the answers only, then scored on 512 unseen sequences: accuracy is
the fraction of answers whose argmax is right. Same steps, batch and learning rate for every model.

  python -m benchmarks.recall [--lengths 256,1024] [--steps 800] [--tokens-per-step 4096]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks import common

MODULE = "benchmarks.recall"
CASE_KEYS = ("task", "length", "model", "steps", "tokens_per_step")
MIXERS = {"wave": ("wave", "wave"), "transformer": ("attention", "attention"), "hybrid": ("wave", "attention")}
PAIRS = 16


def mqar(rng: np.random.Generator, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Windows [B, L + 1] and answer weights [B, L]."""
  tokens = np.zeros((batch, length + 1), np.int32)
  weights = np.zeros((batch, length), np.float32)
  for row in range(batch):
    keys = rng.choice(np.arange(1, 128), PAIRS, replace=False)
    values = rng.integers(128, 256, PAIRS)
    tokens[row, 0 : 2 * PAIRS : 2], tokens[row, 1 : 2 * PAIRS : 2] = keys, values
    # Query slots: even offsets after the pairs, so a query and its answer never overlap another.
    slots = 2 * PAIRS + 2 * rng.choice((length + 1 - 2 * PAIRS) // 2, PAIRS, replace=False)
    tokens[row, slots], tokens[row, slots + 1] = keys, values
    weights[row, slots] = 1.0  # the target after position `slot` is the value
  return tokens, weights


def induction(rng: np.random.Generator, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
  half = length // 2 + 1  # two copies cover the L + 1 tokens of a window
  first = rng.integers(1, 256, (batch, half))
  tokens = np.concatenate([first, first], axis=1)[:, : length + 1].astype(np.int32)
  weights = np.zeros((batch, length), np.float32)
  weights[:, half:] = 1.0  # targets from the second copy's second token on: each is determined
  return tokens, weights


TASKS = {"mqar": mqar, "induction": induction}


def measure(case: dict) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from wavefield_jax.config import base_config
  from wavefield_jax.train_lib import init_state, make_train_step

  config = base_config()
  config.model.update(dict(dim=64, num_layers=2, num_heads=4, mlp_dim=128, max_len=case["length"]))
  config.model.mixers = MIXERS[case["model"]]
  config.train.update(dict(steps=case["steps"], warmup_steps=100, learning_rate=3e-3, wave_learning_rate=3e-3))
  graphdef, state, optimizer = init_state(config, seed=0)
  step = make_train_step(graphdef, optimizer, skip_nonfinite=False)
  task = TASKS[case["task"]]
  batch_size = max(1, case["tokens_per_step"] // case["length"])
  rng = np.random.default_rng(1)
  for _ in range(case["steps"]):
    tokens, weights = task(rng, batch_size, case["length"])
    state, metrics = step(state, jnp.asarray(tokens), jnp.asarray(weights))
  loss = float(metrics["loss"])

  @jax.jit
  def correct(params, tokens, weights):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    return ((jnp.argmax(logits, -1) == tokens[:, 1:]) * weights).sum(), weights.sum()

  test_rng = np.random.default_rng(12345)
  hits = total = 0.0
  for _ in range(512 // batch_size + (512 % batch_size > 0)):
    tokens, weights = task(test_rng, batch_size, case["length"])
    h, t = correct(state["params"], jnp.asarray(tokens), jnp.asarray(weights))
    hits, total = hits + float(h), total + float(t)
  return {"accuracy": hits / total, "final_train_loss": loss}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lengths", default="256,1024")
  parser.add_argument("--steps", type=int, default=800)
  parser.add_argument("--tokens-per-step", type=int, default=4096)
  parser.add_argument("--tasks", default="mqar,induction")
  args = parser.parse_args()
  lengths = [int(v) for v in args.lengths.split(",")]
  tasks = args.tasks.split(",")
  # Cases already measured with the same budget are kept from the last results: a run cut short (or one
  # case that failed) is finished by starting the script again.
  previous = (
    json.loads((common.RESULTS / "recall.json").read_text())["rows"]
    if (common.RESULTS / "recall.json").exists()
    else []
  )
  done = {json.dumps({k: r[k] for k in CASE_KEYS}): r for r in previous if "error" not in r and "accuracy" in r}
  rows = []
  for task in tasks:
    for length in lengths:
      for model in MIXERS:
        case = {"task": task, "length": length, "model": model, "steps": args.steps}
        case["tokens_per_step"] = args.tokens_per_step
        result = done.get(json.dumps(case)) or common.run_case(MODULE, case, timeout=3600)
        print(result, flush=True)
        rows.append(result)
        kept = [r for r in done.values() if r not in rows]  # measured before, not reached yet this time
        write(rows + kept, tasks, lengths, args.steps, args.tokens_per_step)


def write(rows: list[dict], tasks: list[str], lengths: list[int], steps: int, tokens_per_step: int) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  by = {(r["task"], r["length"], r["model"]): r for r in rows}
  table_rows = [
    [
      task,
      f"{length:,}",
      *(f"{100 * by.get((task, length, m), {}).get('accuracy', float('nan')):.1f}%" for m in MIXERS),
    ]
    for task in tasks
    for length in lengths
  ]
  table = common.markdown_table(["task", "L", *(f"{m} accuracy" for m in MIXERS)], table_rows)
  table += (
    f"\n\n2 layers, D=64, {steps} steps of {tokens_per_step:,} tokens, loss on answers only; 512 unseen sequences."
  )
  common.write_results(
    "recall", {"machine": common.machine(), "steps": steps, "tokens_per_step": tokens_per_step, "rows": rows}, table
  )
  fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
  width = 0.8 / len(MIXERS)
  for ax, task in zip(axes[0], tasks, strict=True):
    for i, (model, colour) in enumerate(zip(MIXERS, ("tab:blue", "tab:red", "tab:purple"), strict=True)):
      values = [100 * by.get((task, n, model), {}).get("accuracy", 0.0) for n in lengths]
      ax.bar(np.arange(len(lengths)) + i * width, values, width, color=colour, label=model)
    ax.set_xticks(np.arange(len(lengths)) + width, [f"L={n}" for n in lengths])
    ax.set_ylabel("answer accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(task)
    ax.legend()
  fig.tight_layout()
  fig.savefig(common.RESULTS / "recall.png", dpi=120)


if __name__ == "__main__":
  if not common.case_main(measure):
    main()
