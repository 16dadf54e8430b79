"""Long contexts on this machine: the rate per token from 1k to 64k, what remat and the tiled loss cost, and
training at 64k and 256k tokens a window on the shipped corpus.

Three parts, each case in a fresh process:

  rate    the default wave model's train step at L = 1k ... 64k with the same 65,536 tokens per step
          (batch = 65,536 / L), remat "none" and "full"; and the cause of the fall at one sequence per step:
          B = 2 x 4k and B = 1 x 8k with XLA's YNNPACK reduction fusions on ("xla default") and off (ours).
  loss    the default model with GPT-2's vocabulary size (50,304) at L = 1k, dense logits against tiles of
          128 positions: step time.
  train   `train_and_evaluate` on the shipped corpus, one window of 64k or 256k bytes per step, with remat
          "full" and tiles of 4096 positions, beside the same run without them: peak RSS, tokens/s, the loss.
          At 256k validation is the four held-out plays together (the two validation plays hold 231k bytes).

  python -m benchmarks.long_context [--parts rate,loss,train] [--train-steps 24]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import common
from wavefield_jax import plots

MODULE = "benchmarks.long_context"
TOKENS_PER_STEP = 65536
RATE_LENGTHS = (1024, 4096, 16384, 65536)
GPT2_VOCAB = 50304
LOSS_TILE = 128
TRAIN_TILE = 4096
TRAIN_LENGTHS = (65536, 262144)


def _model_config(length: int, remat: str = "none", loss_chunk_size: int | None = None, vocab: int = 256):
  from wavefield_jax.config import base_config

  config = base_config()
  config.model.update(dict(max_len=length, remat=remat, loss_chunk_size=loss_chunk_size, vocab_size=vocab))
  config.data.seq_len = length
  return config


def measure_step(case: dict) -> dict:
  """Median step time of the jitted train step for one case (rate and loss parts)."""
  import jax
  import jax.numpy as jnp

  from wavefield_jax import train_lib

  if case.get("xla_default"):  # the comparison: XLA's own CPU fusions, as before
    train_lib.CPU_COMPILER_OPTIONS = {}
  config = _model_config(case["length"], case["remat"], case.get("loss_chunk_size"), case.get("vocab", 256))
  graphdef, state, optimizer = train_lib.init_state(config, seed=0)
  step = train_lib.make_train_step(graphdef, optimizer, skip_nonfinite=False)
  batch_size = case["batch"]
  tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, (batch_size, case["length"] + 1))
  batch = jnp.asarray(tokens, jnp.int32)
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = step(holder["state"], batch)
    jax.block_until_ready(metrics["loss"])

  timing = common.time_call(one_step, repeats=case["repeats"], warmup=1)
  return {
    "tokens_per_s": batch_size * case["length"] / timing["median_s"],
    "step_s": timing["median_s"],
    "peak_rss_mib": common.peak_rss_mib(),
  }


def held_out_corpus(length: int):
  """The shipped corpus; where one held-out split is shorter than a window (256k bytes against the 231k of
  the validation plays) validation and test are the four held-out plays together."""
  from wavefield_jax import input_pipeline, sources, tokenizers

  documents = sources.shakespeare_documents()
  if min(sum(len(d) for d in documents[split]) for split in ("validation", "test")) < length + 1:
    documents["validation"] = documents["test"] = documents["validation"] + documents["test"]
  return input_pipeline.tokenize(documents, tokenizers.get_tokenizer("bytes"), length)


def measure_train(case: dict) -> dict:
  """A short training run on the shipped corpus; its losses, rate and the process's peak RSS. A run whose
  compiled step needs more than the memory available is refused, named, before it starts."""
  import jax
  import jax.numpy as jnp

  from wavefield_jax.train_lib import init_state, make_train_step, train_and_evaluate

  config = _model_config(case["length"], case["remat"], case.get("loss_chunk_size"))
  graphdef, state, optimizer = init_state(config, seed=0)
  window = jax.ShapeDtypeStruct((1, case["length"] + 1), jnp.int32)
  need = make_train_step(graphdef, optimizer, False).lower(state, window).compile().memory_analysis().temp_size_in_bytes
  available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  del state
  if need > 0.7 * available:
    return {"error": f"not run: {need / 2**30:.1f} GiB of compiled temporaries, {available / 2**30:.1f} GiB free"}
  config.train.update(
    dict(
      steps=case["steps"],
      batch_size=1,
      warmup_steps=2,
      log_every=4,
      eval_every=10**6,
      eval_windows=1,
      checkpoint_every=10**6,
      sample_tokens=0,
    )
  )
  with tempfile.TemporaryDirectory() as workdir:
    result = train_and_evaluate(config, workdir, held_out_corpus(case["length"]))
    logs = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  rates = [r["tokens_per_s"] for r in logs if r.get("kind") == "speed"][1:]  # the first holds the compile
  return {
    "losses": [r["loss"] for r in logs if r.get("kind") == "train"],  # one per step
    "tokens_per_s": float(np.median(rates)) if rates else float("nan"),
    "validation_bpb": result["bpb"],
    "peak_rss_mib": common.peak_rss_mib(),
  }


def measure(case: dict) -> dict:
  return measure_train(case) if case["part"] == "train" else measure_step(case)


def cases(parts: list[str], train_steps: int) -> list[dict]:
  out = []
  if "rate" in parts:
    for length in RATE_LENGTHS:
      for remat in ("none", "full"):
        out.append({"part": "rate", "length": length, "batch": TOKENS_PER_STEP // length, "remat": remat})
    for xla_default in (True, False):
      for batch, length in ((2, 4096), (1, 8192)):
        out.append({"part": "cause", "length": length, "batch": batch, "remat": "none", "xla_default": xla_default})
  if "loss" in parts:
    for tile in (None, LOSS_TILE):
      out.append(
        {"part": "loss", "length": 1024, "batch": 4, "remat": "none", "vocab": GPT2_VOCAB, "loss_chunk_size": tile}
      )
  if "train" in parts:
    for length in TRAIN_LENGTHS:
      for remat, tile in (("full", TRAIN_TILE), ("none", None)):
        out.append({"part": "train", "length": length, "remat": remat, "loss_chunk_size": tile, "steps": train_steps})
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--parts", default="rate,loss,train")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--train-steps", type=int, default=24)
  parser.add_argument("--redo", action="store_true", help="measure cases again that the results already hold")
  args = parser.parse_args()
  path = common.RESULTS / "long_context.json"
  rows = json.loads(path.read_text())["rows"] if path.exists() else []
  done = {key(r) for r in rows if "error" not in r or r["error"].startswith("not run")}
  for case in cases(args.parts.split(","), args.train_steps):
    case = case | ({"repeats": args.repeats} if case["part"] != "train" else {})
    if key(case) in done and not args.redo:
      continue
    result = common.run_case(MODULE, case, timeout=5400)
    print(result, flush=True)
    rows = [r for r in rows if key(r) != key(result)] + [result]
    write(rows)


def key(row: dict) -> str:
  return json.dumps(
    {
      k: v
      for k, v in row.items()
      if k in ("part", "length", "batch", "remat", "xla_default", "vocab", "loss_chunk_size", "steps")
    },
    sort_keys=True,
  )


def write(rows: list[dict]) -> None:
  plt = plots.pyplot()

  def pick(**match):
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), {})

  def rate(row):
    return f"{row['tokens_per_s']:,.0f}" if "tokens_per_s" in row else row.get("error", "-")[:60]

  sections = []
  rate_rows = []
  for length in RATE_LENGTHS:
    plain, remat = pick(part="rate", length=length, remat="none"), pick(part="rate", length=length, remat="full")
    ratio = (
      f"{plain['tokens_per_s'] / remat['tokens_per_s']:.2f}x"
      if "tokens_per_s" in plain and "tokens_per_s" in remat
      else "-"
    )
    rate_rows.append([f"{length:,}", str(TOKENS_PER_STEP // length), rate(plain), rate(remat), ratio])
  first = pick(part="rate", length=RATE_LENGTHS[0], remat="none")
  last = pick(part="rate", length=RATE_LENGTHS[-1], remat="none")
  sections.append(
    f"Train step of the default wave model (D=128, 4 layers, float32), {TOKENS_PER_STEP:,} tokens per step, median of "
    "the repeats:\n\n"
    + common.markdown_table(rate_rows, ["L", "batch", "tok/s", "tok/s, remat full", "remat full step time"])
    + (
      f"\n\nCost per token at L = {RATE_LENGTHS[-1]:,} over that at L = {RATE_LENGTHS[0]:,}: "
      f"{first['tokens_per_s'] / last['tokens_per_s']:.2f}x."
      if "tokens_per_s" in first and "tokens_per_s" in last
      else ""
    )
  )
  cause_rows = []
  for xla_default in (True, False):
    two, one = (pick(part="cause", batch=b, length=n, xla_default=xla_default) for b, n in ((2, 4096), (1, 8192)))
    ratio = (
      f"{two['tokens_per_s'] / one['tokens_per_s']:.2f}x" if "tokens_per_s" in two and "tokens_per_s" in one else "-"
    )
    name = "XLA's default CPU fusions" if xla_default else "without YNNPACK reduction fusions (train_lib)"
    cause_rows.append([name, rate(two), rate(one), ratio])
  sections.append(
    "One sequence per step, 8,192 tokens per step:\n\n"
    + common.markdown_table(
      cause_rows, ["compiled with", "B = 2 x 4k tok/s", "B = 1 x 8k tok/s", "per-token cost, 1 x 8k / 2 x 4k"]
    )
  )
  dense, tiled = pick(part="loss", loss_chunk_size=None), pick(part="loss", loss_chunk_size=LOSS_TILE)
  if "step_s" in dense and "step_s" in tiled:
    sections.append(
      f"GPT-2-sized vocabulary ({GPT2_VOCAB:,}), L = 1,024, batch 4: dense logits "
      f"{dense['step_s'] * 1e3:,.0f} ms a step, tiles of {LOSS_TILE} positions {tiled['step_s'] * 1e3:,.0f} ms "
      f"({tiled['step_s'] / dense['step_s']:.2f}x); "
      f"peak RSS {dense['peak_rss_mib']:,.0f} and {tiled['peak_rss_mib']:,.0f} MiB."
    )
  train_rows = []
  for length in TRAIN_LENGTHS:
    for remat, tile in (("full", TRAIN_TILE), ("none", None)):
      row = pick(part="train", length=length, remat=remat)
      what = f"remat full, tiles of {tile}" if tile else "neither"
      if "losses" not in row:
        train_rows.append([f"{length:,}", what, row.get("error", "-")[:80], "", ""])
        continue
      losses = row["losses"]
      train_rows.append(
        [
          f"{length:,}",
          what,
          f"{row['peak_rss_mib']:,.0f}",
          f"{losses[0]:.3f} -> {losses[-1]:.3f}",
          f"{row['validation_bpb']:.3f}",
        ]
      )
  sections.append(
    "Training the default wave model on the shipped corpus, one window per step (the rate table above gives its "
    "speed; these runs shared the machine):\n\n"
    + common.markdown_table(
      train_rows, ["window", "with", "peak RSS MiB", "train loss, first -> last step", "validation BPB"]
    )
  )
  common.write_results("long_context", {"machine": common.machine(), "rows": rows}, "\n\n".join(sections))

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for remat, style in (("none", "o-"), ("full", "s--")):
    group = [pick(part="rate", length=n, remat=remat) for n in RATE_LENGTHS]
    xs = [n for n, r in zip(RATE_LENGTHS, group, strict=True) if "tokens_per_s" in r]
    axes[0].plot(xs, [r["tokens_per_s"] for r in group if "tokens_per_s" in r], style, label=f"remat {remat}")
  axes[0].set_xscale("log", base=2)
  axes[0].set_xlabel("window length L")
  axes[0].set_ylabel(f"train tokens / s ({TOKENS_PER_STEP:,} a step)")
  axes[0].set_ylim(bottom=0)
  axes[0].legend()
  for row in (r for r in rows if r.get("part") == "train" and "losses" in r):
    label = f"{row['length'] // 1024}k, " + ("remat + tiles" if row["remat"] == "full" else "neither")
    axes[1].plot(np.arange(1, len(row["losses"]) + 1), row["losses"], label=label)
  axes[1].set_xlabel("step")
  axes[1].set_ylabel("train loss (nats per byte)")
  axes[1].legend(fontsize=8)
  for ax in axes:
    ax.grid(alpha=0.3)
  plots.save(fig, common.RESULTS / "long_context.png", dpi=120)


if __name__ == "__main__":
  if not common.case_main(measure):
    main()
