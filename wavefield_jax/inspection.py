"""Inspect a trained model: its heads' physical constants, their kernels and fields, waves in the
medium, the information-flow map and the loss's sensitivity to each constant.

  python -m wavefield_jax.inspection --workdir runs/default [--step N] [--text FILE] [--length 96]

Writes PNG files and report.md into WORKDIR/inspect/ (or --out) and prints the constants table.
The text the flow map and the gradients are measured on is --text, or else the validation split of
the shipped corpus.
"""

from __future__ import annotations


def main() -> None:
  """The `wavefield-inspect` command."""
  from absl import flags

  from wavefield_jax import cli, tables

  cli.define_workdir_flags("inspect")
  flags.DEFINE_string("out", None, "Where to write the report (default: WORKDIR/inspect).")
  flags.DEFINE_string("text", None, "Text to measure flow and gradients on (default: validation split).")
  flags.DEFINE_integer("length", 96, "Tokens in the information-flow map and the field pictures.")
  flags.DEFINE_integer("windows", 16, "Windows of the training length for the loss gradients.")

  def body(f) -> None:
    from wavefield_jax.report import TABLE_COLUMNS, inspect_workdir  # JAX loads after the flags parse

    result = inspect_workdir(f.workdir, f.out, f.step, f.text, f.length, f.windows)
    print(f"step {result['step']}: physical constants per head\n")
    print(tables.markdown_table(result["constants"], TABLE_COLUMNS))
    print("\nwrote " + ", ".join(result["files"]))

  cli.run(body, errors=(OSError,), doc=__doc__)


if __name__ == "__main__":
  main()
