"""Markdown tables of results: the reports of `wavefield-inspect` and every benchmark (no JAX needed)."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(rows: Sequence[dict] | Sequence[Sequence], columns: Sequence[str] | None = None) -> str:
  """A Markdown table of dict rows (`constants_table`, `constant_gradients`: the named `columns`, all by
  default) or of sequence rows under the header `columns`. Floats get 4 significant digits."""
  columns = list(columns or rows[0].keys())

  def cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

  def cells(row) -> list:
    return [row[c] for c in columns] if isinstance(row, dict) else list(row)

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(value) for value in cells(row)) + " |" for row in rows]
  return "\n".join(lines)
