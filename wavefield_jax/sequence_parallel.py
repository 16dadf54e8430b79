"""The sequence-parallel wave convolution: positions split over devices, exact, O(L / devices) memory each.

The wave convolution runs inside `jax.shard_map`: each device convolves only its own positions, so XLA
never gathers activations around it; along the mesh's `seq` axis each device convolves its chunk and the
`[B, H, K]` complex state is passed from device to device (`ppermute`). Pure math over a mesh: the
layers use it; the mesh and its axis names come from `sharding`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from wavefield_jax import physics
from wavefield_jax.sharding import DATA, SEQ


def sharded_wave_conv(
  u: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  mesh: Mesh,
  *,
  method: str = "auto",
  chunk_size: int | None = None,
  axes: tuple[str, str] = (DATA, SEQ),
  segment_ids: jax.Array | None = None,
) -> jax.Array:
  """wave_conv with u [B, L, H, K] split over the mesh: batch over `data`, positions over `seq`.

  Each device convolves its L / seq positions from a zero state (`physics.wave_conv_chunked` with `method`
  and `chunk_size`) and passes its end state to the next device along `seq`; after seq - 1 hops every
  device holds the state entering its shard and adds that state's response. Exact: the same y as
  `physics.wave_conv` to float32 rounding.

  Args:
    u: [B, L, H, K]; B divisible by the data axis, L by the seq axis.
    speed, damping, phase: [H].
    mesh: the device mesh; `axes` names its batch and sequence axes.
    method: how each device convolves its positions (see `physics.wave_conv`).
    chunk_size: positions per chunk of that method.
    axes: (batch axis, sequence axis) of `mesh`, by default ("data", "seq"); a mesh may have other axes.
    segment_ids: optional [B, L] document ids; no state crosses a document start, on a device or between two.

  Returns:
    [B, L, H, K] sharded like u.
  """
  shard_length, devices_seq = _check_split(u, mesh, axes)

  def local(u_local, starts, speed, damping, phase):
    # y: [B/d, L/s, H, K], end_state: [B/d, H, K]
    ids = _local_ids(starts)
    y, end_state = physics.wave_conv_chunked(u_local, speed, damping, phase, chunk_size, method=method, segment_ids=ids)
    if devices_seq == 1:
      return y
    hop = physics.state_decay(speed, damping, shard_length)[None, :, None]  # [1, H, 1]
    entering = _entering_state(end_state, hop, devices_seq, axes[1], starts)
    response = physics.state_response(entering, speed, damping, phase, shard_length).astype(y.dtype)
    if ids is not None:  # the entering state reaches the positions before the shard's first start
      response = jnp.where((physics.document_index(ids) == 0)[..., None, None], response, 0)
    return y + response

  return _map(local, mesh, 1, axes)(u, _starts(segment_ids), speed, damping, phase)


def sharded_selective_conv(
  u: jax.Array,
  delta: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  mesh: Mesh,
  *,
  chunk_size: int = physics.SELECTIVE_CHUNK,
  axes: tuple[str, str] = (DATA, SEQ),
  segment_ids: jax.Array | None = None,
) -> jax.Array:
  """`physics.selective_conv_chunked` with u [B, L, H, K] and delta [B, L, H] split like `sharded_wave_conv`.

  Each device passes on its end state; the hop across a shard is the decay over the shard's own clock."""
  _, devices_seq = _check_split(u, mesh, axes)

  def local(u_local, delta_local, starts, speed, damping, phase):
    ids = _local_ids(starts)
    y, end_state = physics.selective_conv_chunked(
      u_local, delta_local, speed, damping, phase, chunk_size, segment_ids=ids
    )
    if devices_seq == 1:
      return y
    hop = physics.selective_decay(delta_local, speed, damping)[..., None]  # [B/d, H, 1]
    entering = _entering_state(end_state, hop, devices_seq, axes[1], starts)
    # The second pass from the entering state repeats only the state part: XLA drops the first pass's y.
    return physics.selective_conv_chunked(
      u_local, delta_local, speed, damping, phase, chunk_size, entering, segment_ids=ids
    )[0]

  return _map(local, mesh, 2, axes)(u, delta, _starts(segment_ids), speed, damping, phase)


