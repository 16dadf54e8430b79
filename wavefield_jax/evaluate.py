"""Score the latest checkpoint of a workdir on text files it never saw: loss per token and bits per byte.

  python -m wavefield_jax.evaluate --workdir runs/default --text a.txt [--text b.txt ...] [--json]

Each file is read as bytes, tokenized with the run's tokenizer and streamed through the model in
windows of the training length (every target scored once; the first tokens of each window see less
context, as in validation during training).
"""

from __future__ import annotations

import json
from pathlib import Path


def score_files(workdir: str | Path, paths: list[str], step: int | None = None, batch_size: int = 8) -> dict:
  """{"step": int, "files": [{"path", "loss", "bpb", "tokens", "bytes"}, ...]} for each text file."""
  import jax.numpy as jnp

  from wavefield_jax import input_pipeline, sources, tokenizers
  from wavefield_jax.checkpointing import load_trained
  from wavefield_jax.train_lib import evaluate, make_eval_step

  graphdef, params, config, step = load_trained(workdir, step)
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  eval_step = make_eval_step(graphdef)
  token_bytes = jnp.asarray(tokenizer.token_bytes)
  results = []
  for path in paths:
    try:
      raw = Path(path).read_bytes()
    except OSError as error:
      raise sources.DataError(f"cannot read {path}: {error.strerror}") from error
    tokens = tokenizer.encode(raw)
    if tokens.size < 2:
      raise sources.DataError(f"{path} has {tokens.size} token(s); at least 2 are needed to score it")
    windows, weights = input_pipeline.eval_windows(tokens, config.data.seq_len)
    results.append({"path": str(path)} | evaluate(eval_step, params, windows, weights, token_bytes, batch_size))
  return {"step": step, "files": results}


def main() -> None:
  """The `wavefield-evaluate` command."""
  from absl import flags

  from wavefield_jax import cli

  cli.define_workdir_flags("load")
  flags.DEFINE_multi_string("text", None, "A text file to score; repeat for several.", required=True)
  flags.DEFINE_bool("json", False, "Print one JSON object with every result instead of lines.")
  flags.DEFINE_integer("batch_size", 8, "Windows per evaluation batch.")

  def body(f) -> None:
    scores = score_files(f.workdir, f.text, f.step, f.batch_size)
    if f.json:
      print(json.dumps(scores, indent=1))
      return
    for r in scores["files"]:
      counts = f"{r['tokens']:,} tokens, {r['bytes']:,} bytes, step {scores['step']}"
      print(f"{r['path']}: {r['loss']:.4f} nats/token, {r['bpb']:.4f} bits/byte ({counts})")

  cli.run(body, doc=__doc__)


if __name__ == "__main__":
  main()
