"""The pictures drawn from arrays and metrics: training curves, information flow, the constants and the
selective clock (the pictures of a model's heads are `analysis.plot_kernels`, `plot_fields`, `plot_medium`).
Each function writes one PNG.

matplotlib is imported on the first plot, with the file-only Agg backend, so that training and the
command-line tools start without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wavefield_jax.workdir import read_metrics


def pyplot():
  """matplotlib.pyplot on the Agg backend (no display needed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def save(fig, path: str | Path, dpi: int = 110) -> None:
  """Lays the figure out, writes it to `path` and frees it."""
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  pyplot().close(fig)


def plot_losses(metrics_path: Path, out: Path) -> None:
  """Train and validation loss against step from a run's metrics.jsonl."""
  plt = pyplot()
  rows = read_metrics(metrics_path)
  train = [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]
  valid = [(r["step"], r["loss"]) for r in rows if r["kind"] == "eval"]
  fig, ax = plt.subplots(figsize=(7, 4))
  if train:
    ax.plot(*zip(*train, strict=True), label="train loss", alpha=0.8)
  if valid:
    ax.plot(*zip(*valid, strict=True), "o-", label="validation loss")
  ax.set_xlabel("step")
  ax.set_ylabel("nats per token")
  ax.grid(alpha=0.3)
  ax.legend()
  save(fig, out)


def plot_clock(clocks: Sequence[tuple[str, np.ndarray]], path: str | Path, labels: Sequence[str] | None = None) -> None:
  """The first row's clock steps, heads by positions, one panel per selective layer (log colour scale);
  `labels` names the positions (e.g. the characters of the text)."""
  plt = pyplot()
  from matplotlib.colors import LogNorm

  fig, axes = plt.subplots(len(clocks), 1, figsize=(10, 1.2 + 0.5 * clocks[0][1].shape[2] * len(clocks)), squeeze=False)
  for ax, (name, delta) in zip(axes[:, 0], clocks, strict=True):
    image = ax.imshow(delta[0].T, aspect="auto", cmap="viridis", norm=LogNorm(), interpolation="nearest")
    ax.set_title(f"layer {name}: clock step delta per token (1 = the time-invariant wave)", fontsize=9)
    ax.set_ylabel("head")
    if labels is not None:
      ax.set_xticks(np.arange(len(labels)), labels, fontsize=6)
    fig.colorbar(image, ax=ax, fraction=0.03)
  axes[-1, 0].set_xlabel("position")
  save(fig, path)


def plot_flow(flow: np.ndarray, path: str | Path, labels: Sequence[str] | None = None) -> None:
  """The information-flow map of `information_flow` on a log colour scale."""
  from matplotlib.colors import LogNorm

  plt = pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4.8))
  positive = flow[flow > 0]
  floor = positive.max() * 1e-4 if positive.size else 1.0
  image = ax.imshow(np.maximum(flow, floor), cmap="viridis", norm=LogNorm(vmin=floor, vmax=max(flow.max(), floor)))
  fig.colorbar(image, ax=ax, label="|d logits[t] / d embedding[s]|")
  if labels is not None and len(labels) <= 64:
    ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
  ax.set_xlabel("source position s")
  ax.set_ylabel("output position t")
  ax.set_title("information flow through all layers")
  save(fig, path)


def plot_constants(rows: Sequence[dict], path: str | Path) -> None:
  """Decay length against period for every head, arrows from the initial values where known."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.5))
  layers = list(dict.fromkeys(r["layer"] for r in rows))
  colours = plt.get_cmap("tab10")
  for i, layer in enumerate(layers):
    mine = [r for r in rows if r["layer"] == layer]
    ax.scatter(
      [r["period"] for r in mine], [r["decay_length"] for r in mine], color=colours(i % 10), label=f"layer {layer}"
    )
    for r in mine:
      if "period_init" in r:
        ax.annotate(
          "",
          xy=(r["period"], r["decay_length"]),
          xytext=(r["period_init"], r["decay_length_init"]),
          arrowprops={"arrowstyle": "->", "color": colours(i % 10), "alpha": 0.5},
        )
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("period 2 pi / speed (tokens)")
  ax.set_ylabel("decay length 1 / damping (tokens)")
  ax.set_title("head constants (arrows: from initial values)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  save(fig, path)
