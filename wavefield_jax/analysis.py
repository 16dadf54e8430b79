"""Seeing the waves: what each head learned, how information flows, and where the loss is sensitive.

Everything here works on any Flax NNX module that contains `WaveFieldMixer`s (a `WaveFieldLM` or a
user's own model); `load` builds the model of a training workdir together with its initial state, so
that the trained constants can be shown beside the ones the run started from.

  rows = constants_table(model, initial)              # one row per (layer, head)
  flow = information_flow(model, tokens)              # [L, L]: |d logits[t] / d embedding[s]|
  sens = constant_gradients(model, windows)           # d loss / d (speed, damping, phase) per head
  clocks = clock_steps(model, tokens)                 # the selective layers' delta [B, L, H]
  matches = retention_matches(model, tokens)          # the retention layers' (q_t . k_s) k_h(t - s)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import scipy.special
from flax import nnx

from wavefield_jax import physics
from wavefield_jax.layers import RetentionMixer, SelectiveWaveMixer, WaveFieldMixer, WaveParam

CONSTANTS = ("speed", "damping", "phase")


def wave_mixers(model: nnx.Module) -> list[tuple[str, WaveFieldMixer]]:
  """Every WaveFieldMixer in `model` with its path, e.g. ("blocks/0/mixer", mixer), in model order."""
  found = [
    ("/".join(str(p) for p in path), module)
    for path, module in nnx.iter_modules(model)
    if isinstance(module, WaveFieldMixer)
  ]
  if not found:
    raise ValueError(f"{type(model).__name__} contains no WaveFieldMixer: there are no wave constants to analyse")
  return found


def _layer_name(path: str) -> str:
  """'blocks/2/mixer' -> '2' (the layer index of a WaveFieldLM); other paths as they are."""
  parts = path.split("/")
  return parts[1] if len(parts) == 3 and parts[0] == "blocks" and parts[2] == "mixer" else path


def head_constants(speed: float, damping: float, phase: float) -> dict:
  """One head's constants and what they mean in tokens.

  decay_length = 1 / damping: the envelope falls by e every that many tokens.
  period = 2 pi / speed: tokens per oscillation of the kernel.
  """
  return {
    "speed": speed,
    "damping": damping,
    "phase": phase,
    "decay_length": 1.0 / damping,
    "period": 2.0 * math.pi / speed,
  }


def constants_table(model: nnx.Module, initial: nnx.Module | None = None) -> list[dict]:
  """One row per layer and head: speed, damping, phase, decay length and period in tokens; with
  `initial` (the same model before training), also each value's initial value under `<name>_init`."""
  rows = []
  pairs = wave_mixers(model)
  initial_pairs = wave_mixers(initial) if initial is not None else [(None, None)] * len(pairs)
  if len(initial_pairs) != len(pairs):
    raise ValueError(f"initial has {len(initial_pairs)} wave mixers; model has {len(pairs)}")
  for (path, mixer), (_, start) in zip(pairs, initial_pairs, strict=True):
    now = np.stack([np.asarray(a, np.float64) for a in mixer.constants()], axis=1)  # [H, 3]
    before = np.stack([np.asarray(a, np.float64) for a in start.constants()], axis=1) if start else None
    for head in range(now.shape[0]):
      row = {"layer": _layer_name(path), "head": head} | head_constants(*now[head])
      if before is not None:
        row |= {f"{k}_init": v for k, v in head_constants(*before[head]).items()}
      rows.append(row)
  return rows


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
  """Rows of `constants_table` or `constant_gradients` as a Markdown table (4 significant digits)."""
  columns = list(columns or rows[0].keys())

  def cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
  return "\n".join(lines)


