"""Scoring past the training window, the lm-eval adapter's speed, and whole-document memory.

Three parts, each case in a fresh process:

  context     each model (the small config: 2 layers, D=64) trained on the shipped corpus with windows of 256
              bytes for --steps steps, then its bits per byte on the two test plays with windows of 64 ... 65,536
              bytes and with each play read whole (`--context document`; the wave family only). Which models
              use context past their training window, and which break there. Full attention past
              ATTENTION_MAX_CONTEXT is "out of memory": its L x L scores pass 1 GiB per layer.
  throughput  the default model (4 wave layers, D=128): the adapter's `loglikelihood` over requests cut from
              the test plays (a context of 160 to 240 bytes and a continuation of 16), in tokens read per
              second, against the eval step's tokens per second over windows of 256 of the same text; and the
              programs the adapter compiled against the length buckets its requests fall in.
  memory      peak RSS of scoring one text whole with the default model: the longest shipped play against its
              first 16k bytes.

  python -m benchmarks.scoring [--parts context,throughput,memory] [--steps 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from wavefield_jax import plots

MODULE = "benchmarks.scoring"
CONTEXT_MODELS = ("wave", "selective", "retention", "hybrid", "hybrid_local64", "transformer")
CONTEXTS = (64, 256, 1024, 4096, 16384, 65536)
ATTENTION_MAX_CONTEXT = 8192
DOCUMENT = "document"
REQUESTS = 256
MEMORY_SHORT = 16384


def test_plays() -> list[bytes]:
  from wavefield_jax import sources

  return sources.shakespeare_documents()["test"]


def measure_context(case: dict) -> dict:
  from benchmarks.quality import model_config_of
  from wavefield_jax import scoring
  from wavefield_jax.errors import DataError
  from wavefield_jax.train_lib import train_and_evaluate

  config = model_config_of("small", case["model"]).unlock()
  config.train.update(dict(steps=case["steps"], sample_tokens=0, eval_every=case["steps"]))
  with tempfile.TemporaryDirectory() as workdir:
    trained = train_and_evaluate(config, workdir)
    paths = []
    for index, play in enumerate(test_plays()):
      paths.append(Path(workdir) / f"test_{index}.txt")
      paths[-1].write_bytes(play)
    attention = {"attention"} & set(config.model.mixers)
    scores = {}
    for context in [*CONTEXTS, DOCUMENT]:
      if attention and context != DOCUMENT and context > ATTENTION_MAX_CONTEXT:
        scores[str(context)] = "out of memory"
        continue
      try:
        files = scoring.score_files(workdir, [str(p) for p in paths], batch_size=1, context=context)["files"]
      except DataError:
        scores[str(context)] = "beyond its window"
        continue
      bits = sum(f["bpb"] * f["bytes"] for f in files)
      scores[str(context)] = bits / sum(f["bytes"] for f in files)
  return {"validation_bpb": trained["bpb"], "bpb": scores}


def measure_throughput(case: dict) -> dict:
  import jax.numpy as jnp
  from flax import nnx

  from wavefield_jax import input_pipeline, scoring, tokenizers
  from wavefield_jax.config import base_config
  from wavefield_jax.model import WaveFieldLM
  from wavefield_jax.train_lib import evaluate, make_eval_step

  config = base_config()
  config.model.mixers = ("wave",) * config.model.num_layers
  graphdef, state = nnx.split(WaveFieldLM(config.model, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(state)
  scorer = scoring.Scorer(graphdef, params, config, batch_size=8)
  tokens = tokenizers.ByteTokenizer().encode(b"".join(test_plays()))
  rng = np.random.default_rng(0)
  requests = []
  for start in rng.integers(0, len(tokens) - 300, REQUESTS):
    context = int(rng.integers(160, 241))
    requests.append((tokens[start : start + context], tokens[start + context : start + context + 16]))
  read = sum(len(c) + len(x) - 1 for c, x in requests)
  scorer.continuations(requests)  # compiles
  adapter = common.time_call(lambda: scorer.continuations(requests), repeats=case["repeats"], warmup=0)
  windows, weights = input_pipeline.eval_windows(tokens[: read + 1], config.data.seq_len)
  eval_step = make_eval_step(graphdef)
  token_bytes = jnp.asarray(np.ones(256, np.int32))
  run = lambda: evaluate(eval_step, params, windows, weights, token_bytes, 8)  # noqa: E731
  step = common.time_call(run, repeats=case["repeats"])
  buckets = {scoring.bucket_length(len(c) + len(x) - 1) for c, x in requests}
  return {
    "adapter_tokens_per_s": read / adapter["median_s"],
    "eval_step_tokens_per_s": float(weights.sum()) / step["median_s"],
    "compiled": scorer.traces,
    "buckets": len(buckets),
    "requests": len(requests),
  }


def measure_memory(case: dict) -> dict:
  from flax import nnx

  from wavefield_jax import scoring, sources, tokenizers
  from wavefield_jax.config import base_config
  from wavefield_jax.model import WaveFieldLM

  config = base_config()
  config.model.mixers = ("wave",) * config.model.num_layers
  graphdef, state = nnx.split(WaveFieldLM(config.model, rngs=nnx.Rngs(0)))
  scorer = scoring.Scorer(graphdef, nnx.to_pure_dict(state), config)
  longest = max((d for split in sources.shakespeare_documents().values() for d in split), key=len)
  text = longest if case["text"] == "longest" else longest[:MEMORY_SHORT]
  started = time.perf_counter()
  result = scorer.document_scores(tokenizers.ByteTokenizer().encode(text))
  seconds = time.perf_counter() - started
  return {"bytes": len(text), "bpb": result["bpb"], "seconds": seconds, "peak_rss_mib": common.peak_rss_mib()}


def measure(case: dict) -> dict:
  return {"context": measure_context, "throughput": measure_throughput, "memory": measure_memory}[case["part"]](case)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--parts", default="context,throughput,memory")
  parser.add_argument("--steps", type=int, default=1000, help="training steps of each model in the context part")
  parser.add_argument("--models", default=",".join(CONTEXT_MODELS))
  args = parser.parse_args()
  parts = args.parts.split(",")
  path = common.RESULTS / "scoring.json"
  results = json.loads(path.read_text()) if path.exists() else {"machine": common.machine()}
  if "context" in parts:
    rows = {r["model"]: r for r in results.get("context", []) if r.get("steps") == args.steps and "bpb" in r}
    for model in args.models.split(","):
      if model not in rows:  # a run cut short is finished by starting the script again
        rows[model] = common.run_case(MODULE, {"part": "context", "model": model, "steps": args.steps}, timeout=7200)
        print(rows[model], flush=True)
        results["context"] = list(rows.values())
        write(results)
  if "throughput" in parts:
    results["throughput"] = common.run_case(MODULE, {"part": "throughput", "repeats": 5})
    print(results["throughput"], flush=True)
  if "memory" in parts:
    results["memory"] = [common.run_case(MODULE, {"part": "memory", "text": t}) for t in ("short", "longest")]
    print(results["memory"], flush=True)
  results["machine"] = common.machine()
  write(results)


def value(cell: float | str) -> str:
  return f"{cell:.3f}" if isinstance(cell, float) else cell


def write(results: dict) -> None:
  plt = plots.pyplot()

  sections = []
  columns = [str(c) for c in CONTEXTS] + [DOCUMENT]
  context_rows = results.get("context", [])
  if context_rows:
    table = common.markdown_table(
      [
        [r["model"], f"{r['validation_bpb']:.3f}", *(value(r["bpb"][c]) for c in columns)]
        for r in context_rows
        if "bpb" in r
      ],
      ["model", "validation (256)", *(f"{int(c):,}" if c.isdigit() else c for c in columns)],
    )
    sections.append(
      "Bits per byte on the two test plays (201,866 bytes) by the context each window gives, every byte scored"
      " once; `document`: each play read whole, the state carried. Small models (2 layers, D=64) trained with"
      f" windows of 256 bytes for {context_rows[0]['steps']:,} steps; validation (256) is the run's own score.\n\n"
      + table
    )
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, r in enumerate(row for row in context_rows if "bpb" in row):
      xs = [int(c) for c in columns[:-1] if isinstance(r["bpb"][c], float)]
      ax.plot(xs, [r["bpb"][str(x)] for x in xs], "o-", color=f"C{i}", label=r["model"])
      if isinstance(r["bpb"][DOCUMENT], float):
        ax.axhline(r["bpb"][DOCUMENT], color=f"C{i}", ls=":", lw=1)
    ax.axvline(256, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context of each window (bytes); grey: the training window; dotted: whole plays")
    ax.set_ylabel("test bits per byte")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    plots.save(fig, common.RESULTS / "scoring_context.png", dpi=120)
  throughput = results.get("throughput", {})
  if "adapter_tokens_per_s" in throughput:
    ratio = throughput["adapter_tokens_per_s"] / throughput["eval_step_tokens_per_s"]
    sections.append(
      common.markdown_table(
        [
          [
            f"{throughput['adapter_tokens_per_s']:,.0f}",
            f"{throughput['eval_step_tokens_per_s']:,.0f}",
            f"{ratio:.2f}x",
            f"{throughput['compiled']} / {throughput['buckets']}",
          ]
        ],
        ["adapter loglikelihood tokens/s", "eval step tokens/s", "adapter / eval step", "programs / buckets"],
      )
      + f"\n\n{throughput['requests']} `loglikelihood` requests (contexts of 160 to 240 bytes, continuations of 16)"
      " through the adapter in batches of 8, against the eval step over windows of 256 on the same text; default"
      " model, median of 5."
    )
  memory = results.get("memory", [])
  if len(memory) == 2 and all("peak_rss_mib" in m for m in memory):
    short, longest = memory
    sections.append(
      common.markdown_table(
        [[f"{m['bytes']:,}", f"{m['peak_rss_mib']:.0f}", f"{m['seconds']:.1f}"] for m in memory],
        ["bytes read whole", "peak RSS MiB", "seconds"],
      )
      + f"\n\nThe longest shipped play read whole peaks at {longest['peak_rss_mib'] / short['peak_rss_mib']:.2f}x"
      f" the memory of its first {MEMORY_SHORT:,} bytes (default model, state carried in chunks of"
      " 2,048 tokens)."
    )
  common.write_results("scoring", results, "\n\n".join(sections))


if __name__ == "__main__":
  if not common.case_main(measure):
    main()
