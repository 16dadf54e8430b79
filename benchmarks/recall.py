"""Exact recall: the literature's tasks (Mamba's induction heads, Zoology's MQAR) and the project's own.

  induction_heads:L   Mamba's induction heads (Gu & Dao 2023): vocabulary 16, a special token appears once,
                      then again at the end, where the token that followed it must be named. Trained at L and
                      scored at every length of --eval-lengths (Mamba: 2^6 to 2^20).
  zoology:L:P         Zoology's MQAR (Arora et al. 2023): vocabulary 8,192, P key-value pairs, each key asked
                      once at a power-law offset, random tokens between. Its grid: (64, 4), (128, 8), (256, 16).
  mqar:L:P[:V]        the project's MQAR: P key-value pairs (keys 1..V/2-1, values V/2..V-1; V = 256 unless
                      given), each key asked once at a uniform even offset, zeros between.
  copy_sequence:L     a random sequence of L/2 tokens, then the same sequence again: the second half is copied.
                      A bounded state cannot hold L/2 arbitrary tokens, so this one is attention's by design.
  copy:L:N[:V]        selective copying (the Mamba paper's task): N data tokens (1..V-2) scattered among blanks
                      (0) over the first L - N positions, then a marker (V-1), then the N tokens again in order.
  ...@N               trains that case for N steps instead of --steps (e.g. induction_heads:256@15000).

--warmup 64:2000,128:2000 trains each case first at those shorter lengths for those steps (as many tokens a
step), then at its own length: a length curriculum, named in the table's budget column.

Each model (2 layers, D=64, 4 heads; the names say the mixers, bottom first: wave-wave, attention-attention,
wave-attention, wave-local with a window of 64, and the selective and retention forms alone and under the
window; a suffix _tied starts each wave head's speed at its damping (`model.speed_init`), _d<D> sets the
width, _h<H> the heads per mixer: selective_tied, retention_d128, selective_h16) is trained on fresh
random sequences with the loss on the answers only, then scored on unseen sequences: accuracy is the
fraction of answers whose argmax is right. Scoring runs chunk by chunk through the decode cache
(`prefill`), so a wave-family model reads 2^20 tokens in memory flat in the length; full attention past
ATTENTION_MAX_LEN is "out of memory" (its L x L scores per head pass 4 GiB). Each row also holds the state the
model keeps per sequence for decoding (floats, all layers; attention's grows with the length).

  python -m benchmarks.recall [--cases induction_heads:256@15000] [--eval-lengths 256,4096,65536,1048576]
                              [--models wave,selective] [--learning-rates 1e-3,3e-3] [--tokens-per-step 2048]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import re
import time

import numpy as np
from tqdm import tqdm

from benchmarks import common
from wavefield_jax import plots
from wavefield_jax.config import TWO_LAYER_MIXERS

MODULE = "benchmarks.recall"
CASE_KEYS = ("task", "length", "pairs", "vocab", "model", "steps", "tokens_per_step", "learning_rate", "warmup")
MIXERS = TWO_LAYER_MIXERS
DEFAULT_MODELS = "transformer,wave,hybrid,hybrid_local"
# Rows measured before the sweep existed all trained at this rate.
FIRST_LEARNING_RATE = 3e-3
WINDOW = 64
DIM = 64
HEADS = 4
MODEL_NAME = re.compile(r"(?P<mixers>[a-z_]+?)(?P<tied>_tied)?(?:_d(?P<dim>\d+))?(?:_h(?P<heads>\d+))?")
INDUCTION_VOCAB = 16
ZOOLOGY_VOCAB = 8192
ZOOLOGY_GAP_POWER = 0.01
DEFAULT_VOCAB = {"induction_heads": INDUCTION_VOCAB, "zoology": ZOOLOGY_VOCAB}
# Scoring: chunks of the decode path, and how many unseen sequences at each length (fewer at 2^20).
SCORE_CHUNK = 4096
SCORE_TOKENS = 2**23
SCORE_SEQUENCES = 512
# Full attention's L x L float32 scores for one sequence, head and layer reach 4 GiB past 2^15 positions:
# beyond this length its cell says "out of memory" (Mamba's attention baselines stop at 2^14 as well).
ATTENTION_MAX_LEN = 2**15
OUT_OF_MEMORY = "out of memory"


def model_shape(model: str) -> tuple[tuple[str, str], int, int, str]:
  """ "retention_d128_h1" -> (("retention", "retention"), 128, 1, "spread"): the two mixers, the width, the
  heads and the wave heads' starting speeds ("tied" after _tied: selective_tied_d128)."""
  match = MODEL_NAME.fullmatch(model)
  dim = int(match["dim"] or DIM) if match else DIM
  heads = int(match["heads"] or HEADS) if match else HEADS
  if match is None or match["mixers"] not in MIXERS or dim % heads or (dim // heads) % 2:
    raise ValueError(
      f"unknown model {model!r}; choose from {','.join(MIXERS)}, each with an optional _tied, _d<D> and _h<H>"
      " (H heads of an even width dividing D)"
    )
  return MIXERS[match["mixers"]], dim, heads, "tied" if match["tied"] else "spread"


def associative_recall(
  rng: np.random.Generator,
  batch: int,
  length: int,
  pairs: int,
  vocab: int = 256,
  *,
  gap_power: float = 1.0,
  random_filler: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """Windows [B, L + 1] and answer weights [B, L]: `pairs` distinct keys (1..V/2-1), each with a value
  (V/2..V-1), open the window; later each key is asked once and the next token must be its value.

  A query sits at an even offset g after the pairs, g drawn without replacement with probability
  proportional to (g + 1)^(gap_power - 1): 1 is uniform, Zoology's 0.01 asks most keys soon after the pairs.
  The other positions hold 0, or with `random_filler` uniform tokens of the whole vocabulary (Zoology's).
  """
  slots_after = (length + 1 - 2 * pairs) // 2  # even offsets where a query and its answer fit
  if slots_after < pairs:
    raise ValueError(f"recall of {pairs} pairs needs L >= {4 * pairs}; got {length}")
  if pairs >= vocab // 2:
    raise ValueError(f"recall of {pairs} pairs needs a vocabulary of at least {2 * pairs + 2}; got {vocab}")
  gap_weights = np.arange(1, slots_after + 1, dtype=np.float64) ** (gap_power - 1)
  gap_weights /= gap_weights.sum()
  if random_filler:
    tokens = rng.integers(0, vocab, (batch, length + 1)).astype(np.int32)
  else:
    tokens = np.zeros((batch, length + 1), np.int32)
  weights = np.zeros((batch, length), np.float32)
  for row in range(batch):
    keys = rng.choice(np.arange(1, vocab // 2), pairs, replace=False)
    values = rng.integers(vocab // 2, vocab, pairs)
    tokens[row, 0 : 2 * pairs : 2], tokens[row, 1 : 2 * pairs : 2] = keys, values
    slots = 2 * pairs + 2 * rng.choice(slots_after, pairs, replace=False, p=gap_weights)
    tokens[row, slots], tokens[row, slots + 1] = keys, values
    weights[row, slots] = 1.0  # the target after position `slot` is the value
  return tokens, weights


def mqar(
  rng: np.random.Generator, batch: int, length: int, pairs: int, vocab: int = 256
) -> tuple[np.ndarray, np.ndarray]:
  """The project's MQAR: uniform query offsets, zeros between."""
  return associative_recall(rng, batch, length, pairs, vocab)


def zoology(
  rng: np.random.Generator, batch: int, length: int, pairs: int, vocab: int = ZOOLOGY_VOCAB
) -> tuple[np.ndarray, np.ndarray]:
  """Zoology's MQAR (Arora et al. 2023): power-law query offsets (0.01), random tokens between."""
  return associative_recall(rng, batch, length, pairs, vocab, gap_power=ZOOLOGY_GAP_POWER, random_filler=True)


def copy_sequence(
  rng: np.random.Generator, batch: int, length: int, pairs: int = 0, vocab: int = 256
) -> tuple[np.ndarray, np.ndarray]:
  """A random sequence of L/2 tokens, then the same sequence again: every token of the second copy is asked.
  The state must hold L/2 arbitrary tokens, so a model with a bounded state cannot win it at large L
  (Jelassi et al. 2024), while attention copies by looking back."""
  del pairs  # every position of the second copy is a query
  half = length // 2 + 1  # two copies cover the L + 1 tokens of a window
  first = rng.integers(1, vocab, (batch, half))
  tokens = np.concatenate([first, first], axis=1)[:, : length + 1].astype(np.int32)
  weights = np.zeros((batch, length), np.float32)
  weights[:, half:] = 1.0  # targets from the second copy's second token on: each is determined
  return tokens, weights


def induction_heads(
  rng: np.random.Generator, batch: int, length: int, pairs: int = 0, vocab: int = INDUCTION_VOCAB
) -> tuple[np.ndarray, np.ndarray]:
  """Mamba's induction heads (Gu & Dao 2023): random tokens 0..V-2; the special token V-1 appears once
  somewhere, and again as the last input; the one answer is the token that followed its first occurrence.
  Windows [B, L + 1] and weights [B, L], 1 at the last position only."""
  del pairs
  if length < 4 or vocab < 3:
    raise ValueError(f"induction heads needs L >= 4 and a vocabulary >= 3; got L={length}, V={vocab}")
  special = vocab - 1
  tokens = rng.integers(0, special, (batch, length + 1)).astype(np.int32)
  first = rng.integers(0, length - 2, batch)  # leaves its answer before the final query
  rows = np.arange(batch)
  tokens[rows, first] = special
  tokens[:, length - 1] = special
  tokens[:, length] = tokens[rows, first + 1]
  weights = np.zeros((batch, length), np.float32)
  weights[:, -1] = 1.0
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


TASKS = {
  "mqar": mqar,
  "zoology": zoology,
  "copy_sequence": copy_sequence,
  "induction_heads": induction_heads,
  "copy": selective_copy,
}


def parse_case(spec: str, steps: int) -> dict:
  """ "mqar:64:4" -> {"task": "mqar", "length": 64, "pairs": 4, "vocab": 256, "steps": steps};
  "mqar:64:4:64@2000" -> vocab 64, 2000 steps; "induction_heads:256" -> pairs 0, vocab 16."""
  body, _, own_steps = spec.partition("@")
  task, *numbers = body.split(":")
  counts = {"copy_sequence": (1,), "induction_heads": (1,), "zoology": (2,)}.get(task, (2, 3))
  if task not in TASKS or len(numbers) not in counts or not all(n.isdigit() for n in numbers):
    raise ValueError(
      "a case is induction_heads:<L>, zoology:<L>:<pairs>, mqar:<L>:<pairs>[:<vocab>], copy_sequence:<L> or"
      f" copy:<L>:<tokens>[:<vocab>], then optional @<steps>; got {spec!r}"
    )
  numbers = [int(n) for n in numbers]
  return {
    "task": task,
    "length": numbers[0],
    "pairs": numbers[1] if len(numbers) > 1 else 0,
    "vocab": numbers[2] if len(numbers) == 3 else DEFAULT_VOCAB.get(task, 256),
    "steps": int(own_steps) if own_steps else steps,
  }


def parse_warmup(text: str, length: int) -> list[list[int]]:
  """ "64:2000,128:2000" -> [[64, 2000], [128, 2000]]: lengths shorter than the case's `length`, rising."""
  stages = [part.split(":") for part in text.split(",") if part]
  if not all(len(stage) == 2 and all(n.isdigit() for n in stage) for stage in stages):
    raise ValueError(f"--warmup is <length>:<steps>,...; got {text!r}")
  stages = [[int(n), int(steps)] for n, steps in stages]
  lengths = [n for n, _ in stages]
  if lengths != sorted(set(lengths)) or any(n < 4 or n >= length for n in lengths):
    raise ValueError(f"--warmup lengths must rise, each from 4 to below the case's length {length}; got {text!r}")
  return stages


def has_full_attention(model: str) -> bool:
  return "attention" in model_shape(model)[0]


def state_floats(model, length: int) -> int:
  """Floats the model keeps per sequence to decode at position `length` (complex counts 2), all layers."""
  import jax
  import jax.numpy as jnp

  leaves = jax.tree.leaves(jax.eval_shape(lambda: model.init_cache(1, length)))
  floating = [leaf for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  return sum(leaf.size * (2 if jnp.issubdtype(leaf.dtype, jnp.complexfloating) else 1) for leaf in floating)


def score_sequences(length: int) -> int:
  return int(min(SCORE_SEQUENCES, max(8, SCORE_TOKENS // length)))


def accuracy_at(model, case: dict, length: int, seed: int) -> float:
  """Answer accuracy on `score_sequences(length)` unseen windows of `length` tokens, read in chunks of
  SCORE_CHUNK through the decode cache (one compiled program per chunk shape)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  graphdef, params = nnx.split(model)

  @functools.partial(jax.jit, donate_argnums=1)
  def chunk_hits(params, cache, tokens, targets, weights):
    logits, cache = nnx.merge(graphdef, params).prefill(tokens, cache)
    return ((jnp.argmax(logits, -1) == targets) * weights).sum(), cache

  task = TASKS[case["task"]]
  chunk = min(length, SCORE_CHUNK)
  sequences = score_sequences(length)
  rows = max(1, min(sequences, 2**15 // chunk))
  rng = np.random.default_rng(seed)
  hits = total = 0.0
  batches, chunks = -(-sequences // rows), -(-length // chunk)
  progress = tqdm(total=batches * chunks, desc=f"score at {length:,}", unit="chunk", mininterval=5)
  for _ in range(batches):
    tokens, weights = task(rng, rows, length, case["pairs"], case["vocab"])
    cache = model.init_cache(rows, length)
    for start in range(0, length, chunk):
      window = slice(start, start + chunk)
      found, cache = chunk_hits(params, cache, tokens[:, :-1][:, window], tokens[:, 1:][:, window], weights[:, window])
      hits += float(found)
      progress.update()
    total += float(weights.sum())
  progress.close()
  return hits / total


def clock_reach(model, case: dict, seed: int) -> list[dict]:
  """Per selective layer, the head that carries a stored token furthest on unseen sequences at the training
  length: its median clock step there (what an ordinary token advances it; the few tokens that write or read
  may step far more), and after how many such tokens its field has halved (ln 2 / (damping x step)) or turned
  a quarter ((pi / 2) / (speed x step)), either of which loses what it stored. [] for a model without
  selective layers."""
  from flax import nnx

  from wavefield_jax import analysis
  from wavefield_jax.layers import SelectiveWaveMixer

  selective = [mixer for _, mixer in nnx.iter_modules(model) if isinstance(mixer, SelectiveWaveMixer)]
  if not selective:
    return []
  tokens, _ = TASKS[case["task"]](np.random.default_rng(seed), 64, case["length"], case["pairs"], case["vocab"])
  rows = []
  for (layer, delta), mixer in zip(analysis.clock_steps(model, tokens[:, :-1]), selective, strict=True):
    speed, damping, _ = (np.asarray(c, np.float64) for c in mixer.constants())
    step = np.median(delta.reshape(-1, delta.shape[-1]), axis=0)  # [H]
    with np.errstate(divide="ignore"):
      half_life, quarter_turn = np.log(2) / (damping * step), (np.pi / 2) / (speed * step)
    head = int(np.argmax(np.minimum(half_life, quarter_turn)))
    rows.append(
      {
        "layer": layer,
        "head": head,
        "median_step": float(step[head]),
        "half_life_tokens": float(half_life[head]),
        "quarter_turn_tokens": float(quarter_turn[head]),
      }
    )
  return rows


def case_config(case: dict):
  """The run's config: the case's model at its length, vocabulary and learning rate."""
  from wavefield_jax.config import base_config

  config = base_config()
  mixers, dim, heads, speed_init = model_shape(case["model"])
  config.model.update(
    dict(dim=dim, num_layers=2, num_heads=heads, mlp_dim=2 * dim, max_len=case["length"], speed_init=speed_init)
  )
  # The byte model's 256 tokens at least, so the rows of the small-vocabulary tasks compare with the others.
  config.model.vocab_size = max(256, case["vocab"])
  config.model.mixers = mixers
  config.model.window = WINDOW
  rate = case["learning_rate"]
  config.train.update(dict(steps=case["steps"], warmup_steps=100, learning_rate=rate, wave_learning_rate=rate))
  return config


def measure(case: dict) -> dict:
  import jax.numpy as jnp
  from flax import nnx

  from wavefield_jax.train_lib import init_state, make_train_step

  config = case_config(case)
  graphdef, state, optimizer = init_state(config, seed=0)
  step = make_train_step(graphdef, optimizer, skip_nonfinite=False)
  task = TASKS[case["task"]]
  # A warm-up trains at shorter lengths first, each step as many tokens; the curve runs through them all.
  stages = [*case.get("warmup", []), [case["length"], case["steps"]]]
  lengths = np.concatenate([np.full(steps, length) for length, steps in stages])
  rng = np.random.default_rng(1)
  losses, loss_curve = [], []
  started = time.perf_counter()
  progress = tqdm(lengths.tolist(), desc=f"train {case['model']} on {case['task']}", unit="step", mininterval=5)
  for index, length in enumerate(progress):
    tokens, weights = task(rng, max(1, case["tokens_per_step"] // length), length, case["pairs"], case["vocab"])
    state, metrics = step(state, jnp.asarray(tokens), jnp.asarray(weights))
    losses.append(metrics["loss"])
    if (index + 1) % max(1, len(lengths) // 20) == 0:  # 20 points of the curve, each a mean
      loss_curve.append([index + 1, float(np.mean(jnp.stack(losses)))])
      progress.set_postfix(length=length, loss=f"{loss_curve[-1][1]:.3g}", refresh=False)
      losses = []
  progress.close()
  train_seconds = time.perf_counter() - started
  model = nnx.merge(graphdef, state["params"])
  accuracy = {}
  for length in dict.fromkeys([case["length"], *case.get("eval_lengths", [])]):
    if has_full_attention(case["model"]) and length > ATTENTION_MAX_LEN:
      accuracy[str(length)] = OUT_OF_MEMORY
    else:
      accuracy[str(length)] = accuracy_at(model, case, length, seed=12345)
  return {
    "accuracy": accuracy[str(case["length"])],
    "accuracy_at": accuracy,
    "state_floats": state_floats(model, case["length"]),
    "clock_reach": clock_reach(model, case, seed=12345),
    "final_train_loss": loss_curve[-1][1] if loss_curve else float(metrics["loss"]),
    "loss_curve": loss_curve,
    "train_seconds": train_seconds,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default="induction_heads:256@15000")
  parser.add_argument(
    "--models", default=DEFAULT_MODELS, help=f"any of {','.join(MIXERS)}, with an optional _tied, _d<D> and _h<H>"
  )
  parser.add_argument("--learning-rates", default=str(FIRST_LEARNING_RATE), help="each model's best of these counts")
  parser.add_argument("--steps", type=int, default=800, help="training steps of a case without its own @<steps>")
  parser.add_argument("--tokens-per-step", type=int, default=2048, help="Mamba's induction heads: 8 x 256")
  parser.add_argument(
    "--warmup",
    default="",
    help="a length curriculum: <length>:<steps>,... trained first, at the same tokens per step (e.g. 64:2000,128:2000)",
  )
  parser.add_argument(
    "--eval-lengths", default="", help="lengths to score besides the training length, e.g. 4096,65536,1048576"
  )
  args = parser.parse_args()
  try:
    specs = [parse_case(spec, args.steps) for spec in args.cases.split(",")]
    for model in args.models.split(","):
      model_shape(model)
    eval_lengths = [int(n) for n in args.eval_lengths.split(",") if n]
    warmup = parse_warmup(args.warmup, min(spec["length"] for spec in specs))
  except ValueError as error:
    parser.error(str(error))
  rates = [float(r) for r in args.learning_rates.split(",")]
  # Cases already measured with the same budget are kept from the last results: a run cut short (or one
  # case that failed) is finished by starting the script again.
  path = common.RESULTS / "recall.json"
  previous = json.loads(path.read_text())["rows"] if path.exists() else []
  done = {key(r): r for r in previous if "accuracy" in r}
  cases = [
    spec
    | {"model": model, "tokens_per_step": args.tokens_per_step, "learning_rate": rate, "eval_lengths": eval_lengths}
    | {"warmup": warmup}
    for spec in specs
    for model in args.models.split(",")
    for rate in rates
  ]
  # Every row measured so far is kept, so that runs with other cases or models add to one table.
  rows = list(done.values())
  for case in cases:
    if key(case) in done:
      continue
    rows.append(common.run_case(MODULE, case, timeout=4 * 3600))
    done[key(case)] = rows[-1]
    print(rows[-1], flush=True)
    write(rows)
  write(rows)


def key(case: dict) -> str:
  return json.dumps({k: case.get(k, []) for k in CASE_KEYS})  # rows from before warm-ups had none


SPEC_KEYS = ("task", "length", "pairs", "vocab", "steps", "tokens_per_step", "warmup")


def spec_of(row: dict) -> tuple:
  return tuple(tuple(map(tuple, row.get(k, []))) if k == "warmup" else row[k] for k in SPEC_KEYS)


def budget(spec: tuple) -> str:
  """ "2,000 at 64, then 4,000 x 2,048": the warm-up steps at each shorter length, then steps x tokens."""
  spec = dict(zip(SPEC_KEYS, spec, strict=True))
  warmup = "".join(f"{steps:,} at {length}, then " for length, steps in spec["warmup"])
  return f"{warmup}{spec['steps']:,} x {spec['tokens_per_step']:,}"


def case_name(spec: dict) -> str:
  what = {"mqar": "pairs", "zoology": "pairs", "copy": "tokens to copy"}.get(spec["task"])
  return (
    f"{spec['task']} L={spec['length']}"
    + (f", {spec['pairs']} {what}" if what else "")
    + (f", vocabulary {spec['vocab']}" if spec["vocab"] != DEFAULT_VOCAB.get(spec["task"], 256) else "")
  )


def best_rows(rows: list[dict]) -> dict[tuple, dict]:
  """(case, model) -> the row of the learning rate that scored best at the training length; a tie goes to
  the one that scored better at the next longer length, and so on."""

  def score(row: dict) -> list[float]:
    longer = sorted((int(n), a) for n, a in row.get("accuracy_at", {}).items() if int(n) > row["length"])
    return [row["accuracy"], *(a if isinstance(a, float) else 0.0 for _, a in longer)]

  best = {}
  for row in rows:
    if "accuracy" not in row:
      continue
    slot = (spec_of(row), row["model"])
    if slot not in best or score(row) > score(best[slot]):
      best[slot] = row
  return best


def percent(value: float | str) -> str:
  return f"{100 * value:.1f}%" if isinstance(value, float) else value


def model_order(model: str) -> tuple:
  """The table's order of mixers, each name's widths and head counts together."""
  return list(MIXERS).index(MODEL_NAME.fullmatch(model)["mixers"]), model_shape(model)[1:], model


def write(rows: list[dict]) -> None:
  plt = plots.pyplot()

  best = best_rows(rows)
  specs = list(dict.fromkeys(spec for spec, _ in best))
  models = sorted({model for _, model in best}, key=model_order)
  names = [case_name(dict(zip(SPEC_KEYS, spec, strict=True))) for spec in specs]

  def cell(spec: tuple, model: str) -> str:
    row = best.get((spec, model))
    return f"{percent(row['accuracy'])} ({row['learning_rate']:g})" if row else "-"

  table_rows = [[name, budget(spec), *(cell(spec, m) for m in models)] for name, spec in zip(names, specs, strict=True)]
  table = common.markdown_table(table_rows, ["case", "steps x tokens", *models])
  table += (
    "\n\nAnswer accuracy at the training length, at the best learning rate tried (in brackets). 2 layers, D=64"
    " unless _d<D> says otherwise, loss on answers only; 512 unseen sequences; *_local: the named mixer, then"
    f" sliding-window attention of {WINDOW} positions; selective_retention: selective, then retention;"
    f' _h<H>: H heads per mixer ({HEADS} otherwise); a budget "N at l, then" trained N steps at the shorter'
    " length l first, as many tokens a step; _tied: each wave head's speed starts equal to its damping"
    " (spread over (0, pi] otherwise). copy_sequence asks the state to hold L/2 arbitrary tokens:"
    " a bounded state cannot, attention can by looking back (Jelassi et al. 2024), so that row measures"
    " attention, not the wave mixers."
  )
  long_rows = [(spec, model, row) for (spec, model), row in best.items() if len(row.get("accuracy_at", {})) > 1]
  if long_rows:
    lengths = sorted({int(n) for _, _, row in long_rows for n in row["accuracy_at"]})
    table += "\n\n" + common.markdown_table(
      [
        [case_name(dict(zip(SPEC_KEYS, spec, strict=True))), budget(spec), model]
        + [f"{row['state_floats']:,}"]
        + [percent(row["accuracy_at"].get(str(n), "-")) for n in lengths]
        for spec, model, row in sorted(long_rows, key=lambda r: (r[0], model_order(r[1])))
      ],
      ["case", "steps x tokens", "model", "state floats", *(f"L={n:,}" for n in lengths)],
    )
    table += (
      "\n\nTrained at the first length, scored at each: "
      + ", ".join(f"{score_sequences(n)} sequences at {n:,}" for n in lengths)
      + ". State floats: what the model holds per sequence to decode, all layers (attention's KV cache at the"
      f" training length; it grows with the length). Full attention past {ATTENTION_MAX_LEN:,} positions is"
      " out of memory: its L x L scores per head pass 4 GiB."
    )
  common.write_results("recall", {"machine": common.machine(), "rows": rows}, table)
  # A case trained at several budgets is named with its steps x tokens in the plot.
  labels = [
    f"{name}\n{budget(spec)}" if names.count(name) > 1 else name for name, spec in zip(names, specs, strict=True)
  ]
  # The bars take the whole first row: one group per case, one bar per model.
  fig = plt.figure(figsize=(min(24, max(14, 0.8 * len(specs) * max(1, len(models) / 4))), 10))
  bars = fig.add_subplot(2, 1, 1)
  front, reach = fig.add_subplot(2, 2, 3), fig.add_subplot(2, 2, 4)
  width = 0.8 / len(models)
  palette = plt.get_cmap("tab20")  # a colour per model, the same in every panel

  def colour(model: str):
    return palette(models.index(model) % 20)

  for i, model in enumerate(models):
    values = [100 * best[(spec, model)]["accuracy"] if (spec, model) in best else 0.0 for spec in specs]
    bars.bar(np.arange(len(specs)) + i * width, values, width, color=colour(model), label=model)
  bars.set_xticks(np.arange(len(specs)) + width * (len(models) - 1) / 2, labels, fontsize=7, rotation=25, ha="right")
  bars.set_ylabel("answer accuracy at the training length (%)")
  bars.set_ylim(0, 100)
  bars.legend(fontsize=7, ncol=max(1, len(models) // 8), loc="upper left", bbox_to_anchor=(1.0, 1.0))
  # Based's picture for the literature's tasks: accuracy against the state kept per sequence, a marker per case.
  literature = [(spec, label) for spec, label in zip(specs, labels, strict=True) if spec[0] in DEFAULT_VOCAB]
  for marker, (spec, label) in zip(itertools.cycle("osD^v<>px*"), literature):
    front.scatter([], [], color="grey", marker=marker, label=label.replace("\n", ", "))
    for model in models:
      row = best.get((spec, model))
      if row and "state_floats" in row:
        front.scatter(row["state_floats"], 100 * row["accuracy"], color=colour(model), marker=marker, s=28)
  if literature:
    front.legend(fontsize=5, loc="center right")
  front.set_xscale("log")
  front.set_xlabel("state per sequence (floats, all layers; colours as left)")
  front.set_ylabel("answer accuracy (%)")
  front.set_ylim(0, 100)
  # Length generalisation: every model that learned its case (99% at the training length), at each length.
  learned = [(spec, model, row) for spec, model, row in long_rows if row["accuracy"] >= 0.99]
  for i, (spec, model, row) in enumerate(sorted(learned, key=lambda r: (r[0][1], model_order(r[1])))):
    points = sorted((int(n), 100 * a) for n, a in row["accuracy_at"].items() if isinstance(a, float))
    style = dict(color=colour(model), linestyle=("-", "--", ":", "-.")[i % 4], marker="o", ms=3)
    reach.plot(*zip(*points, strict=True), label=f"{model}, L={spec[1]}: {budget(spec)}", **style)
  reach.set_xscale("log", base=2)
  reach.set_xlabel("scored at length (tokens)")
  reach.set_ylabel("answer accuracy (%)")
  reach.set_ylim(0, 100)
  reach.set_title("learned cases, scored past their training length", fontsize=8)
  if learned:
    reach.legend(fontsize=5)
  plots.save(fig, common.RESULTS / "recall.png", dpi=120)


if __name__ == "__main__":
  if not common.case_main(measure):
    main()
