"""Meshes and the shardings of a train state and its batches.

The mesh has two axes: `data` (batch) and `seq` (sequence positions). Batches are sharded over
`data`; parameters, gradients and optimizer moments are replicated, or split over every device of the
mesh (`data` and `seq` together) with `fsdp=True`. How the wave layers split
their positions over `seq` is `sequence_parallel.sharded_wave_conv`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# The mesh's axes: batch rows, and sequence positions (split by `sequence_parallel`).
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
  """Shardings for a train state: replicated, or with fsdp each array split over all the mesh's devices
  (`data` and `seq` together) along its largest axis that divides evenly; failing that over `data` alone,
  and small or indivisible arrays stay replicated. A 1 x 8 mesh (one sequence over 8 devices) then holds
  an eighth of AdamW per device, as an 8 x 1 mesh does."""

  def spec(leaf) -> NamedSharding:
    shape = np.shape(leaf)
    if not fsdp or np.prod(shape, dtype=np.int64) < 2**14:
      return replicated(mesh)
    for axes in ((DATA, SEQ), (DATA,)):
      size = int(np.prod([mesh.shape[a] for a in axes]))
      if size == 1:
        continue
      for axis in np.argsort(shape)[::-1]:
        if shape[axis] % size == 0:
          return NamedSharding(mesh, P(*[axes if a == axis else None for a in range(len(shape))]))
    return replicated(mesh)

  return jax.tree.map(spec, state)
