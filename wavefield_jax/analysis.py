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
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import scipy.special
from flax import nnx

from wavefield_jax import mixers, physics, plots
from wavefield_jax.head_constants import physical_constants
from wavefield_jax.layers import RetentionMixer, SelectiveWaveMixer, WaveParam
from wavefield_jax.model import WaveFieldLM

CONSTANTS = ("speed", "damping", "phase")


def wave_mixers(model: nnx.Module) -> list[tuple[str, nnx.Module]]:
  """Every wave-family mixer (`mixers.REGISTRY`) in `model` with its path, e.g. ("blocks/0/mixer", mixer), in
  model order."""
  wave_family = mixers.wave_family_modules()
  found = [
    ("/".join(str(p) for p in path), module)
    for path, module in nnx.iter_modules(model)
    if isinstance(module, wave_family)
  ]
  if not found:
    raise ValueError(f"{type(model).__name__} contains no wave-family mixer: there are no wave constants to analyse")
  return found


def layer_name(path: str) -> str:
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
      row = {"layer": layer_name(path), "head": head} | head_constants(*now[head])
      if before is not None:
        row |= {f"{k}_init": v for k, v in head_constants(*before[head]).items()}
      rows.append(row)
  return rows


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
    weights: optional [N, L] weights of each target (e.g. from `input_pipeline.eval_windows`).

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
    # Chain rule back to the physical values through the layer's own mapping (elementwise, so its
    # Jacobian is the diagonal a JVP with ones gives).
    raw = (mixer.field.speed_raw[...], mixer.field.damping_log[...], mixer.field.phase[...])
    _, slopes = jax.jvp(physical_constants, raw, tuple(jnp.ones_like(r) for r in raw))
    raw_grads = (grad.field.speed_raw[...], grad.field.damping_log[...], grad.field.phase[...])
    d_speed, d_damping, d_phase = (
      np.asarray(g, np.float64) / np.asarray(d, np.float64) for g, d in zip(raw_grads, slopes, strict=True)
    )
    for head in range(speed.shape[0]):
      values = {"speed": speed[head], "damping": damping[head], "phase": phase[head]}
      grads = {"speed": d_speed[head], "damping": d_damping[head], "phase": d_phase[head]}
      row = {"layer": layer_name(path), "head": head}
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
  from wavefield_jax.checkpointing import load_trained  # orbax loads when a workdir is read, not with analysis

  graphdef, params, config, step = load_trained(workdir, step)
  model = nnx.merge(graphdef, params)
  initial = WaveFieldLM(config.model, rngs=nnx.Rngs(config.seed))
  return model, initial, config, step


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
    q, k, _, _, _ = mixer.queries_keys(x, None)  # [B, L, H, K]
    field = physics.wave_field(*mixer.constants(), x.shape[1])  # [H, L, L]
    found.append((name, np.asarray(jnp.einsum("bthk,bshk->bhts", q, k) * field[None])))
  if not found:
    raise ValueError(f"{type(model).__name__} has no retention layer: there are no matches to show")
  return found


def plot_kernels(model: nnx.Module, length: int, path: str | Path) -> None:
  """Each layer's head kernels for t < length, one panel per layer. Shown divided by their normalisation
  1 - exp(-damping), so that global heads (tiny, long kernels) are as visible as local ones."""
  plt = plots.pyplot()
  found = wave_mixers(model)
  fig, axes = plt.subplots(len(found), 1, figsize=(8, 2.4 * len(found)), squeeze=False, sharex=True)
  t = np.arange(length)
  for ax, (name, mixer) in zip(axes[:, 0], found, strict=True):
    speed, damping, phase = mixer.constants()
    kernel = np.asarray(physics.wave_kernel(speed, damping, phase, length), np.float64)  # [H, L]
    scale = -np.expm1(-np.asarray(damping, np.float64))  # [H]
    for head, k in enumerate(kernel / scale[:, None]):
      line = ax.plot(t, k, lw=1.1, label=f"head {head}")[0]
      ax.fill_between(
        t, -np.exp(-float(damping[head]) * t), np.exp(-float(damping[head]) * t), color=line.get_color(), alpha=0.06
      )
    ax.set_title(f"layer {layer_name(name)}", fontsize=10)
    ax.set_ylabel("k(t) / (1 - exp(-g))")
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7, ncols=min(8, kernel.shape[0]), loc="upper right")
  axes[-1, 0].set_xlabel("lag t (tokens); shaded: the envelope exp(-g t)")
  plots.save(fig, path)


def plot_fields(model: nnx.Module, length: int, path: str | Path) -> None:
  """Each head's field matrix W[t, s] = k(t - s) (rows: layers, columns: heads); zero above the diagonal."""
  plt = plots.pyplot()
  found = wave_mixers(model)
  heads = found[0][1].num_heads
  fig, axes = plt.subplots(len(found), heads, figsize=(1.9 * heads, 1.9 * len(found)), squeeze=False)
  for row, (name, mixer) in zip(axes, found, strict=True):
    field = np.asarray(physics.wave_field(*mixer.constants(), length))  # [H, L, L]
    for head, ax in enumerate(row):
      limit = np.abs(field[head]).max()
      ax.imshow(field[head], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f"L{layer_name(name)} H{head}", fontsize=8)
  fig.suptitle("field W[t, s] (row t: output token, column s: source token)", fontsize=9)
  plots.save(fig, path)


def plot_medium(model: nnx.Module, length: int, steps: int, path: str | Path) -> None:
  """Space-time pictures of a wave leaving one token, one per head of each layer (see `medium_response`)."""
  plt = plots.pyplot()
  found = wave_mixers(model)
  heads = found[0][1].num_heads
  fig, axes = plt.subplots(len(found), heads, figsize=(2.2 * heads, 2.0 * len(found)), squeeze=False)
  for row, (name, mixer) in zip(axes, found, strict=True):
    speed, damping, _ = (np.asarray(a, np.float64) for a in mixer.constants())
    for head, ax in enumerate(row):
      response = medium_response(speed[head], damping[head], length, steps)
      ax.imshow(response, origin="lower", aspect="auto", cmap="magma", extent=(-length, length, 0, steps))
      ax.set_title(f"L{layer_name(name)} H{head}: c={speed[head]:.2f}, 1/g={1 / damping[head]:.0f}", fontsize=7)
      ax.tick_params(labelsize=6)
  for ax in axes[-1]:
    ax.set_xlabel("position (tokens)", fontsize=7)
  for ax in axes[:, 0]:
    ax.set_ylabel("time", fontsize=7)
  plots.save(fig, path)