def sharded_retention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  mesh: Mesh,
  *,
  chunk_size: int = physics.RETENTION_CHUNK,
  axes: tuple[str, str] = (DATA, SEQ),
  segment_ids: jax.Array | None = None,
) -> jax.Array:
  """`physics.retention_chunked` with q, k, v [B, L, H, .] split like `sharded_wave_conv`; the [B, H, K, M]
  state is what passes between devices."""
  shard_length, devices_seq = _check_split(q, mesh, axes)

  def local(q, k, v, starts, speed, damping, phase):
    ids = _local_ids(starts)
    y, end_state = physics.retention_chunked(q, k, v, speed, damping, phase, chunk_size, segment_ids=ids)
    if devices_seq == 1:
      return y
    hop = physics.state_decay(speed, damping, shard_length)[None, :, None, None]  # [1, H, 1, 1]
    entering = _entering_state(end_state, hop, devices_seq, axes[1], starts)
    return physics.retention_chunked(q, k, v, speed, damping, phase, chunk_size, entering, segment_ids=ids)[0]

  return _map(local, mesh, 3, axes)(q, k, v, _starts(segment_ids), speed, damping, phase)


def _check_split(x: jax.Array, mesh: Mesh, axes: tuple[str, str]) -> tuple[int, int]:
  """(positions per device, devices along the sequence) for x [B, L, ...]; names what does not fit."""
  missing = [name for name in axes if name not in mesh.shape]
  if len(axes) != 2 or missing:
    raise ValueError(
      f"axes={axes!r} must name the mesh's batch and sequence axes; the mesh has axes {tuple(mesh.shape)}"
    )
  batch, length = x.shape[:2]
  devices_data, devices_seq = mesh.shape[axes[0]], mesh.shape[axes[1]]
  if length % devices_seq:
    raise ValueError(f"sequence length {length} must be divisible by the mesh's {axes[1]!r} axis ({devices_seq})")
  if batch % devices_data:
    raise ValueError(f"batch {batch} must be divisible by the mesh's {axes[0]!r} axis ({devices_data})")
  return length // devices_seq, devices_seq


def _starts(segment_ids: jax.Array | None) -> jax.Array | None:
  """[B, L] bool, the document starts of the whole sequence, found before it is split: a start on a
  device's first position is seen only against the position before it, on the previous device."""
  return None if segment_ids is None else physics.document_starts(segment_ids)


def _local_ids(starts: jax.Array | None) -> jax.Array | None:
  """Segment ids of one device's positions from its starts [B/d, L/s]: they change at each start after
  its first position (a start there is the entering state's, `_entering_state`)."""
  return None if starts is None else jnp.cumsum(starts, axis=1, dtype=jnp.int32)


def _entering_state(
  end_state: jax.Array, hop: jax.Array, devices_seq: int, seq_axis: str, starts: jax.Array | None = None
) -> jax.Array:
  """The state entering this device's shard: each of seq - 1 hops carries the exact state one device on.

  Args:
    end_state: this device's state after its shard from a zero start (from its last document's start).
    hop: what a state becomes across one shard, broadcastable to end_state.
    starts: optional [B/d, L/s] document starts of this shard: a state crosses a shard without any, and
      enters one that does not start with one.
  """
  if starts is not None:
    batch_axes = (slice(None),) + (None,) * (end_state.ndim - 1)
    hop = jnp.where(starts.any(axis=1)[batch_axes], 0, hop)
  to_next = [(i, i + 1) for i in range(devices_seq - 1)]
  entering = jnp.zeros_like(end_state)
  for _ in range(devices_seq - 1):
    entering = jax.lax.ppermute(hop * entering + end_state, seq_axis, to_next)
  if starts is not None:
    entering = jnp.where(starts[:, 0][batch_axes], 0, entering)
  return entering


def _map(local, mesh: Mesh, num_sequences: int, axes: tuple[str, str]):
  """shard_map of local(*sequences, starts, speed, damping, phase): sequences and their document starts
  split over `axes`, constants whole."""
  spec = P(*axes)
  # check_vma=False: the zero states created inside `local` are per-device values, as the scans in
  # physics expect; the varying-axes type check cannot see that.
  in_specs = (spec,) * num_sequences + (spec, P(), P(), P())  # the sequences, their starts (or None), constants
  return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=False)
