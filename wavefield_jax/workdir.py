"""A run's directory: its config record and the checks before training, the metrics log, and loading
what a finished run left (its parameters, its metrics).

  workdir/config.json     what the checkpoints depend on (model, tokenizer, window length) and the seed
  workdir/metrics.jsonl   one JSON record per log, evaluation and skipped step
  workdir/checkpoints/    orbax checkpoints with manifests
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx, traverse_util

from wavefield_jax.checkpointing import Checkpointer, CheckpointError, write_text_atomic
from wavefield_jax.config import base_config
from wavefield_jax.model import WaveFieldLM

State = dict[str, Any]


class TrainingError(RuntimeError):
  """A run that cannot go on (non-finite loss, unusable workdir); the last good checkpoint is kept."""


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
    saved.pop("seed", None)  # kept for analysis (the initial model); a checkpoint does not depend on it
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
  step = checkpointer.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"{workdir / 'checkpoints'} holds no complete checkpoint")
  abstract = nnx.eval_shape(lambda: WaveFieldLM(config.model, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  params = checkpointer.restore_params(step, nnx.to_pure_dict(abstract_state))
  checkpointer.close()
  return graphdef, params, config, step


def read_metrics(path: str | Path) -> list[dict]:
  """The records of a metrics.jsonl; a line cut short by a killed process is skipped."""
  rows = []
  for line in Path(path).read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


def plot_losses(metrics_path: Path, out: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_metrics(metrics_path)
  train = [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]
  valid = [(r["step"], r["loss"]) for r in rows if r["kind"] == "eval"]
  fig, ax = plt.subplots(figsize=(7, 4))
  if train:
    ax.plot(*zip(*train, strict=True), label="train loss", alpha=0.8)
  if valid:
    ax.plot(*zip(*valid, strict=True), "o-", label="validation loss")
  ax.set_xlabel("step")
  ax.set_ylabel("nats per token")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


class MetricsLog:
  """The run's metrics.jsonl, written by one process (`lead`).

  A line a kill cut short is ended first, so the next record stands alone. Train-step metrics stay on
  the device until `flush` (fetching every step's loss would stall the pipeline); `add` waits only for
  the step before, so one step is in flight and a progress bar moves as steps finish. `flush` applies
  the non-finite policy: "stop" raises TrainingError, "skip" records the skipped step.
  """

  def __init__(self, path: Path, *, lead: bool, on_nonfinite: str, tokens_per_step: int, start: int, checkpoints: Path):
    self.path, self.lead, self.on_nonfinite, self.tokens_per_step = path, lead, on_nonfinite, tokens_per_step
    self.checkpoints = checkpoints  # named in the error that stops a run
    self.pending: list[tuple[int, dict]] = []
    self.last_time, self.last_step = time.perf_counter(), start
    if lead and path.exists() and not path.read_bytes().endswith(b"\n"):
      with path.open("a") as f:
        f.write("\n")

  def write(self, record: dict) -> None:
    if self.lead:
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")

  def add(self, step: int, metrics: dict) -> None:
    """The metrics of the step that reached `step`, still on the device."""
    if self.pending:
      jax.block_until_ready(self.pending[-1][1])
    self.pending.append((step, metrics))

  def flush(self) -> float:
    """Writes the steps added since the last flush; returns the last loss (nan if none)."""
    last = float("nan")
    for step, m in jax.device_get(self.pending):
      if not m["finite"]:
        message = f"non-finite loss {m['loss']} at step {step}"
        if self.on_nonfinite == "stop":
          raise TrainingError(f"{message}; stopped, the last good checkpoint is kept in {self.checkpoints}")
        self.write({"kind": "skipped", "step": step, "loss": float(m["loss"])})
      else:
        self.write({"kind": "train", "step": step, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"])})
      last = float(m["loss"])
    self.pending.clear()
    return last

  def log_progress(self, step: int) -> tuple[float, float]:
    """Flushes, then records the tokens per second since the last call; returns (last loss, that rate)."""
    loss = self.flush()
    now = time.perf_counter()
    rate = (step - self.last_step) * self.tokens_per_step / (now - self.last_time)
    self.last_time, self.last_step = now, step
    self.write({"kind": "speed", "step": step, "tokens_per_s": rate})
    return loss, rate
