"""A thin layer over orbax-checkpoint: the train state and the data iterator position, saved together.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-save leaves no checkpoint that `latest_step` would pick. What this layer adds is clear errors:
a checkpoint that does not match the model, or that cannot be read, names its step and directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored into this run; nothing on disk was changed."""


class Checkpointer:
  """Saves and restores {"state": pytree of arrays, "data": JSON-able iterator state}."""

  def __init__(self, directory: str | Path, keep: int = 3, asynchronous: bool = True):
    self.directory = Path(directory).resolve()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
    self.manager.save(step, args=args, force=force)

  def restore(self, step: int, like: Any) -> tuple[Any, dict]:
    """Restores step `step` into the structure, shapes and dtypes of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
    try:
      restored = self.manager.restore(step, args=args)
    except (ValueError, KeyError, TypeError) as error:
      raise CheckpointError(
        f"checkpoint step {step} in {self.directory / str(step)} does not match this model and optimizer "
        f"(a different config wrote it?): {str(error).splitlines()[0][:300]}"
      ) from error
    except Exception as error:  # orbax and tensorstore raise many kinds for damaged files
      raise CheckpointError(
        f"checkpoint step {step} in {self.directory / str(step)} could not be read (damaged or incomplete?): "
        f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
      ) from error
    return restored["state"], restored["data"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
