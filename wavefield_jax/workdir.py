"""A run's directory: its config record, the checks before training writes to it, and reading its metrics.

workdir/config.json     what the checkpoints depend on (model, tokenizer, window length) and the seed
workdir/metrics.jsonl   one JSON record per log, evaluation and skipped step
workdir/checkpoints/    orbax checkpoints with manifests
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import traverse_util

from wavefield_jax.errors import CheckpointError, TrainingError
from wavefield_jax.files import write_text_atomic

State = dict[str, Any]


def config_record(config: ml_collections.ConfigDict) -> dict:
  """What a checkpoint depends on: the model, the tokenizer and the window length. How the wave
  convolution is computed is not part of it (every method gives the same model), nor is the local
  attention window of a model without local layers."""
  unused = {"wave_method", "wave_chunk_size"} | ({"window"} if "local" not in config.model.mixers else set())
  model = {k: v for k, v in config.model.to_dict().items() if k not in unused}
  return {"model": model, "tokenizer": config.data.tokenizer, "seq_len": config.data.seq_len}


def check_workdir(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Before any training: the workdir must be writable, and any checkpoints in it must be of this model."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    # A name of its own per process: the processes of a multi-host run probe one shared workdir at once.
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_probe_") as probe:
      probe.write(b"\0" * 1024 * 1024)  # a checkpoint needs room, not just permission
      probe.flush()
  except OSError as error:
    raise TrainingError(f"workdir {workdir} is not usable: {error.strerror or error}") from error
  record_path = workdir / "config.json"
  record = json.loads(json.dumps(config_record(config)))
  if record_path.exists():
    saved = traverse_util.flatten_dict(json.loads(record_path.read_text()), sep=".")
    wanted = traverse_util.flatten_dict(record, sep=".")
    for start in ("seed", "model.speed_init"):  # kept for analysis (the initial model); a checkpoint does not
      saved.pop(start, None)  # depend on them, and records written before speed_init existed lack it
      wanted.pop(start, None)
    diff = [
      f"{k}: checkpoint {saved.get(k)!r} vs config {wanted.get(k)!r}"
      for k in sorted(saved | wanted)
      if saved.get(k) != wanted.get(k)
    ]
    if diff:
      raise CheckpointError(
        f"workdir {workdir} holds checkpoints of a different config ({'; '.join(diff)}). "
        "Use another --workdir, or the config that wrote them; nothing was changed."
      )
  elif jax.process_index() == 0:
    # Whole or absent: the other processes of a multi-host run may read it while it is written.
    write_text_atomic(record_path, json.dumps(record | {"seed": config.seed}, indent=1) + "\n")


def check_free_space(workdir: Path, state: State, keep: int) -> None:
  """Refuses to start when the workdir's disk cannot hold the checkpoints the run will write."""
  size = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  need = (keep + 1) * size  # `keep` checkpoints plus the one being written
  free = shutil.disk_usage(workdir).free
  if free < need:
    raise TrainingError(
      f"workdir {workdir} has {free / 2**20:,.1f} MiB free; {keep} checkpoints of this model plus one being "
      f"written need about {need / 2**20:,.1f} MiB. Free space, lower train.keep_checkpoints or use another --workdir."
    )


def read_metrics(path: str | Path) -> list[dict]:
  """The records of a metrics.jsonl; a line cut short by a killed process is skipped."""
  rows = []
  for line in Path(path).read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows
