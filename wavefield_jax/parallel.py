"""The sequence-parallel wave convolution: positions split over devices, exact, O(L / devices) memory each.

The wave convolution runs inside `jax.shard_map`: each device convolves only its own positions, so XLA
never gathers activations around it; along the mesh's `seq` axis each device convolves its chunk and the
`[B, H, K]` complex state is passed from device to device (`ppermute`). Pure math over a mesh: the
layers use it, and meshes for training are built in `sharding`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from wavefield_jax import physics

DATA, SEQ = "data", "seq"


def sharded_wave_conv(
  u: jax.Array,
  speed: jax.Array,
  damping: jax.Array,
  phase: jax.Array,
  mesh: Mesh,
  *,
  method: str = "auto",
  chunk_size: int | None = None,
) -> jax.Array:
  """wave_conv with u [B, L, H, K] split over the mesh: batch over `data`, positions over `seq`.

  Each device convolves its L / seq positions from a zero state (`physics.wave_conv_chunked` with `method`
  and `chunk_size`) and passes its end state to the next device along `seq`; after seq - 1 hops every
  device holds the state entering its shard and adds that state's response. Exact: the same y as
  `physics.wave_conv` to float32 rounding.

  Args:
    u: [B, L, H, K]; B divisible by the data axis, L by the seq axis.
    speed, damping, phase: [H].
    mesh: a mesh with axes ("data", "seq").
    method, chunk_size: how each device convolves its positions (see `physics.wave_conv`).

  Returns:
    [B, L, H, K] sharded like u.
  """
  batch, length = u.shape[:2]
  devices_seq, devices_data = mesh.shape[SEQ], mesh.shape[DATA]
  if length % devices_seq:
    raise ValueError(f"sequence length {length} must be divisible by the mesh's seq axis ({devices_seq})")
  if batch % devices_data:
    raise ValueError(f"batch {batch} must be divisible by the mesh's data axis ({devices_data})")
  shard_length = length // devices_seq
  to_next = [(i, i + 1) for i in range(devices_seq - 1)]

  def local(u_local, speed, damping, phase):
    # y: [B/d, L/s, H, K], end_state: [B/d, H, K]
    y, end_state = physics.wave_conv_chunked(u_local, speed, damping, phase, chunk_size, method=method)
    if devices_seq == 1:
      return y
    hop = physics.state_decay(speed, damping, shard_length)[None, :, None]  # [1, H, 1]
    entering = jnp.zeros_like(end_state)
    for _ in range(devices_seq - 1):  # each hop carries the exact state one device further
      entering = jax.lax.ppermute(hop * entering + end_state, SEQ, to_next)
    return y + physics.state_response(entering, speed, damping, phase, shard_length).astype(y.dtype)

  spec = P(DATA, SEQ)
  # check_vma=False: the zero states created inside `local` are per-device values, as the scan in
  # physics.wave_conv_chunked expects; the varying-axes type check cannot see that.
  mapped = jax.shard_map(local, mesh=mesh, in_specs=(spec, P(), P(), P()), out_specs=spec, check_vma=False)
  return mapped(u, speed, damping, phase)
