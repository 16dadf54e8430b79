"""Exact recall: multi-query associative recall (MQAR) and induction copying, wave vs Transformer vs hybrids.

  mqar:L:P[:V]   P key-value pairs (keys 1..V/2-1, values V/2..V-1; V = 256 unless given) open a sequence
                 of L tokens; later each key is asked once at a random position and the next token must be
                 its value. mqar:64:4 is the Zoology smoke setting.
  induction:L    a random sequence of L/2 tokens, then the same sequence again: the second half is copied.
  ...@N          trains that case for N steps instead of --steps (e.g. mqar:32:2:16@2000).

Each model (2 layers, D=64, 4 heads: wave-wave, attention-attention, wave-attention, wave-local with a
window of 64) is trained on fresh random sequences with the loss on the answers only, then scored on 512
unseen sequences: accuracy is the fraction of answers whose argmax is right. Same steps, batch and
learning rate for every model.

  python -m benchmarks.recall [--cases mqar:32:2:16@2000,induction:64,induction:256] [--steps 800]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks import common

MODULE = "benchmarks.recall"
CASE_KEYS = ("task", "length", "pairs", "vocab", "model", "steps", "tokens_per_step")
MIXERS = {
  "wave": ("wave", "wave"),
  "transformer": ("attention", "attention"),
  "hybrid": ("wave", "attention"),
  "hybrid_local": ("wave", "local"),
}
WINDOW = 64


def mqar(
  rng: np.random.Generator, batch: int, length: int, pairs: int, vocab: int = 256
) -> tuple[np.ndarray, np.ndarray]:
  """Windows [B, L + 1] and answer weights [B, L]."""
  if (length + 1 - 2 * pairs) // 2 < pairs:
    raise ValueError(f"mqar with {pairs} pairs needs L >= {4 * pairs}; got {length}")
  if not (pairs < vocab // 2 and vocab <= 256):  # the byte model's 256 tokens
    raise ValueError(f"mqar with {pairs} pairs needs a vocabulary of {2 * pairs + 2} to 256; got {vocab}")
  tokens = np.zeros((batch, length + 1), np.int32)
  weights = np.zeros((batch, length), np.float32)
  for row in range(batch):
    keys = rng.choice(np.arange(1, vocab // 2), pairs, replace=False)
    values = rng.integers(vocab // 2, vocab, pairs)
    tokens[row, 0 : 2 * pairs : 2], tokens[row, 1 : 2 * pairs : 2] = keys, values
    # Query slots: even offsets after the pairs, so a query and its answer never overlap another.
    slots = 2 * pairs + 2 * rng.choice((length + 1 - 2 * pairs) // 2, pairs, replace=False)
    tokens[row, slots], tokens[row, slots + 1] = keys, values
    weights[row, slots] = 1.0  # the target after position `slot` is the value
  return tokens, weights


def induction(
  rng: np.random.Generator, batch: int, length: int, pairs: int = 0, vocab: int = 256
) -> tuple[np.ndarray, np.ndarray]:
  del pairs  # every position of the second copy is a query
  half = length // 2 + 1  # two copies cover the L + 1 tokens of a window
  first = rng.integers(1, vocab, (batch, half))
  tokens = np.concatenate([first, first], axis=1)[:, : length + 1].astype(np.int32)
  weights = np.zeros((batch, length), np.float32)
  weights[:, half:] = 1.0  # targets from the second copy's second token on: each is determined
  return tokens, weights


TASKS = {"mqar": mqar, "induction": induction}


def parse_case(spec: str, steps: int) -> dict:
  """ "mqar:64:4" -> {"task": "mqar", "length": 64, "pairs": 4, "vocab": 256, "steps": steps};
  "mqar:64:4:64@2000" -> vocab 64, 2000 steps; "induction:256" -> pairs 0, vocab 256."""
  body, _, own_steps = spec.partition("@")
  task, *numbers = body.split(":")
  if task not in TASKS or len(numbers) not in ((2, 3) if task == "mqar" else (1,)):
    raise ValueError(f"a case is mqar:<L>:<pairs>[:<vocab>] or induction:<L>, then optional @<steps>; got {spec!r}")
  numbers = [int(n) for n in numbers]
  return {
    "task": task,
    "length": numbers[0],
    "pairs": numbers[1] if task == "mqar" else 0,
    "vocab": numbers[2] if len(numbers) == 3 else 256,
    "steps": int(own_steps) if own_steps else steps,
  }


def measure(case: dict) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from wavefield_jax.config import base_config
  from wavefield_jax.train_lib import init_state, make_train_step

  config = base_config()
  config.model.update(dict(dim=64, num_layers=2, num_heads=4, mlp_dim=128, max_len=case["length"]))
  config.model.mixers = MIXERS[case["model"]]
  config.model.window = WINDOW
  config.train.update(dict(steps=case["steps"], warmup_steps=100, learning_rate=3e-3, wave_learning_rate=3e-3))
  graphdef, state, optimizer = init_state(config, seed=0)
  step = make_train_step(graphdef, optimizer, skip_nonfinite=False)
  task = TASKS[case["task"]]
  batch_size = max(1, case["tokens_per_step"] // case["length"])
  rng = np.random.default_rng(1)
  for _ in range(case["steps"]):
    tokens, weights = task(rng, batch_size, case["length"], case["pairs"], case["vocab"])
    state, metrics = step(state, jnp.asarray(tokens), jnp.asarray(weights))
  loss = float(metrics["loss"])

  @jax.jit
  def correct(params, tokens, weights):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    return ((jnp.argmax(logits, -1) == tokens[:, 1:]) * weights).sum(), weights.sum()

  test_rng = np.random.default_rng(12345)
  hits = total = 0.0
  for _ in range(512 // batch_size + (512 % batch_size > 0)):
    tokens, weights = task(test_rng, batch_size, case["length"], case["pairs"], case["vocab"])
    h, t = correct(state["params"], jnp.asarray(tokens), jnp.asarray(weights))
    hits, total = hits + float(h), total + float(t)
  return {"accuracy": hits / total, "final_train_loss": loss}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default="mqar:32:2:16@2000,mqar:64:4:16@2000,induction:64,induction:256")
  parser.add_argument("--models", default=",".join(MIXERS))
  parser.add_argument("--steps", type=int, default=800, help="training steps of a case without its own @<steps>")
  parser.add_argument("--tokens-per-step", type=int, default=4096)
  args = parser.parse_args()
  specs = [parse_case(spec, args.steps) for spec in args.cases.split(",")]
  models = args.models.split(",")
  # Cases already measured with the same budget are kept from the last results: a run cut short (or one
  # case that failed) is finished by starting the script again.
  path = common.RESULTS / "recall.json"
  previous = json.loads(path.read_text())["rows"] if path.exists() else []
  done = {key(r): r for r in previous if "accuracy" in r and all(k in r for k in CASE_KEYS)}
  cases = [spec | {"model": model, "tokens_per_step": args.tokens_per_step} for spec in specs for model in models]
  rows = [done[key(case)] for case in cases if key(case) in done]
  for case in cases:
    if key(case) in done:
      continue
    rows.append(common.run_case(MODULE, case, timeout=3600))
    print(rows[-1], flush=True)
    write(rows, specs, models, args.tokens_per_step)
  write(rows, specs, models, args.tokens_per_step)


def key(case: dict) -> str:
  return json.dumps({k: case[k] for k in CASE_KEYS})


def write(rows: list[dict], specs: list[dict], models: list[str], tokens_per_step: int) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  by = {key(r): r for r in rows}
  names = [
    f"{s['task']} L={s['length']}"
    + (f", {s['pairs']} pairs" if s["pairs"] else "")
    + (f", vocabulary {s['vocab']}" if s["vocab"] != 256 else "")
    for s in specs
  ]

  def accuracy(spec: dict, model: str) -> float:
    row = by.get(key(spec | {"model": model, "tokens_per_step": tokens_per_step}), {})
    return 100 * row.get("accuracy", float("nan"))

  table_rows = [
    [name, f"{spec['steps']:,}", *(f"{accuracy(spec, m):.1f}%" for m in models)]
    for name, spec in zip(names, specs, strict=True)
  ]
  table = common.markdown_table(["case", "steps", *(f"{m} accuracy" for m in models)], table_rows)
  table += (
    f"\n\n2 layers, D=64, steps of {tokens_per_step:,} tokens, loss on answers only; 512 unseen sequences; "
    f"hybrid_local: wave then sliding-window attention of {WINDOW} positions."
  )
  common.write_results("recall", {"machine": common.machine(), "tokens_per_step": tokens_per_step, "rows": rows}, table)
  fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(specs)), 3.8))
  width = 0.8 / len(models)
  for i, model in enumerate(models):
    values = [np.nan_to_num(accuracy(spec, model)) for spec in specs]
    ax.bar(np.arange(len(specs)) + i * width, values, width, color=f"C{i}", label=model)
  ax.set_xticks(np.arange(len(specs)) + width * (len(models) - 1) / 2, names, fontsize=8)
  ax.set_ylabel("answer accuracy (%)")
  ax.set_ylim(0, 100)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(common.RESULTS / "recall.png", dpi=120)


if __name__ == "__main__":
  if not common.case_main(measure):
    main()
