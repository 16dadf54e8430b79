"""Flax NNX modules: they hold parameters and call the pure functions of `physics` for the math.

Each mixer offers the same three calls, so a model can mix layer kinds freely:

  mixer(x)                      -> y                parallel forward, [B, L, D] -> [B, L, D]
  mixer.prefill(x, cache)       -> (y, cache)       parallel forward that also returns the decode cache
  mixer.step(x_t, cache)        -> (y_t, cache)     one token, [B, D] -> [B, D]

The wave-family mixers are here; attention and the sliding window are in `attention`, and every kind is
registered by name in `mixers`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from wavefield_jax import physics, sequence_parallel
from wavefield_jax.head_constants import initial_constants, inverse_softplus, physical_constants
from wavefield_jax.sharding import DATA, SEQ

Cache = dict[str, Any]

# Names for jax.checkpoint policies (model.remat): the mixers' input projections and the MLPs' outputs.
PROJECTION, MLP_OUTPUT = "projection", "mlp_output"


class WaveParam(nnx.Param):
  """A head's raw physical constant. `nnx.state(model, WaveParam)` finds exactly these, so an
  optimizer can give them their own learning rate and no weight decay."""


def causal_depthwise_conv(
  x: jax.Array, kernel: jax.Array, history: jax.Array | None = None, segment_ids: jax.Array | None = None
) -> jax.Array:
  """Short causal depthwise convolution along the sequence.

  Args:
    x: [B, L, E], E channels.
    kernel: [W, E]; kernel[j] weighs the input j positions back.
    history: optional [B, W-1, E], the inputs just before x (oldest first); zeros if None.
    segment_ids: optional [B, L] document ids: a tap that reaches back over a document start reads zero.
      The history belongs to the document at position 0.

  Returns:
    [B, L, E]: y[:, t] = sum_j kernel[j] * x[:, t - j].
  """
  width = kernel.shape[0]
  if history is None:
    history = jnp.zeros((x.shape[0], width - 1, x.shape[2]), x.dtype)
  padded = jnp.concatenate([history.astype(x.dtype), x], axis=1)  # [B, W-1+L, E]
  length = x.shape[1]
  taps = [kernel[j] * padded[:, width - 1 - j : width - 1 - j + length] for j in range(width)]
  if segment_ids is not None:
    index = physics.document_index(segment_ids)  # [B, L]
    index_back = jnp.pad(index, ((0, 0), (width - 1, 0)), mode="edge")  # [B, W-1+L]
    same = [index == index_back[:, width - 1 - j : width - 1 - j + length] for j in range(width)]
    taps = [jnp.where(keep[..., None], tap, 0) for keep, tap in zip(same, taps, strict=True)]
  return sum(taps)


def conv_history(x: jax.Array, history: jax.Array) -> jax.Array:
  """The last W-1 inputs after appending x [B, L, E] to history [B, W-1, E]."""
  return jnp.concatenate([history.astype(x.dtype), x], axis=1)[:, x.shape[1] :]


class GatedOutput(nnx.Module):
  """out_proj(z * silu(gate)): the output gate and projection every mixer ends with."""

  def __init__(self, dim: int, *, dtype: Any, rngs: nnx.Rngs, param_dtype: Any = jnp.float32):
    self.out_proj = nnx.Linear(dim, dim, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, z: jax.Array, gate: jax.Array) -> jax.Array:
    return self.out_proj(z * jax.nn.silu(gate))


def check_positive_ints(**values: int) -> None:
  """A ValueError naming the first value that is not a positive integer."""
  for name, value in values.items():
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name} must be a positive integer; got {value!r}")


class Sources(nnx.Module):
  """How a wave-family mixer reads its input: one projection to q, k, v and the gate, then a short causal
  depthwise conv on q, k, v. The conv starts as the identity plus noise, so each of q, k, v first sees
  its own token."""

  def __init__(self, dim: int, num_heads: int, *, conv_width: int, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    check_positive_ints(dim=dim, num_heads=num_heads, conv_width=conv_width)
    if dim % num_heads:
      raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
    self.dim, self.num_heads, self.conv_width, self.dtype = dim, num_heads, conv_width, dtype
    self.in_proj = nnx.Linear(
      dim, 4 * dim, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )  # q, k, v, gate
    noise = 0.1 * jax.random.normal(rngs.params(), (conv_width, 3 * dim)) / math.sqrt(conv_width)
    self.conv_kernel = nnx.Param(noise.at[0].add(1.0).astype(param_dtype))  # [W, 3D]

  def init_cache(self, batch_size: int) -> jax.Array:
    """The conv's history before the first token: zeros [B, W-1, 3D]."""
    return jnp.zeros((batch_size, self.conv_width - 1, 3 * self.dim), self.dtype)

  def __call__(
    self, x: jax.Array, history: jax.Array | None = None, segment_ids: jax.Array | None = None
  ) -> tuple[jax.Array, ...]:
    """x [B, L, D] -> q, k, v [B, L, H, K], the gate [B, L, D], and the conv history after x [B, W-1, 3D]
    (None without a `history` to continue from: the parallel forward keeps none)."""
    if jnp.ndim(x) != 3 or jnp.shape(x)[2] != self.dim or jnp.shape(x)[1] == 0:
      raise ValueError(
        f"the mixer's input must have shape [B, L, D] with L >= 1 and D = {self.dim} ([B, D] for one step);"
        f" got shape {jnp.shape(x)}"
      )
    batch, length, _ = x.shape
    projected = checkpoint_name(self.in_proj(x), PROJECTION)  # [B, L, 4D]
    qkv, gate = jnp.split(projected, [3 * self.dim], axis=-1)  # [B, L, 3D], [B, L, D]
    mixed = causal_depthwise_conv(qkv, self.conv_kernel[...].astype(qkv.dtype), history, segment_ids)
    q, k, v = (a.reshape(batch, length, self.num_heads, -1) for a in jnp.split(mixed, 3, axis=-1))
    return q, k, v, gate, None if history is None else conv_history(qkv, history)


