"""Meshes, shardings and the sequence-parallel wave convolution.

The mesh has two axes: `data` (batch) and `seq` (sequence positions). Batches are sharded over
`data`; parameters are replicated, or split over `data` with `fsdp=True`. The wave convolution runs
inside `jax.shard_map`: each device transforms only its own positions, so XLA never gathers activations
around the FFT; along `seq`, each device convolves its chunk and the `[B, H, K]` complex state is
passed from device to device (`ppermute`), which keeps the result exact with O(L / devices) memory.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wavefield_jax import physics

DATA, SEQ = "data", "seq"


def make_mesh(data: int | None = None, seq: int = 1, devices: list | None = None) -> Mesh:
  """A (data, seq) mesh over `devices` (default: all); data defaults to what seq leaves."""
  devices = list(jax.devices() if devices is None else devices)
  if data is None:
    data = len(devices) // seq
  if data < 1 or seq < 1 or data * seq > len(devices):
    raise ValueError(f"mesh data={data} x seq={seq} needs {data * seq} devices; {len(devices)} are available")
  return Mesh(np.asarray(devices[: data * seq]).reshape(data, seq), (DATA, SEQ))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Token windows [B, L + 1]: batch over `data`. (L + 1 does not split evenly; activations are split
  along `seq` inside the model instead.)"""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(mesh: Mesh, state: Any, fsdp: bool = False) -> Any:
  """Shardings for a train state: replicated, or with fsdp each array split over `data` along its
  largest axis that divides evenly (small or indivisible arrays stay replicated)."""
  size = mesh.shape[DATA]

  def spec(leaf) -> NamedSharding:
    shape = np.shape(leaf)
    if not fsdp or size == 1 or np.prod(shape, dtype=np.int64) < 2**14:
      return replicated(mesh)
    for axis in np.argsort(shape)[::-1]:
      if shape[axis] % size == 0:
        return NamedSharding(mesh, P(*[DATA if a == axis else None for a in range(len(shape))]))
    return replicated(mesh)

  return jax.tree.map(spec, state)


def sharded_wave_conv(u: jax.Array, speed: jax.Array, damping: jax.Array, phase: jax.Array, mesh: Mesh) -> jax.Array:
  """wave_conv with u [B, L, H, K] split over the mesh: batch over `data`, positions over `seq`.

  Each device runs the FFT path on its L / seq positions from a zero state and passes its end state to
  the next device along `seq`; after seq - 1 hops every device holds the state entering its chunk and
  adds that state's response. Exact: the same y as `physics.wave_conv` to float32 rounding.

  Args:
    u: [B, L, H, K]; B divisible by the data axis, L by the seq axis.
    speed, damping, phase: [H].
    mesh: a mesh with axes ("data", "seq").

  Returns:
    [B, L, H, K] sharded like u.
  """
  batch, length = u.shape[:2]
  devices_seq, devices_data = mesh.shape[SEQ], mesh.shape[DATA]
  if length % devices_seq:
    raise ValueError(f"sequence length {length} must be divisible by the mesh's seq axis ({devices_seq})")
  if batch % devices_data:
    raise ValueError(f"batch {batch} must be divisible by the mesh's data axis ({devices_data})")
  chunk = length // devices_seq
  to_next = [(i, i + 1) for i in range(devices_seq - 1)]

  def local(u_local, speed, damping, phase):
    y, end_state = physics.wave_conv_chunked(u_local, speed, damping, phase)  # [B/d, T, H, K], [B/d, H, K]
    if devices_seq == 1:
      return y
    hop = physics.state_decay(speed, damping, chunk)[None, :, None]  # [1, H, 1]
    entering = jnp.zeros_like(end_state)
    for _ in range(devices_seq - 1):  # each hop carries the exact state one device further
      entering = jax.lax.ppermute(hop * entering + end_state, SEQ, to_next)
    return y + physics.state_response(entering, speed, damping, phase, chunk).astype(y.dtype)

  spec = P(DATA, SEQ)
  # check_vma=False: the zero states created inside `local` are per-device values, as the scan in
  # physics.wave_conv_chunked expects; the varying-axes type check cannot see that.
  mapped = jax.shard_map(local, mesh=mesh, in_specs=(spec, P(), P(), P()), out_specs=spec, check_vma=False)
  return mapped(u, speed, damping, phase)
