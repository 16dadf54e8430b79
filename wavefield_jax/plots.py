"""Every picture the library draws: training curves, head kernels and fields, the medium, information flow,
the constants and the selective clock. Each function takes arrays or a model and writes one PNG.

matplotlib is imported on the first plot, with the file-only Agg backend, so that training and the
command-line tools start without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from flax import nnx

from wavefield_jax import analysis, physics
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


def plot_kernels(model: nnx.Module, length: int, path: str | Path) -> None:
  """Each layer's head kernels for t < length, one panel per layer. Shown divided by their normalisation
  1 - exp(-damping), so that global heads (tiny, long kernels) are as visible as local ones."""
  plt = pyplot()
  mixers = analysis.wave_mixers(model)
  fig, axes = plt.subplots(len(mixers), 1, figsize=(8, 2.4 * len(mixers)), squeeze=False, sharex=True)
  t = np.arange(length)
  for ax, (name, mixer) in zip(axes[:, 0], mixers, strict=True):
    speed, damping, phase = mixer.constants()
    kernel = np.asarray(physics.wave_kernel(speed, damping, phase, length), np.float64)  # [H, L]
    scale = -np.expm1(-np.asarray(damping, np.float64))  # [H]
    for head, k in enumerate(kernel / scale[:, None]):
      line = ax.plot(t, k, lw=1.1, label=f"head {head}")[0]
      ax.fill_between(
        t, -np.exp(-float(damping[head]) * t), np.exp(-float(damping[head]) * t), color=line.get_color(), alpha=0.06
      )
    ax.set_title(f"layer {analysis.layer_name(name)}", fontsize=10)
    ax.set_ylabel("k(t) / (1 - exp(-g))")
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7, ncols=min(8, kernel.shape[0]), loc="upper right")
  axes[-1, 0].set_xlabel("lag t (tokens); shaded: the envelope exp(-g t)")
  save(fig, path)


def plot_fields(model: nnx.Module, length: int, path: str | Path) -> None:
  """Each head's field matrix W[t, s] = k(t - s) (rows: layers, columns: heads); zero above the diagonal."""
  plt = pyplot()
  mixers = analysis.wave_mixers(model)
  heads = mixers[0][1].num_heads
  fig, axes = plt.subplots(len(mixers), heads, figsize=(1.9 * heads, 1.9 * len(mixers)), squeeze=False)
  for row, (name, mixer) in zip(axes, mixers, strict=True):
    field = np.asarray(physics.wave_field(*mixer.constants(), length))  # [H, L, L]
    for head, ax in enumerate(row):
      limit = np.abs(field[head]).max()
      ax.imshow(field[head], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f"L{analysis.layer_name(name)} H{head}", fontsize=8)
  fig.suptitle("field W[t, s] (row t: output token, column s: source token)", fontsize=9)
  save(fig, path)


def plot_medium(model: nnx.Module, length: int, steps: int, path: str | Path) -> None:
  """Space-time pictures of a wave leaving one token, one per head of each layer (see `medium_response`)."""
  plt = pyplot()
  mixers = analysis.wave_mixers(model)
  heads = mixers[0][1].num_heads
  fig, axes = plt.subplots(len(mixers), heads, figsize=(2.2 * heads, 2.0 * len(mixers)), squeeze=False)
  for row, (name, mixer) in zip(axes, mixers, strict=True):
    speed, damping, _ = (np.asarray(a, np.float64) for a in mixer.constants())
    for head, ax in enumerate(row):
      response = analysis.medium_response(speed[head], damping[head], length, steps)
      ax.imshow(response, origin="lower", aspect="auto", cmap="magma", extent=(-length, length, 0, steps))
      ax.set_title(
        f"L{analysis.layer_name(name)} H{head}: c={speed[head]:.2f}, 1/g={1 / damping[head]:.0f}", fontsize=7
      )
      ax.tick_params(labelsize=6)
  for ax in axes[-1]:
    ax.set_xlabel("position (tokens)", fontsize=7)
  for ax in axes[:, 0]:
    ax.set_ylabel("time", fontsize=7)
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
