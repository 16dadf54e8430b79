"""The report of a trained run (what `wavefield-inspect` writes): its heads' constants against their start,
the pictures of kernels, fields and the medium, the information-flow map and the loss's gradient per constant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wavefield_jax import analysis, input_pipeline, plots, tables, tokenizers
from wavefield_jax.errors import DataError

TABLE_COLUMNS = ("layer", "head", "speed", "speed_init", "damping", "damping_init", "decay_length", "period", "phase")
GRADIENT_COLUMNS = (
  "layer",
  "head",
  "d_speed",
  "d_damping",
  "d_phase",
  "speed_x_grad",
  "damping_x_grad",
  "phase_x_grad",
)


def inspect_workdir(
  workdir: str | Path,
  out: str | Path | None = None,
  step: int | None = None,
  text: str | Path | None = None,
  length: int = 96,
  windows: int = 16,
) -> dict:
  """Writes the report for the checkpoint of `workdir`; returns {"step", "constants", "gradients", "files"}."""
  model, initial, config, step = analysis.load(workdir, step)
  out = Path(out) if out else Path(workdir) / "inspect"
  out.mkdir(parents=True, exist_ok=True)
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  if text is None:
    tokens = input_pipeline.load_corpus(config.data).tokens["validation"]
  else:
    tokens = tokenizer.encode(Path(text).read_bytes())
  if tokens.size < length + 1:
    raise DataError(f"the text has {tokens.size} tokens; the report needs at least {length + 1}")

  constants = analysis.constants_table(model, initial)
  eval_windows, weights = input_pipeline.eval_windows(tokens, config.data.seq_len, windows)
  gradients = analysis.constant_gradients(model, eval_windows, weights)
  flow_tokens = np.asarray(tokens[:length])
  flow = analysis.information_flow(model, flow_tokens)
  labels = [tokenizer.decode(np.asarray([t])) for t in flow_tokens]

  files = {
    "constants": "constants.png",
    "kernels": "kernels.png",
    "fields": "fields.png",
    "medium": "medium.png",
    "flow": "flow.png",
  }
  plots.plot_constants(constants, out / files["constants"])
  analysis.plot_kernels(model, length, out / files["kernels"])
  analysis.plot_fields(model, min(length, 64), out / files["fields"])
  analysis.plot_medium(model, length, length, out / files["medium"])
  plots.plot_flow(flow, out / files["flow"], labels if length <= 64 else None)

  reach = _flow_reach(flow)
  report = [
    f"# Inspection of {workdir} at step {step}",
    "",
    "## Physical constants per head (with initial values)",
    "",
    tables.markdown_table(constants, TABLE_COLUMNS),
    "",
    "![constants](constants.png)",
    "",
    "## Kernels and fields",
    "",
    "![kernels](kernels.png)",
    "",
    "![fields](fields.png)",
    "",
    "## A wave leaving one token (damped wave equation with each head's speed and damping)",
    "",
    "![medium](medium.png)",
    "",
    f"## Information flow over the first {length} tokens",
    "",
    f"Median share of the gradient from more than 8 tokens back: {reach:.1%}.",
    "",
    "![flow](flow.png)",
    "",
    f"## Validation loss gradient with respect to each constant ({len(eval_windows)} windows)",
    "",
    tables.markdown_table(gradients, GRADIENT_COLUMNS),
    "",
  ]
  (out / "report.md").write_text("\n".join(report))
  result = {"step": step, "constants": constants, "gradients": gradients}
  (out / "analysis.json").write_text(json.dumps(result, indent=1) + "\n")
  return result | {"files": [str(out / f) for f in [*files.values(), "report.md", "analysis.json"]]}


def _flow_reach(flow) -> float:
  """The median over output positions t >= 16 of the share of squared flow from sources s < t - 8."""
  import numpy as np

  shares = []
  for t in range(16, flow.shape[0]):
    row = np.square(flow[t, : t + 1])
    shares.append(row[: t - 8].sum() / row.sum())
  return float(np.median(shares)) if shares else float("nan")
