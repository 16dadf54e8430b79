"""Prepared corpora and document masking, each part measured against its baseline in the same run.

  python -m benchmarks.corpora [--parts prepare,train,mask] [--sizes-mb 10,100,1000] [--workdir DIR]

- prepare: one worker's tokens/s against the bare tokenizer (tiktoken's `encode_ordinary` on the same text,
  in the same process), and the peak RSS of the whole process tree (parent and workers) preparing each size.
- train: a fresh `wavefield-train` process on the prepared corpus of each size (2 steps): wall time to
  finish and peak RSS; and train tokens/s from the prepared shards against the same text held in memory.
- mask: the jitted train step with segment ids against the same step without, wave mixer (matmul form),
  L = 4096, median of repeated steps.

The text is JSONL documents of about 100 kB cut at random from the shipped corpus, written into
`--workdir` (files of 50 MB): a corpus with the statistics of English prose, no download.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import common

MODULE = "benchmarks.corpora"
FILE_MB = 50  # 100 MB is then two inputs, as many as the workers: RSS compares like with like
DOCUMENT_BYTES = 100_000


def write_corpus(directory: Path, megabytes: int, seed: int = 0) -> list[Path]:
  """JSONL files of `megabytes` in all (FILE_MB each, the last shorter): documents cut from the shipped corpus."""
  from wavefield_jax.sources import shakespeare_documents

  directory.mkdir(parents=True, exist_ok=True)
  text = b"".join(doc for split in shakespeare_documents().values() for doc in split).decode("utf-8")
  rng = np.random.default_rng(seed)
  files, left = [], megabytes * 10**6
  while left > 0:
    path = directory / f"part-{len(files):04d}.jsonl"
    size = min(left, FILE_MB * 10**6)
    if not path.exists() or path.stat().st_size < size * 0.99:
      with path.open("w") as f:
        written = 0
        while written < size:
          start = int(rng.integers(0, len(text) - DOCUMENT_BYTES))
          line = json.dumps({"text": text[start : start + DOCUMENT_BYTES]}) + "\n"
          f.write(line)
          written += len(line)
    files.append(path)
    left -= size
  return files


def tree_rss_mib(pid: int) -> float:
  """Resident memory of a process and all its descendants, MiB (Linux /proc)."""
  total, stack = 0, [pid]
  while stack:
    current = stack.pop()
    try:
      status = Path(f"/proc/{current}/status").read_text()
      children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
    except OSError:
      continue
    # A process that has just exited (a zombie) has no VmRSS line.
    total += int(next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")), 0))
    stack.extend(int(c) for c in children)
  return total / 1024


def run_watched(command: list[str]) -> dict:
  """Runs a command; its wall time and the peak RSS of its process tree, sampled every 50 ms."""
  start = time.perf_counter()
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  peak = [0.0]

  def watch():
    while process.poll() is None:
      peak[0] = max(peak[0], tree_rss_mib(process.pid))
      time.sleep(0.05)

  watcher = threading.Thread(target=watch)
  watcher.start()
  out, err = process.communicate()
  watcher.join()
  if process.returncode:
    raise RuntimeError(f"{command[:4]} failed: {err[-1000:]}")
  return {"seconds": time.perf_counter() - start, "peak_rss_mib": peak[0], "stdout": out}


def prepare_part(workdir: Path, sizes: list[int]) -> dict:
  import tiktoken  # noqa: F401 (the gpt2 tokenizer's engine)

  from wavefield_jax.prepare import Unit, prepare_unit
  from wavefield_jax.tokenizers import get_tokenizer

  # The bare tokenizer on the documents of one 50 MB input (already in memory as strings), then one worker
  # on the same input (reading, splitting, tokenizing and writing it, its tokenizer built), both here.
  sample = write_corpus(workdir / f"text_{FILE_MB}mb", FILE_MB)[0]
  documents = [json.loads(line)["text"] for line in sample.open()]
  encoding = get_tokenizer("gpt2").encoding
  text_bytes = sum(len(d.encode()) for d in documents)
  start = time.perf_counter()
  tokens = sum(len(encoding.encode_ordinary(d)) for d in documents)
  bare = time.perf_counter() - start
  one = workdir / "one_worker"
  one.mkdir(parents=True, exist_ok=True)
  for stale in one.glob("*.array_record"):
    stale.unlink()
  start = time.perf_counter()
  prepare_unit(Unit(0, str(sample), None, "text", "text"), one, "gpt2", (0.9, 0.05, 0.05), 0)
  worker = time.perf_counter() - start
  rows = []
  for size in sizes:
    output = workdir / f"prepared_{size}mb"
    inputs = [str(p) for p in write_corpus(workdir / f"text_{size}mb", size)]
    # A fresh output each time: the measure is a whole preparation.
    subprocess.run(["rm", "-rf", str(output)], check=True)
    run = run_watched([sys.executable, "-m", "wavefield_jax.prepare", *inputs, "--output",
                       str(output), "--tokenizer", "gpt2", "--workers", "2"])  # fmt: skip
    rows.append({"megabytes": size, "seconds": run["seconds"], "peak_rss_mib": run["peak_rss_mib"]})
    print(rows[-1], flush=True)
  return {
    "bare_tokens_per_s": tokens / bare,
    "worker_tokens_per_s": tokens / worker,
    "bare_mb_per_s": text_bytes / bare / 1e6,
    "worker_mb_per_s": text_bytes / worker / 1e6,
    "sizes": rows,
  }


def train_part(workdir: Path, sizes: list[int]) -> dict:
  rows = []
  for size in sizes:
    output = workdir / f"prepared_{size}mb"
    run_dir = workdir / f"run_{size}mb"
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    command = [
      sys.executable, "-m", "wavefield_jax.train", "--config=configs/tiny.py", f"--workdir={run_dir}",
      "--config.data.source=prepared", f"--config.data.prepared_dir={output}", "--config.data.tokenizer=gpt2",
      "--config.model.vocab_size=50304", "--config.train.steps=2", "--config.train.eval_every=1000",
      "--config.train.eval_windows=4", "--config.train.sample_tokens=0",
    ]  # fmt: skip
    run = run_watched(command)
    rows.append({"megabytes": size, "seconds": run["seconds"], "peak_rss_mib": run["peak_rss_mib"]})
    print(rows[-1], flush=True)
  return {"sizes": rows, "throughput": common.run_case(MODULE, {"part": "throughput", "workdir": str(workdir)})}


def throughput(case: dict) -> dict:
  """Train tokens/s of the tiny model (gpt2 tokens) from the 10 MB prepared shards and from the same text
  tokenized into memory: the same step, only where the windows come from differs."""
  import jax

  from wavefield_jax import input_pipeline
  from wavefield_jax.prepared import load_prepared
  from wavefield_jax.tokenizers import get_tokenizer
  from wavefield_jax.train_lib import init_state, make_train_step

  sys.path.insert(0, str(Path(__file__).parent.parent / "configs"))
  import tiny

  config = tiny.get_config()
  config.model.vocab_size = 50304
  tokenizer = get_tokenizer("gpt2")
  prepared = load_prepared(Path(case["workdir"]) / "prepared_10mb", tokenizer)["train"]
  held = prepared[:]  # the same tokens, in memory
  graphdef, state, optimizer = init_state(config, seed=0)
  step = make_train_step(graphdef, optimizer, skip_nonfinite=False)
  rates, holder = {}, {"state": state}  # the step donates its state: one holder carries it through
  for name, tokens in (("in_memory", held), ("prepared", prepared), ("in_memory_again", held)):
    batches = iter(input_pipeline.train_dataset(tokens, config.data.seq_len, config.train.batch_size, seed=0))

    def one_step(batches=batches):
      holder["state"], metrics = step(holder["state"], next(batches))
      jax.block_until_ready(metrics["loss"])

    timing = common.time_call(one_step, repeats=200, warmup=5)
    rates[name] = config.train.batch_size * config.data.seq_len / timing["median_s"]
  return {"tokens_per_s": rates}


def mask(case: dict) -> dict:
  import jax
  import jax.numpy as jnp

  from wavefield_jax.config import base_config
  from wavefield_jax.train_lib import init_state, make_train_step

  config = base_config()
  config.model.mixers, config.model.wave_method, config.model.max_len = ("wave",) * 4, "matmul", 4096
  graphdef, state, optimizer = init_state(config, seed=0)
  step = make_train_step(graphdef, optimizer, skip_nonfinite=False)
  rng = np.random.default_rng(0)
  batch = jnp.asarray(rng.integers(0, 256, (2, 4097)), jnp.int32)
  segment_ids = jnp.asarray(np.cumsum(rng.random((2, 4097)) < 1 / 1000, axis=1), jnp.int32)  # ~1k-token documents
  holder = {"state": state}
  times = {}
  for name, ids in (
    ("unmasked", None),
    ("masked", segment_ids),
    ("unmasked_again", None),
    ("masked_again", segment_ids),
  ):

    def one_step(ids=ids):
      holder["state"], metrics = step(holder["state"], batch, None, ids)
      jax.block_until_ready(metrics["loss"])

    times[name] = common.time_call(one_step, repeats=case["repeats"], warmup=2)["median_s"]
  return {"step_ms": {k: 1e3 * v for k, v in times.items()}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--parts", default="prepare,train,mask")
  parser.add_argument("--sizes-mb", default="10,100,1000")
  parser.add_argument("--workdir", default="/tmp/wavefield_corpora")
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  workdir = Path(args.workdir)
  sizes = [int(s) for s in args.sizes_mb.split(",")]
  path = common.RESULTS / "corpora.json"
  results = json.loads(path.read_text()) if path.exists() else {}
  results["machine"] = common.machine()
  parts = args.parts.split(",")
  if "prepare" in parts:
    results["prepare"] = prepare_part(workdir, sizes)
  if "train" in parts:
    results["train"] = train_part(workdir, sizes)
  if "mask" in parts:
    results["mask"] = common.run_case(MODULE, {"part": "mask", "repeats": args.repeats})
  write(results)


def write(results: dict) -> None:
  lines = []
  if "prepare" in results:
    p = results["prepare"]
    ratio = p["worker_tokens_per_s"] / p["bare_tokens_per_s"]
    lines.append(
      f"**Prepare** (GPT-2 tokens): one worker {p['worker_tokens_per_s']:,.0f} tokens/s ({p['worker_mb_per_s']:.1f}"
      f" MB/s) against the bare tokenizer's {p['bare_tokens_per_s']:,.0f} ({p['bare_mb_per_s']:.1f} MB/s):"
      f" **{ratio:.2f}x** (target 0.8x)."
    )
    sizes = p["sizes"]
    rows = [[f"{r['megabytes']:,} MB", f"{r['seconds']:.1f}", f"{r['peak_rss_mib']:,.0f}"] for r in sizes]
    lines.append(common.markdown_table(rows, ["text", "prepare wall s (2 workers)", "peak RSS MiB (all processes)"]))
    by = {r["megabytes"]: r for r in sizes}
    if 100 in by and 1000 in by:
      lines.append(
        f"Peak RSS at 1 GB / 100 MB: **{by[1000]['peak_rss_mib'] / by[100]['peak_rss_mib']:.2f}x** (target 1.2x)."
      )
  if "train" in results:
    t = results["train"]
    rows = [[f"{r['megabytes']:,} MB", f"{r['seconds']:.1f}", f"{r['peak_rss_mib']:,.0f}"] for r in t["sizes"]]
    lines.append(common.markdown_table(rows, ["prepared text", "train 2 steps, wall s", "peak RSS MiB"]))
    by = {r["megabytes"]: r for r in t["sizes"]}
    if 10 in by and 1000 in by:
      lines.append(
        f"At 1 GB / 10 MB: wall time **{by[1000]['seconds'] / by[10]['seconds']:.2f}x**, peak RSS"
        f" **{by[1000]['peak_rss_mib'] / by[10]['peak_rss_mib']:.2f}x** (targets 1.1x)."
      )
    rates = t["throughput"].get("tokens_per_s")
    if rates:
      memory = (rates["in_memory"] + rates["in_memory_again"]) / 2
      lines.append(
        f"Train tokens/s (tiny model, GPT-2 tokens): prepared shards {rates['prepared']:,.0f}, in memory"
        f" {memory:,.0f} (two runs around it): in memory / prepared **{memory / rates['prepared']:.3f}x**"
        " (target 1.03x)."
      )
  if "mask" in results and "step_ms" in results["mask"]:
    ms = results["mask"]["step_ms"]
    masked, unmasked = (ms["masked"] + ms["masked_again"]) / 2, (ms["unmasked"] + ms["unmasked_again"]) / 2
    lines.append(
      f"**Document masking** (wave, matmul form, D=128, 4 layers, 2 x 4096 tokens, documents of about 1k tokens):"
      f" masked step {masked:.0f} ms, unmasked {unmasked:.0f} ms: **{masked / unmasked:.2f}x** (target 1.15x)."
    )
  common.write_results("corpora", results, "\n\n".join(lines))


def case(case: dict) -> dict:
  return {"throughput": throughput, "mask": mask}[case["part"]](case)


if __name__ == "__main__":
  if not common.case_main(case):
    main()
