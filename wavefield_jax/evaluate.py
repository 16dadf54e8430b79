"""Score the latest checkpoint of a workdir on text files it never saw: loss per token and bits per byte.

  python -m wavefield_jax.evaluate --workdir runs/default --text a.txt [--text b.txt ...] [--context N|document]

Each file is read as bytes and tokenized with the run's tokenizer. By default it is streamed through the model
in windows of the training length (every target scored once; the first tokens of each window see less
context, as in validation during training); --context N uses windows of N tokens instead. --context document
reads each file as one sequence, every token given all that came before: a model of the wave family carries
its state chunk by chunk, in memory flat in the file's length; a model with attention is refused.
"""

from __future__ import annotations

import json


def main() -> None:
  """The `wavefield-evaluate` command."""
  from absl import flags

  from wavefield_jax import cli

  cli.define_workdir_flags("load")
  flags.DEFINE_multi_string("text", None, "A text file to score; repeat for several.", required=True)
  flags.DEFINE_bool("json", False, "Print one JSON object with every result instead of lines.")
  flags.DEFINE_integer("batch_size", 8, "Windows per evaluation batch.")
  flags.DEFINE_string("context", None, "Tokens per window (default: the training length), or 'document'.")

  def body(f) -> None:
    from wavefield_jax.scoring import score_files

    context = int(f.context) if f.context and f.context.isdigit() else f.context  # score_files checks it
    scores = score_files(f.workdir, f.text, f.step, f.batch_size, context)
    if f.json:
      print(json.dumps(scores, indent=1))
      return
    for r in scores["files"]:
      counts = f"{r['tokens']:,} tokens, {r['bytes']:,} bytes, step {scores['step']}, context {scores['context']}"
      print(f"{r['path']}: {r['loss']:.4f} nats/token, {r['bpb']:.4f} bits/byte ({counts})")

  cli.run(body, doc=__doc__)


if __name__ == "__main__":
  main()
