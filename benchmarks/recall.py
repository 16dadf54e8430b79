"""Exact recall: multi-query associative recall (MQAR) and induction copying, wave vs Transformer vs hybrids.

  mqar:L:P[:V]   P key-value pairs (keys 1..V/2-1, values V/2..V-1; V = 256 unless given) open a sequence
                 of L tokens; later each key is asked once at a random position and the next token must be
                 its value. mqar:64:4 is the Zoology smoke setting.
  induction:L    a random sequence of L/2 tokens, then the same sequence again: the second half is copied.
  copy:L:N[:V]   selective copying (the Mamba paper's task): N data tokens (1..V-2) scattered among blanks (0)
                 over the first L - N positions, then a marker (V-1), then the N tokens again in order, each
                 predicted from the ones before it. copy:256:16:16 is the paper's setting.
  ...@N          trains that case for N steps instead of --steps (e.g. mqar:32:2:16@2000).

Each model (2 layers, D=64, 4 heads; the names say the mixers, bottom first: wave-wave, attention-attention,
wave-attention, wave-local with a window of 64, and the selective and retention forms alone and under the
window; a suffix _h<H> gives each mixer H heads instead of 4: retention_h1, selective_h16) is trained on
fresh random sequences with the loss on the answers only, then scored on 512 unseen sequences: accuracy
is the fraction of answers whose argmax is right. Same steps and batch for every model; each model at the
best of the learning rates given (recurrent models solve recall in a narrow window of rates).

  python -m benchmarks.recall [--cases mqar:32:2:16@2000,induction:64,copy:256:16:16] [--steps 800]
                              [--models wave,selective] [--learning-rates 1e-3,3e-3]
"""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np

from benchmarks import common
from wavefield_jax import plots
from wavefield_jax.analysis import markdown_table
from wavefield_jax.config import TWO_LAYER_MIXERS

MODULE = "benchmarks.recall"
CASE_KEYS = ("task", "length", "pairs", "vocab", "model", "steps", "tokens_per_step", "learning_rate")
MIXERS = TWO_LAYER_MIXERS
DEFAULT_MODELS = "transformer,wave,hybrid,hybrid_local"
# Rows measured before the sweep existed all trained at this rate.
FIRST_LEARNING_RATE = 3e-3
WINDOW = 64
DIM = 64
HEADS = 4
MODEL_NAME = re.compile(r"(?P<mixers>[a-z_]+?)(?:_h(?P<heads>\d+))?")


def model_shape(model: str) -> tuple[tuple[str, str], int]:
  """ "retention_h1" -> (("retention", "retention"), 1): the two mixers and the heads per mixer."""
  match = MODEL_NAME.fullmatch(model)
  if match is None or match["mixers"] not in MIXERS or (match["heads"] and DIM % int(match["heads"])):
    raise ValueError(f"unknown model {model!r}; choose from {','.join(MIXERS)}, each with an optional _h<H>, H | {DIM}")
  return MIXERS[match["mixers"]], int(match["heads"] or HEADS)


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


def selective_copy(
  rng: np.random.Generator, batch: int, length: int, pairs: int, vocab: int = 16
) -> tuple[np.ndarray, np.ndarray]:
  """`pairs` is N, the tokens to copy; windows [B, L + 1] and answer weights [B, L]."""
  context = length + 1 - (pairs + 1)  # positions before the marker
  if context < pairs or vocab < 4:
    raise ValueError(f"copy of {pairs} tokens needs L >= {2 * pairs} and a vocabulary >= 4; got L={length}, V={vocab}")
  tokens = np.zeros((batch, length + 1), np.int32)
  weights = np.zeros((batch, length), np.float32)
  for row in range(batch):
    data = rng.integers(1, vocab - 1, pairs)
    tokens[row, np.sort(rng.choice(context, pairs, replace=False))] = data
    tokens[row, context] = vocab - 1  # the marker: copy now
    tokens[row, context + 1 :] = data
  weights[:, context : context + pairs] = 1.0  # from the marker on, each position predicts the next data token
  return tokens, weights


TASKS = {"mqar": mqar, "induction": induction, "copy": selective_copy}


