"""What trained selective models do with their clock on held-out text: per layer and head, how often a
token holds the field still (delta < 0.2), runs it near the time-invariant wave (0.2 <= delta <= 5) or
flushes it (delta > 5), and how widely delta varies (its 90th over its 10th percentile).

  python -m benchmarks.clocks benchmarks/runs/quality/small/6000_steps/selective_s0 [more workdirs] [--tag T]

Each workdir is a finished `benchmarks.quality` run (or any run whose model has selective layers); the
text is the first 16 windows of the validation plays. Results: benchmarks/results/clocks[_<tag>].{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from flax import nnx

from benchmarks import common
from wavefield_jax import analysis, input_pipeline, sources, tokenizers
from wavefield_jax.checkpointing import load_trained

HOLD, FLUSH = 0.2, 5.0


def clock_rows(workdir: Path, windows: int = 16) -> list[dict]:
  """One row per (layer, head) of the run's selective layers."""
  graphdef, params, config, step = load_trained(workdir)
  model = nnx.merge(graphdef, params)
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  corpus = input_pipeline.tokenize(sources.shakespeare_documents(), tokenizer, config.data.seq_len)
  text, _ = input_pipeline.eval_windows(corpus.tokens["validation"], config.data.seq_len, windows)
  rows = []
  for layer, delta in analysis.clock_steps(model, text[:, :-1]):
    steps = delta.reshape(-1, delta.shape[-1])  # [N, H]
    for head in range(steps.shape[1]):
      d = steps[:, head]
      rows.append(
        {
          "run": workdir.name,
          "step": step,
          "layer": layer,
          "head": head,
          "hold": float((d < HOLD).mean()),
          "wave_like": float(((d >= HOLD) & (d <= FLUSH)).mean()),
          "flush": float((d > FLUSH).mean()),
          "median": float(np.median(d)),
          "p90_over_p10": float(np.quantile(d, 0.9) / np.quantile(d, 0.1)),
        }
      )
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", type=Path)
  parser.add_argument("--tag", default="", help="results go to clocks[_<tag>].*")
  args = parser.parse_args()
  rows = [row for workdir in args.workdirs for row in clock_rows(workdir)]
  columns = ["run", "layer", "head", "hold", "wave_like", "flush", "median", "p90_over_p10"]
  table = common.markdown_table(rows, columns) + (
    f"\n\nShare of (token, head) clock steps delta that hold the field (< {HOLD}), run it near the"
    f" time-invariant wave ({HOLD} to {FLUSH}) or flush it (> {FLUSH}), on 16 validation windows; median"
    " delta and its 90th / 10th percentile per head."
  )
  payload = {"machine": common.machine(), "rows": rows}
  common.write_results("clocks" + (f"_{args.tag}" if args.tag else ""), payload, table)


if __name__ == "__main__":
  main()