def medium_response(speed: float, damping: float, length: int, steps: int) -> np.ndarray:
  """A wave travelling out from one token through a 1-D damped medium with this head's constants.

  The Green's function of the damped wave (telegraph) equation u_tt + 2 gamma u_t = c^2 u_xx for an
  impulse at x = 0, t = 0: G(x, t) = exp(-gamma t) / (2c) * I0(gamma / c * sqrt(c^2 t^2 - x^2)) inside
  the light cone |x| < c t, zero outside. The front moves c tokens per step; damping fades it and
  leaves a wake behind it. (A head's kernel is this medium's mode of unit wavenumber.)

  Returns:
    [steps, 2 * length + 1] float64: rows are time 0..steps-1, columns positions -length..length.
  """
  c, gamma = float(speed), float(damping)
  t = np.arange(steps, dtype=np.float64)[:, None]
  x = np.arange(-length, length + 1, dtype=np.float64)[None, :]
  inside = c * t - np.abs(x)
  radius = np.sqrt(np.clip((c * t) ** 2 - x**2, 0.0, None))
  # I0(z) exp(-gamma t) computed as i0e(z) exp(z - gamma t), which neither overflows nor underflows early.
  z = gamma / c * radius
  field = np.exp(z - gamma * t) * scipy.special.i0e(z) / (2.0 * c)
  return np.where(inside > 0, field, 0.0)


def information_flow(model: nnx.Module, tokens: jax.Array, *, probes: int | None = 16, seed: int = 0) -> np.ndarray:
  """How much each input position moves each output: F[t, s] = ||d logits[t] / d embedding[s]||_F.

  The model must offer `embed` and `from_embeddings` (as `WaveFieldLM` does). Causality shows as
  F[t, s] = 0 for s > t. Each entry is the Frobenius norm of a [V, D] Jacobian block; with `probes`,
  it is estimated from that many Gaussian vectors v (E||v^T J||^2 = ||J||_F^2), with probes=None it is
  exact (one vector-Jacobian product per vocabulary entry: only for small vocabularies).

  Args:
    tokens: [L] int.

  Returns:
    [L, L] float64.
  """
  tokens = jnp.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(f"tokens must be [L]; got shape {tokens.shape}")
  graphdef, state = nnx.split(model)
  vocab = model.embed.num_embeddings
  if probes is None:
    vectors, scale = jnp.eye(vocab), 1.0
  else:
    vectors, scale = jax.random.normal(jax.random.key(seed), (probes, vocab)), 1.0 / probes

  @jax.jit
  def flow(state, tokens, vectors):
    net = nnx.merge(graphdef, state)
    embedded = net.embed(tokens[None])  # [1, L, D]
    logits, vjp = jax.vjp(lambda x: net.from_embeddings(x)[0], embedded)  # [L, V]

    def row(t):  # [L]: squared norms of d logits[t] / d embedding[s] for every s
      def one(vector):
        (grad,) = vjp(jnp.zeros_like(logits).at[t].set(vector))
        return jnp.sum(jnp.square(grad[0]), axis=-1)

      return jax.lax.map(one, vectors, batch_size=64).sum(0) * scale

    return jnp.sqrt(jax.lax.map(row, jnp.arange(tokens.shape[0])))

  return np.asarray(flow(state, tokens, vectors), np.float64)