class WaveConstants(nnx.Module):
  """Each head's three trained constants, stored raw (WaveParam, each [H]) so that any optimizer step
  leaves them physical: speed = softplus(speed_raw), damping = exp(damping_log), and the phase."""

  def __init__(
    self,
    num_heads: int,
    max_len: int,
    values: tuple[jax.Array, ...] | None = None,
    *,
    rngs: nnx.Rngs,
    speed_init: str = "spread",
  ):
    check_positive_ints(max_len=max_len)
    if values is None:
      speed, damping, phase = initial_constants(num_heads, max_len, rngs.params(), speed_init)
    else:
      speed, damping, phase = (jnp.asarray(c, jnp.float32) for c in physics.check_constants(*values))
      if speed.shape != (num_heads,):
        raise ValueError(f"constants must be three arrays of shape [num_heads] = [{num_heads}]; got {speed.shape}")
    self.speed_raw = WaveParam(inverse_softplus(speed))  # [H]
    self.damping_log = WaveParam(jnp.log(damping))  # [H]
    self.phase = WaveParam(phase)  # [H]

  def __call__(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The physical (speed, damping, phase), each [H]."""
    return physical_constants(self.speed_raw[...], self.damping_log[...], self.phase[...])


def _wave_family_parts(
  mixer: nnx.Module,
  dim: int,
  num_heads: int,
  *,
  max_len: int,
  rngs: nnx.Rngs,
  conv_width: int = 4,
  method: str = "auto",
  chunk_size: int | None = None,
  dtype: Any = jnp.float32,
  param_dtype: Any = jnp.float32,
  constants: tuple[jax.Array, jax.Array, jax.Array] | None = None,
  speed_init: str = "spread",
  mesh: jax.sharding.Mesh | None = None,
  mesh_axes: tuple[str, str] = (DATA, SEQ),
) -> None:
  """Gives a wave-family mixer its settings and its three parts, `sources`, `field` and `output`, built
  in that order (so one seed gives every kind the same weights for them). Arguments: `WaveFieldMixer`'s;
  the parts check the sizes they take."""
  mixer.sources = Sources(dim, num_heads, conv_width=conv_width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  mixer.field = WaveConstants(num_heads, max_len, constants, rngs=rngs, speed_init=speed_init)
  mixer.output = GatedOutput(dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  physics.check_method(method, chunk_size, max_len)  # a bad method or chunk size fails here, named
  mixer.dim, mixer.num_heads, mixer.dtype, mixer.param_dtype = dim, num_heads, dtype, param_dtype
  mixer.method, mixer.chunk_size, mixer.mesh, mixer.mesh_axes = method, chunk_size, mesh, mesh_axes


def decode_cache(sources: Sources, batch_size: int, state_shape: tuple[int, ...]) -> Cache:
  """A wave-family mixer's decode cache: the short conv's history and the complex state [B, *state_shape]."""
  return {"conv": sources.init_cache(batch_size), "wave": jnp.zeros((batch_size, *state_shape), jnp.complex64)}


def times_queries(q: jax.Array, y: jax.Array) -> jax.Array:
  """The H3 readout q * y of q, y [B, L, H, K], as [B, L, D] in q's dtype."""
  return (q * y.astype(q.dtype)).reshape(*q.shape[:2], -1)


class WaveFieldMixer(nnx.Module):
  """The Wave Field token mixer (H3/Hyena structure around the wave convolution).

  q, k, v, g = proj(x); q, k, v go through a short causal depthwise conv; u = k * v is the source of
  the damped wave field, y = wave_conv(u); the output is out_proj((q * y) * silu(g)).
  Its parts, which the selective and retention mixers share: `sources` (projection and short conv),
  `field` (each head's three trained constants: raw speed, log damping, phase) and `output` (gate and
  projection).

  Args:
    dim: D, the model width.
    num_heads: H; D / H channels per head.
    max_len: the training context; the slowest head's initial damping is 1 / max_len.
    rngs: the NNX random streams for the initial weights.
    conv_width: width of the short causal conv on q, k, v (4).
    method: how the wave convolution is computed (`physics.wave_conv`; "auto"); every method gives the
      same result.
    chunk_size: positions per chunk of that method.
    dtype: the compute dtype of the projections (the wave arithmetic runs in float32).
    param_dtype: the dtype the projection weights are stored in (the constants stay float32).
    constants: optional starting (speed, damping, phase), each [H], instead of the default spread.
    speed_init: the starting speeds without `constants`: "spread" or "tied" to the damping
      (`initial_constants`).
    mesh: with a mesh, the parallel forward runs the wave convolution inside shard_map, batch rows and
      positions split over its `mesh_axes` (`sequence_parallel.sharded_wave_conv`).
    mesh_axes: the mesh's (batch, sequence) axis names.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> mixer = WaveFieldMixer(32, 4, max_len=128, rngs=nnx.Rngs(0))
    >>> mixer(jnp.ones((2, 10, 32))).shape  # [B, L, D]
    (2, 10, 32)
    >>> sum(p.size for p in jax.tree.leaves(nnx.state(mixer, WaveParam)))  # 3 constants x 4 heads
    12
  """

  def __init__(self, dim: int, num_heads: int, *, max_len: int, rngs: nnx.Rngs, **options: Any):
    _wave_family_parts(self, dim, num_heads, max_len=max_len, rngs=rngs, **options)

  def constants(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The physical (speed, damping, phase), each [H], from the raw trained values."""
    return self.field()

  def init_cache(self, batch_size: int, max_len: int | None = None) -> Cache:
    """The short-conv history and the complex wave state [B, H, K]; neither grows with `max_len`."""
    del max_len
    return decode_cache(self.sources, batch_size, (self.num_heads, self.dim // self.num_heads))

  def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """[B, L, D] -> [B, L, D], the parallel convolution (sharded over the mesh if the mixer has one).

    segment_ids: optional [B, L] document ids of a packed row; nothing crosses a document start."""
    q, k, v, gate, _ = self.sources(x, segment_ids=segment_ids)
    u = k * v  # [B, L, H, K]
    if self.mesh is None:
      y = physics.wave_conv(
        u, *self.constants(), method=self.method, chunk_size=self.chunk_size, segment_ids=segment_ids
      )
    else:
      y = sequence_parallel.sharded_wave_conv(
        u,
        *self.constants(),
        self.mesh,
        method=self.method,
        chunk_size=self.chunk_size,
        axes=self.mesh_axes,
        segment_ids=segment_ids,
      )
    return self.output(times_queries(q, y), gate)

  def prefill(self, x: jax.Array, cache: Cache | None = None) -> tuple[jax.Array, Cache]:
    """Parallel forward over x [B, L, D], continuing from `cache` if given; returns y and the new cache."""
    if cache is None:
      cache = self.init_cache(x.shape[0])
    q, k, v, gate, history = self.sources(x, cache["conv"])
    y, state = physics.wave_conv_chunked(
      k * v, *self.constants(), self.chunk_size, initial_state=cache["wave"], method=self.method
    )
    return self.output(times_queries(q, y), gate), {"conv": history, "wave": state}

  def step(self, x_t: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    """One token [B, D] through the recurrence: O(1) in the context length."""
    q, k, v, gate, history = self.sources(x_t[:, None], cache["conv"])  # L = 1
    y_t, state = physics.wave_step(cache["wave"], k[:, 0] * v[:, 0], *self.constants())
    return self.output(times_queries(q, y_t[:, None]), gate)[:, 0], {"conv": history, "wave": state}


class SelectiveWaveMixer(nnx.Module):
  """The wave mixer on a data-dependent clock (docs/design.md, section 7): the same parts, but each head's
  field advances by delta_t = softplus(w_h . x_t + b_h) per token instead of 1, so a token can hold the
  field still (delta near 0) or flush it (delta large). b_h starts where delta = 1, w_h small: at
  initialisation it is the wave mixer. Computed by `physics.selective_conv_chunked`. Arguments: those of
  `WaveFieldMixer`.
  """

  def __init__(self, dim: int, num_heads: int, *, max_len: int, rngs: nnx.Rngs, **options: Any):
    _wave_family_parts(self, dim, num_heads, max_len=max_len, rngs=rngs, **options)
    self.chunk_size = self.chunk_size or physics.SELECTIVE_CHUNK
    small = nnx.initializers.normal(0.1 / math.sqrt(dim))
    unit_step = nnx.initializers.constant(math.log(math.expm1(1.0)))  # softplus(b) = 1
    self.clock = nnx.Linear(
      dim, num_heads, kernel_init=small, bias_init=unit_step, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs
    )

  def constants(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The physical (speed, damping, phase), each [H], from the raw trained values."""
    return self.field()

  def clock_steps(self, x: jax.Array) -> jax.Array:
    """delta [B, L, H] float32 > 0 for the mixer's input x [B, L, D]."""
    return jax.nn.softplus(self.clock(x).astype(jnp.float32))

  def init_cache(self, batch_size: int, max_len: int | None = None) -> Cache:
    """The short-conv history and the complex wave state [B, H, K]; neither grows with `max_len`."""
    del max_len
    return decode_cache(self.sources, batch_size, (self.num_heads, self.dim // self.num_heads))

  def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """[B, L, D] -> [B, L, D]; segment_ids: optional [B, L] document ids, as the wave mixer's."""
    q, k, v, gate, _ = self.sources(x, segment_ids=segment_ids)
    delta = self.clock_steps(x)  # [B, L, H]
    if self.mesh is None:
      y, _ = physics.selective_conv_chunked(k * v, delta, *self.constants(), self.chunk_size, segment_ids=segment_ids)
    else:
      y = sequence_parallel.sharded_selective_conv(
        k * v,
        delta,
        *self.constants(),
        self.mesh,
        chunk_size=self.chunk_size,
        axes=self.mesh_axes,
        segment_ids=segment_ids,
      )
    return self.output(times_queries(q, y), gate)

  def prefill(self, x: jax.Array, cache: Cache | None = None) -> tuple[jax.Array, Cache]:
    if cache is None:
      cache = self.init_cache(x.shape[0])
    q, k, v, gate, history = self.sources(x, cache["conv"])
    y, state = physics.selective_conv_chunked(
      k * v, self.clock_steps(x), *self.constants(), self.chunk_size, initial_state=cache["wave"]
    )
    return self.output(times_queries(q, y), gate), {"conv": history, "wave": state}

  def step(self, x_t: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    q, k, v, gate, history = self.sources(x_t[:, None], cache["conv"])  # L = 1
    delta_t = self.clock_steps(x_t[:, None])[:, 0]  # [B, H]
    y_t, state = physics.selective_step(cache["wave"], k[:, 0] * v[:, 0], delta_t, *self.constants())
    return self.output(times_queries(q, y_t[:, None]), gate)[:, 0], {"conv": history, "wave": state}


class RetentionMixer(nnx.Module):
  """The content-addressed wave (docs/design.md, section 7): y_t = sum_s k_h(t - s) (q_t . k_s) v_s, the
  damped wave of each head's three constants weighting the query-key match, then a per-head RMS norm (the
  output's scale no longer depends on how many sources matched) and the gate. The decode cache is one
  [K, K] complex state per head: O(1) in the context length. Computed by `physics.retention_chunked`.
  Arguments: those of `WaveFieldMixer`.
  """

  def __init__(self, dim: int, num_heads: int, *, max_len: int, rngs: nnx.Rngs, **options: Any):
    _wave_family_parts(self, dim, num_heads, max_len=max_len, rngs=rngs, **options)
    self.chunk_size = self.chunk_size or physics.RETENTION_CHUNK
    self.head_norm = nnx.RMSNorm(dim // num_heads, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)

  def constants(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The physical (speed, damping, phase), each [H], from the raw trained values."""
    return self.field()

  def init_cache(self, batch_size: int, max_len: int | None = None) -> Cache:
    """The short-conv history and a [K, K] complex state per head; neither grows with `max_len`."""
    del max_len
    head_dim = self.dim // self.num_heads
    return decode_cache(self.sources, batch_size, (self.num_heads, head_dim, head_dim))

  def queries_keys(
    self, x: jax.Array, history: jax.Array | None = None, segment_ids: jax.Array | None = None
  ) -> tuple[jax.Array, ...]:
    """q, k / sqrt(K), v [B, L, H, K], the gate [B, L, D] and the conv history after x (`Sources`)."""
    q, k, v, gate, history = self.sources(x, history, segment_ids)
    return q, k / math.sqrt(k.shape[-1]), v, gate, history  # scores q . k / sqrt(K), as attention's

  def _normed_output(self, y: jax.Array, gate: jax.Array) -> jax.Array:
    """The field's output y [B, L, H, K], each head RMS-normed, through the gate: [B, L, D]."""
    return self.output(self.head_norm(y.astype(gate.dtype)).reshape(gate.shape), gate)

  def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """[B, L, D] -> [B, L, D]; segment_ids: optional [B, L] document ids, as the wave mixer's."""
    q, k, v, gate, _ = self.queries_keys(x, segment_ids=segment_ids)
    if self.mesh is None:
      y, _ = physics.retention_chunked(q, k, v, *self.constants(), self.chunk_size, segment_ids=segment_ids)
    else:
      y = sequence_parallel.sharded_retention(
        q,
        k,
        v,
        *self.constants(),
        self.mesh,
        chunk_size=self.chunk_size,
        axes=self.mesh_axes,
        segment_ids=segment_ids,
      )
    return self._normed_output(y, gate)

  def prefill(self, x: jax.Array, cache: Cache | None = None) -> tuple[jax.Array, Cache]:
    if cache is None:
      cache = self.init_cache(x.shape[0])
    q, k, v, gate, history = self.queries_keys(x, cache["conv"])
    y, state = physics.retention_chunked(q, k, v, *self.constants(), self.chunk_size, initial_state=cache["wave"])
    return self._normed_output(y, gate), {"conv": history, "wave": state}

  def step(self, x_t: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    q, k, v, gate, history = self.queries_keys(x_t[:, None], cache["conv"])  # L = 1
    y_t, state = physics.retention_step(cache["wave"], q[:, 0], k[:, 0], v[:, 0], *self.constants())
    return self._normed_output(y_t[:, None], gate)[:, 0], {"conv": history, "wave": state}


class MLP(nnx.Module):
  """Gated SiLU feed-forward: down(silu(gate(x)) * up(x))."""

  def __init__(self, dim: int, hidden: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.gate = nnx.Linear(dim, hidden, use_bias=False, dtype=dtype, rngs=rngs)
    self.up = nnx.Linear(dim, hidden, use_bias=False, dtype=dtype, rngs=rngs)
    self.down = nnx.Linear(hidden, dim, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return checkpoint_name(self.down(jax.nn.silu(self.gate(x)) * self.up(x)), MLP_OUTPUT)


class Block(nnx.Module):
  """Pre-norm residual block: x + mixer(norm(x)), then + mlp(norm(.))."""

  def __init__(self, mixer: nnx.Module, dim: int, mlp_dim: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.mixer_norm = nnx.RMSNorm(dim, dtype=dtype, rngs=rngs)
    self.mixer = mixer
    self.mlp_norm = nnx.RMSNorm(dim, dtype=dtype, rngs=rngs)
    self.mlp = MLP(dim, mlp_dim, dtype=dtype, rngs=rngs)

  def mix(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """The first residual branch: x + mixer(norm(x)), documents apart where segment ids [B, L] are given."""
    normed = self.mixer_norm(x)
    return x + (self.mixer(normed) if segment_ids is None else self.mixer(normed, segment_ids=segment_ids))

  def feed_forward(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """The second residual branch: x + mlp(norm(x)); position-wise, so segment ids change nothing."""
    del segment_ids
    return x + self.mlp(self.mlp_norm(x))

  def _add_mlp(self, x: jax.Array, mixed: jax.Array) -> jax.Array:
    return self.feed_forward(x + mixed)

  def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    return self.feed_forward(self.mix(x, segment_ids))

  def prefill(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    mixed, cache = self.mixer.prefill(self.mixer_norm(x), cache)
    return self._add_mlp(x, mixed), cache

  def step(self, x_t: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    mixed, cache = self.mixer.step(self.mixer_norm(x_t), cache)
    return self._add_mlp(x_t, mixed), cache