def parse_case(spec: str, steps: int) -> dict:
  """ "mqar:64:4" -> {"task": "mqar", "length": 64, "pairs": 4, "vocab": 256, "steps": steps};
  "mqar:64:4:64@2000" -> vocab 64, 2000 steps; "induction:256" -> pairs 0, vocab 256."""
  body, _, own_steps = spec.partition("@")
  task, *numbers = body.split(":")
  if task not in TASKS or len(numbers) not in ((1,) if task == "induction" else (2, 3)):
    raise ValueError(
      f"a case is mqar:<L>:<pairs>[:<vocab>], copy:<L>:<tokens>[:<vocab>] or induction:<L>, then optional @<steps>;"
      f" got {spec!r}"
    )
  numbers = [int(n) for n in numbers]
  return {
    "task": task,
    "length": numbers[0],
    "pairs": numbers[1] if task != "induction" else 0,
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
  mixers, heads = model_shape(case["model"])
  config.model.update(dict(dim=DIM, num_layers=2, num_heads=heads, mlp_dim=128, max_len=case["length"]))
  config.model.mixers = mixers
  config.model.window = WINDOW
  rate = case["learning_rate"]
  config.train.update(dict(steps=case["steps"], warmup_steps=100, learning_rate=rate, wave_learning_rate=rate))
  graphdef, state, optimizer = init_state(config, seed=0)
  step = make_train_step(graphdef, optimizer, skip_nonfinite=False)
  task = TASKS[case["task"]]
  batch_size = max(1, case["tokens_per_step"] // case["length"])
  rng = np.random.default_rng(1)
  started = time.perf_counter()
  for _ in range(case["steps"]):
    tokens, weights = task(rng, batch_size, case["length"], case["pairs"], case["vocab"])
    state, metrics = step(state, jnp.asarray(tokens), jnp.asarray(weights))
  loss = float(metrics["loss"])
  train_seconds = time.perf_counter() - started

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
  return {"accuracy": hits / total, "final_train_loss": loss, "train_seconds": train_seconds}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default="mqar:32:2:16@2000,mqar:64:4:16@2000,induction:64,induction:256")
  parser.add_argument("--models", default=DEFAULT_MODELS, help=f"any of {','.join(MIXERS)}, with an optional _h<H>")
  parser.add_argument("--learning-rates", default=str(FIRST_LEARNING_RATE), help="each model's best of these counts")
  parser.add_argument("--steps", type=int, default=800, help="training steps of a case without its own @<steps>")
  parser.add_argument("--tokens-per-step", type=int, default=4096)
  args = parser.parse_args()
  specs = [parse_case(spec, args.steps) for spec in args.cases.split(",")]
  models = args.models.split(",")
  for model in models:
    try:
      model_shape(model)
    except ValueError as error:
      parser.error(str(error))
  rates = [float(r) for r in args.learning_rates.split(",")]
  # Cases already measured with the same budget are kept from the last results: a run cut short (or one
  # case that failed) is finished by starting the script again.
  path = common.RESULTS / "recall.json"
  previous = json.loads(path.read_text())["rows"] if path.exists() else []
  previous = [{"learning_rate": FIRST_LEARNING_RATE} | r for r in previous]
  done = {key(r): r for r in previous if "accuracy" in r and all(k in r for k in CASE_KEYS)}
  cases = [
    spec | {"model": model, "tokens_per_step": args.tokens_per_step, "learning_rate": rate}
    for spec in specs
    for model in models
    for rate in rates
  ]
  # Every row measured so far is kept, so that runs with other cases or models add to one table.
  rows = list(done.values())
  for case in cases:
    if key(case) in done:
      continue
    rows.append(common.run_case(MODULE, case, timeout=3600))
    done[key(case)] = rows[-1]
    print(rows[-1], flush=True)
    write(rows, args.tokens_per_step)
  write(rows, args.tokens_per_step)


def key(case: dict) -> str:
  return json.dumps({k: case[k] for k in CASE_KEYS})


SPEC_KEYS = ("task", "length", "pairs", "vocab", "steps")


def case_name(spec: dict) -> str:
  what = {"mqar": "pairs", "copy": "tokens to copy"}.get(spec["task"])
  return (
    f"{spec['task']} L={spec['length']}"
    + (f", {spec['pairs']} {what}" if what else "")
    + (f", vocabulary {spec['vocab']}" if spec["vocab"] != 256 else "")
  )


def best_rows(rows: list[dict], tokens_per_step: int) -> dict[tuple, dict]:
  """(case, model) -> the row of the learning rate that scored best."""
  best = {}
  for row in rows:
    if row.get("tokens_per_step") != tokens_per_step or "accuracy" not in row:
      continue
    slot = (tuple(row[k] for k in SPEC_KEYS), row["model"])
    if slot not in best or row["accuracy"] > best[slot]["accuracy"]:
      best[slot] = row
  return best


def write(rows: list[dict], tokens_per_step: int) -> None:
  plt = plots.pyplot()

  best = best_rows(rows, tokens_per_step)
  specs = list(dict.fromkeys(spec for spec, _ in best))
  # Columns in the table's order of mixers, each name's head counts together.
  models = sorted(
    {model for _, model in best}, key=lambda m: (list(MIXERS).index(MODEL_NAME.fullmatch(m)["mixers"]), m)
  )
  names = [case_name(dict(zip(SPEC_KEYS, spec, strict=True))) for spec in specs]

  def cell(spec: tuple, model: str) -> str:
    row = best.get((spec, model))
    return f"{100 * row['accuracy']:.1f}% ({row['learning_rate']:g})" if row else "-"

  table_rows = [
    [name, f"{spec[-1]:,}", *(cell(spec, m) for m in models)] for name, spec in zip(names, specs, strict=True)
  ]
  table = markdown_table(table_rows, ["case", "steps", *models])
  table += (
    f"\n\nAnswer accuracy at the best learning rate tried (in brackets). 2 layers, D=64, steps of "
    f"{tokens_per_step:,} tokens, loss on answers only; 512 unseen sequences; *_local: the named mixer, then "
    f"sliding-window attention of {WINDOW} positions; selective_retention: selective, then retention; "
    f"_h<H>: H heads per mixer ({HEADS} otherwise)."
  )
  common.write_results("recall", {"machine": common.machine(), "tokens_per_step": tokens_per_step, "rows": rows}, table)
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(specs) * max(1, len(models) / 4)), 3.8))
  width = 0.8 / len(models)
  for i, model in enumerate(models):
    values = [100 * best[(spec, model)]["accuracy"] if (spec, model) in best else 0.0 for spec in specs]
    ax.bar(np.arange(len(specs)) + i * width, values, width, color=f"C{i}", label=model)
  ax.set_xticks(np.arange(len(specs)) + width * (len(models) - 1) / 2, names, fontsize=7)
  ax.set_ylabel("answer accuracy (%)")
  ax.set_ylim(0, 100)
  ax.legend(fontsize=7, ncol=2)
  plots.save(fig, common.RESULTS / "recall.png", dpi=120)


if __name__ == "__main__":
  if not common.case_main(measure):
    main()