def constant_gradients(
  model: nnx.Module, windows: jax.Array, weights: jax.Array | None = None, batch_size: int = 8
) -> list[dict]:
  """The gradient of the mean next-token loss with respect to each head's physical constants.

  Gradients are taken in the physical values (speed, damping, phase), not the raw trained numbers:
  d loss / d speed, d loss / d damping, d loss / d phase, plus `<name>_x_grad` = value * gradient,
  the change in loss per relative change of the constant (comparable across constants).

  Args:
    windows: [N, L + 1] int token windows (inputs and next-token targets).
    weights: optional [N, L] weights of each target (e.g. from `data.eval_windows`).

  Returns:
    One row per layer and head, in the order of `constants_table`.
  """
  windows = jnp.asarray(windows)
  if windows.ndim != 2 or windows.shape[1] < 2:
    raise ValueError(f"windows must be [N, L + 1] with L >= 1; got shape {windows.shape}")
  weights = jnp.ones((windows.shape[0], windows.shape[1] - 1)) if weights is None else jnp.asarray(weights)
  graphdef, wave_state, rest = nnx.split(model, WaveParam, ...)

  @jax.jit
  def batch_grad(wave_state, windows, weights):
    def loss(wave_state):
      net = nnx.merge(graphdef, wave_state, rest)
      losses = optax.softmax_cross_entropy_with_integer_labels(net(windows[:, :-1]), windows[:, 1:])
      return (losses * weights).sum()

    return jax.grad(loss)(wave_state)

  total = None
  for start in range(0, windows.shape[0], batch_size):
    grads = batch_grad(wave_state, windows[start : start + batch_size], weights[start : start + batch_size])
    total = grads if total is None else jax.tree.map(jnp.add, total, grads)
  total = jax.tree.map(lambda g: g / weights.sum(), total)
  grad_model = nnx.merge(graphdef, total, rest)  # raw-parameter gradients laid out like the model
  rows = []
  for (path, mixer), (_, grad) in zip(wave_mixers(model), wave_mixers(grad_model), strict=True):
    speed, damping, phase = (np.asarray(a, np.float64) for a in mixer.constants())
    # Chain rule back to the physical values: speed = softplus(raw), damping = exp(raw), phase = raw.
    sigmoid = 1.0 / (1.0 + np.exp(-np.asarray(mixer.speed_raw[...], np.float64)))
    d_speed = np.asarray(grad.speed_raw[...], np.float64) / sigmoid
    d_damping = np.asarray(grad.damping_log[...], np.float64) / damping
    d_phase = np.asarray(grad.phase[...], np.float64)
    for head in range(speed.shape[0]):
      values = {"speed": speed[head], "damping": damping[head], "phase": phase[head]}
      grads = {"speed": d_speed[head], "damping": d_damping[head], "phase": d_phase[head]}
      row = {"layer": _layer_name(path), "head": head}
      row |= {f"d_{k}": float(grads[k]) for k in CONSTANTS}
      row |= {f"{k}_x_grad": float(values[k] * grads[k]) for k in CONSTANTS}
      rows.append(row)
  return rows


def load(workdir: str | Path, step: int | None = None) -> tuple[nnx.Module, nnx.Module, ml_collections.ConfigDict, int]:
  """The model of a training workdir at its latest (or given) checkpoint, and the same model as the
  run initialised it (its seed), for before/after comparisons.

  Returns:
    model, initial model, config, step.
  """
  from wavefield_jax.train_lib import build_model
  from wavefield_jax.workdir import load_trained

  graphdef, params, config, step = load_trained(workdir, step)
  model = nnx.merge(graphdef, params)
  _, _, initial = build_model(config, config.seed)
  return model, initial, config, step


# Plots. Each takes arrays or a model and writes one PNG; matplotlib is imported only here.


def _mixer_inputs(model: nnx.Module, tokens: jax.Array) -> list[tuple[str, nnx.Module, jax.Array]]:
  """(layer name, mixer, the mixer's input [B, L, D]) for every block of a WaveFieldLM on tokens [B, L]."""
  x = model.embed(jnp.asarray(tokens))
  found = []
  for index, block in enumerate(model.blocks):
    found.append((str(index), block.mixer, block.mixer_norm(x)))
    x = block(x)
  return found


def clock_steps(model: nnx.Module, tokens: jax.Array) -> list[tuple[str, np.ndarray]]:
  """How fast each selective layer's clock runs at each token: (layer, delta [B, L, H]) per such layer.

  delta near 0 holds the head's field still over that token (what came before is kept); a large delta
  flushes it (the decay exp(-damping * delta) wipes the state) and writes the token in."""
  found = [
    (name, np.asarray(mixer.clock_steps(x)))
    for name, mixer, x in _mixer_inputs(model, tokens)
    if isinstance(mixer, SelectiveWaveMixer)
  ]
  if not found:
    raise ValueError(f"{type(model).__name__} has no selective layer: there is no clock to show")
  return found


