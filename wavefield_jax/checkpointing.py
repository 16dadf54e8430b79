"""A thin layer over orbax-checkpoint: the train state and the data iterator position, saved together.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-save leaves no checkpoint that `latest_step` would pick. What this layer adds:

- a manifest per completed step (size and sha256 of every file, in `manifests/<step>.json`), checked
  before a restore, so a truncated or edited checkpoint is named by its step and file;
- clear errors: a checkpoint that does not match the model, or cannot be read, names its step;
- `restore_latest(..., fallback=True)`: skip damaged checkpoints (moved aside to
  `../damaged_checkpoints/`, never deleted) and resume from the newest complete one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.experimental.multihost_utils
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from wavefield_jax.config import base_config
from wavefield_jax.errors import CheckpointError
from wavefield_jax.files import file_sha256, write_text_atomic
from wavefield_jax.model import WaveFieldLM

MANIFESTS = "manifests"
# How tensorstore reports unreadable files (an absl status code, or a failed read or open); anything
# else orbax raises as ValueError, KeyError or TypeError is a mismatch of shapes or tree structure.
_READ_FAILURE = re.compile(r"^[A-Z_]{5,}: |Error (reading|opening|decoding)|Unexpected end|corrupt", re.IGNORECASE)


class DamagedCheckpointError(CheckpointError):
  """A checkpoint whose files are missing, truncated, changed since they were saved, or unreadable."""


class Checkpointer:
  """Saves and restores {"state": pytree of arrays, "data": JSON-able iterator state}."""

  def __init__(self, directory: str | Path, keep: int = 3, asynchronous: bool = True):
    self.directory = Path(directory).resolve()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._unrecorded: list[int] = []  # steps this process saved whose manifest is not written yet

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> None:
    """Starts saving `step` (in the background if asynchronous) once the previous save has finished."""
    self.wait()
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
    if self.manager.save(step, args=args, force=force):
      self._unrecorded.append(step)

  def _record_manifests(self) -> None:
    """Writes the manifest of every step this process completed; drops those of rotated-out steps."""
    if jax.process_index() != 0 or not self._unrecorded:  # readers (evaluate, inspect) never write
      return
    manifests = self.directory / MANIFESTS
    manifests.mkdir(exist_ok=True)
    present = set(self.all_steps())
    for step in self._unrecorded:
      if step not in present:
        continue
      root = self.directory / str(step)
      files = {
        str(p.relative_to(root)): [p.stat().st_size, file_sha256(p)] for p in sorted(root.rglob("*")) if p.is_file()
      }
      write_text_atomic(manifests / f"{step}.json", json.dumps({"step": step, "files": files}, indent=0))
    self._unrecorded.clear()
    for path in manifests.glob("*.json"):
      if path.stem.isdigit() and int(path.stem) not in present:
        path.unlink()

  def verify(self, step: int) -> None:
    """Raises DamagedCheckpointError naming the file if `step`'s files differ from its manifest.
    A step without a manifest (its writer died before recording it) is left to orbax's own checks."""
    path = self.directory / MANIFESTS / f"{step}.json"
    if not path.exists():
      return
    root = self.directory / str(step)
    for name, (size, digest) in json.loads(path.read_text())["files"].items():
      file = root / name
      if not file.is_file():
        problem = "is missing"
      elif file.stat().st_size != size:
        problem = f"has {file.stat().st_size:,} bytes; {size:,} were saved (truncated or overwritten)"
      elif file_sha256(file) != digest:
        problem = "was changed after it was saved (sha256 differs)"
      else:
        continue
      raise DamagedCheckpointError(f"checkpoint step {step} is damaged: file {file} {problem}")

  def restore(self, step: int, like: Any) -> tuple[Any, dict]:
    """Restores step `step` into the structure, shapes, dtypes and shardings of `like`."""
    self.verify(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
    try:
      restored = self.manager.restore(step, args=args)
    except Exception as error:  # orbax and tensorstore raise many kinds, ValueError among them, for both cases
      first_line = str(error).splitlines()[0][:500] if str(error) else type(error).__name__
      if isinstance(error, (ValueError, KeyError, TypeError)) and not _READ_FAILURE.search(first_line):
        raise CheckpointError(
          f"checkpoint step {step} in {self.directory / str(step)} does not match this model and optimizer "
          f"(a different config wrote it?): {first_line}"
        ) from error
      raise DamagedCheckpointError(
        f"checkpoint step {step} in {self.directory / str(step)} could not be read (damaged or incomplete?): "
        f"{type(error).__name__}: {first_line}"
      ) from error
    if restored["data"] is None:
      raise DamagedCheckpointError(f"checkpoint step {step} in {self.directory / str(step)} has no data state")
    return restored["state"], restored["data"]

  def restore_params(self, step: int, like_params: Any) -> Any:
    """Only the parameters of step `step`, into the structure of `like_params` (arrays or shape structs).
    Leaves without a sharding are restored onto the first device."""
    self.verify(step)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(leaf) -> jax.ShapeDtypeStruct:
      struct = ocp.utils.to_shape_dtype_struct(leaf)
      # Orbax needs the target's sharding; without it, it reads the saved one and warns.
      if struct.sharding is not None:
        return struct
      return jax.ShapeDtypeStruct(struct.shape, struct.dtype, sharding=device)

    abstract = {"params": jax.tree.map(target, like_params)}
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    args = ocp.args.Composite(state=ocp.args.PyTreeRestore(abstract, restore_args=restore_args, partial_restore=True))
    try:
      return self.manager.restore(step, args=args)["state"]["params"]
    except Exception as error:
      first_line = str(error).splitlines()[0][:500] if str(error) else type(error).__name__
      raise CheckpointError(
        f"checkpoint step {step} in {self.directory / str(step)} has no parameters of this model: {first_line}"
      ) from error

  def restore_latest(self, like: Any, fallback: bool = False) -> tuple[int, Any, dict] | None:
    """The newest checkpoint: (step, state, data state), or None when there is none.

    A damaged newest checkpoint raises DamagedCheckpointError, unless `fallback`: then it is moved to
    `<workdir>/damaged_checkpoints/<step>` (kept for inspection; orbax would otherwise refuse to save
    that step again) and the next older one is tried.
    """
    for step in reversed(self.all_steps()):
      try:
        return (step, *self.restore(step, like))
      except DamagedCheckpointError as error:
        older = [s for s in self.all_steps() if s < step]
        if not fallback:
          hint = f" Set train.restore_fallback=True to resume from step {older[-1]} instead." if older else ""
          raise DamagedCheckpointError(f"{error}.{hint} Nothing was changed on disk.") from error
        self._quarantine(step)
        print(f"warning: {error}; moved it aside, trying step {older[-1] if older else 'none (start over)'}")
    return None

  def _quarantine(self, step: int) -> None:
    """Moves a damaged step (and its manifest) out of orbax's sight, without deleting anything."""
    self.wait()
    if jax.process_index() != 0:  # one process moves it (a shared file system); the others see it gone
      jax.experimental.multihost_utils.sync_global_devices(f"quarantine {step}")
      self.manager.reload()
      return
    target = self.directory.parent / "damaged_checkpoints" / str(step)
    suffix = 1
    while target.exists():
      target = target.with_name(f"{step}.{suffix}")
      suffix += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(self.directory / str(step), target)
    manifest = self.directory / MANIFESTS / f"{step}.json"
    if manifest.exists():
      os.replace(manifest, target.with_name(target.name + ".manifest.json"))
    if jax.process_count() > 1:
      jax.experimental.multihost_utils.sync_global_devices(f"quarantine {step}")
    self.manager.reload()

  def wait(self) -> None:
    """Blocks until a save in flight is complete, then records its manifest."""
    self.manager.wait_until_finished()
    self._record_manifests()

  def close(self) -> None:
    self.wait()
    self.manager.close()


def load_trained(
  workdir: str | Path, step: int | None = None
) -> tuple[nnx.GraphDef, dict, ml_collections.ConfigDict, int]:
  """The model of a training workdir at its latest (or the given) checkpoint: its parameters only.

  The structure to restore into comes from `nnx.eval_shape` (nothing allocated), and only the
  parameters are read from the checkpoint, not the optimizer's moments.

  Returns:
    graphdef, params, the config (base defaults with the workdir's model, tokenizer, seq_len and seed), step.
  """
  workdir = Path(workdir).expanduser().resolve()
  record_path = workdir / "config.json"
  if not record_path.exists():
    raise CheckpointError(f"{workdir} is not a training workdir: it has no config.json")
  record = json.loads(record_path.read_text())
  config = base_config()
  config.model.update(record["model"])
  config.model.mixers = tuple(record["model"]["mixers"])
  config.data.tokenizer, config.data.seq_len = record["tokenizer"], record["seq_len"]
  config.seed = record.get("seed", config.seed)
  checkpointer = Checkpointer(workdir / "checkpoints", asynchronous=False)
  steps = checkpointer.all_steps()
  if not steps:
    raise CheckpointError(f"{workdir / 'checkpoints'} holds no complete checkpoint")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise CheckpointError(f"{workdir / 'checkpoints'} has no checkpoint of step {step}; it has steps {steps}")
  abstract = nnx.eval_shape(lambda: WaveFieldLM(config.model, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  params = checkpointer.restore_params(step, nnx.to_pure_dict(abstract_state))
  checkpointer.close()
  return graphdef, params, config, step