def retention_matches(model: nnx.Module, tokens: jax.Array) -> list[tuple[str, np.ndarray]]:
  """Which sources each retention layer reads: (layer, M [B, H, L, L]) per such layer, with
  M[b, h, t, s] = (q_t . k_s) k_h(t - s) for s <= t, so that the layer's field output is M @ v
  (before its per-head norm). O(L^2): for short texts and pictures."""
  found = []
  for name, mixer, x in _mixer_inputs(model, tokens):
    if not isinstance(mixer, RetentionMixer):
      continue
    q, k, _, _, _ = mixer._queries_keys(x, None)  # [B, L, H, K]
    field = physics.wave_field(*mixer.constants(), x.shape[1])  # [H, L, L]
    found.append((name, np.asarray(jnp.einsum("bthk,bshk->bhts", q, k) * field[None])))
  if not found:
    raise ValueError(f"{type(model).__name__} has no retention layer: there are no matches to show")
  return found


def plot_clock(clocks: Sequence[tuple[str, np.ndarray]], path: str | Path, labels: Sequence[str] | None = None) -> None:
  """The first row's clock steps, heads by positions, one panel per selective layer (log colour scale);
  `labels` names the positions (e.g. the characters of the text)."""
  plt = _pyplot()
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
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def plot_kernels(model: nnx.Module, length: int, path: str | Path) -> None:
  """Each layer's head kernels for t < length, one panel per layer. Shown divided by their normalisation
  1 - exp(-damping), so that global heads (tiny, long kernels) are as visible as local ones."""
  plt = _pyplot()
  mixers = wave_mixers(model)
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
    ax.set_title(f"layer {_layer_name(name)}", fontsize=10)
    ax.set_ylabel("k(t) / (1 - exp(-g))")
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7, ncols=min(8, kernel.shape[0]), loc="upper right")
  axes[-1, 0].set_xlabel("lag t (tokens); shaded: the envelope exp(-g t)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_fields(model: nnx.Module, length: int, path: str | Path) -> None:
  """Each head's field matrix W[t, s] = k(t - s) (rows: layers, columns: heads); zero above the diagonal."""
  plt = _pyplot()
  mixers = wave_mixers(model)
  heads = mixers[0][1].num_heads
  fig, axes = plt.subplots(len(mixers), heads, figsize=(1.9 * heads, 1.9 * len(mixers)), squeeze=False)
  for row, (name, mixer) in zip(axes, mixers, strict=True):
    field = np.asarray(physics.wave_field(*mixer.constants(), length))  # [H, L, L]
    for head, ax in enumerate(row):
      limit = np.abs(field[head]).max()
      ax.imshow(field[head], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f"L{_layer_name(name)} H{head}", fontsize=8)
  fig.suptitle("field W[t, s] (row t: output token, column s: source token)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_medium(model: nnx.Module, length: int, steps: int, path: str | Path) -> None:
  """Space-time pictures of a wave leaving one token, one per head of each layer (see `medium_response`)."""
  plt = _pyplot()
  mixers = wave_mixers(model)
  heads = mixers[0][1].num_heads
  fig, axes = plt.subplots(len(mixers), heads, figsize=(2.2 * heads, 2.0 * len(mixers)), squeeze=False)
  for row, (name, mixer) in zip(axes, mixers, strict=True):
    speed, damping, _ = (np.asarray(a, np.float64) for a in mixer.constants())
    for head, ax in enumerate(row):
      response = medium_response(speed[head], damping[head], length, steps)
      ax.imshow(response, origin="lower", aspect="auto", cmap="magma", extent=(-length, length, 0, steps))
      ax.set_title(f"L{_layer_name(name)} H{head}: c={speed[head]:.2f}, 1/g={1 / damping[head]:.0f}", fontsize=7)
      ax.tick_params(labelsize=6)
  for ax in axes[-1]:
    ax.set_xlabel("position (tokens)", fontsize=7)
  for ax in axes[:, 0]:
    ax.set_ylabel("time", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_flow(flow: np.ndarray, path: str | Path, labels: Sequence[str] | None = None) -> None:
  """The information-flow map of `information_flow` on a log colour scale."""
  from matplotlib.colors import LogNorm

  plt = _pyplot()
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
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_constants(rows: Sequence[dict], path: str | Path) -> None:
  """Decay length against period for every head, arrows from the initial values where known."""
  plt = _pyplot()
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
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
