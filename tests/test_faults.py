"""The fault suite: killed runs, damaged checkpoints, unusable workdirs and non-finite losses lose nothing."""

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import file_digests, read_losses, tiny_config, tiny_corpus

from wavefield_jax import input_pipeline, tokenizers, train_lib
from wavefield_jax.checkpointing import (
  Checkpointer,
  CheckpointError,
  DamagedCheckpointError,
  load_trained,
  write_text_atomic,
)
from wavefield_jax.train_lib import train_and_evaluate
from wavefield_jax.workdir import TrainingError, check_workdir

# Trains models, starts processes or compiles many shapes: left out of `make test-fast`.
pytestmark = pytest.mark.slow

DRIVER = Path(__file__).resolve().parent / "train_driver.py"
TRAIN = dict(steps=30, checkpoint_every=5, keep_checkpoints=3)


def drive(workdir: Path, kill: dict | None = None, **train) -> subprocess.CompletedProcess:
  spec = {"workdir": str(workdir), "train": TRAIN | train, "kill": kill}
  command = [sys.executable, str(DRIVER), json.dumps(spec)]
  environment = os.environ | {"PYTHONUNBUFFERED": "1"}  # a SIGKILL loses buffered output
  return subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)


def test_runs_killed_anywhere_resume_from_the_last_complete_checkpoint_with_the_same_losses(tmp_path):
  reference = drive(tmp_path / "reference")
  assert reference.returncode == 0, reference.stderr[-2000:]
  want = read_losses(tmp_path / "reference")
  assert sorted(want) == list(range(1, 31))

  run = tmp_path / "killed"
  # Kills mid-save (orbax still writing the step in the background) and between checkpoints. A kill can
  # also take the checkpoint before it with it if that save had not finished: "complete" is what is left.
  kills = [{"when": "saving", "step": 10}, {"when": "step", "step": 17}, {"when": "saving", "step": 25}]
  complete = None
  for kill in kills:
    done = drive(run, kill)
    assert done.returncode == -9, done.stderr[-2000:]  # SIGKILL
    if complete is not None:
      assert f"resuming from step {complete} in" in done.stdout
    checkpoints = run / "checkpoints"
    if kill["when"] == "saving":  # the kill landed mid-save: orbax's temporary directory is there
      assert any(p.name.startswith(f"{kill['step']}.orbax-checkpoint-tmp") for p in checkpoints.iterdir())
    complete = Checkpointer(checkpoints).latest_step()
    assert complete is not None and complete < kill["step"] and complete % 5 == 0
  done = drive(run)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"resuming from step {complete} in" in done.stdout  # never from an incomplete step
  got = read_losses(run)
  assert sorted(got) == sorted(want)
  assert [got[s] for s in want] == [want[s] for s in want]  # bit for bit
  (final,) = [json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
  (reference_final,) = [json.loads(line[7:]) for line in reference.stdout.splitlines() if line.startswith("RESULT ")]
  assert final == reference_final


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
  """A 20-step run stopped at step 15, with complete checkpoints at steps 5, 10 and 15 (and manifests)."""
  workdir = tmp_path_factory.mktemp("trained")
  train_and_evaluate(tiny_config(steps=20, checkpoint_every=5, stop_at=15), workdir, corpus=tiny_corpus())
  return workdir


def damaged_copy(trained: Path, tmp_path: Path, damage) -> tuple[Path, Path]:
  """A copy of the trained workdir with the largest file of checkpoint 15 damaged by `damage(path)`."""
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  step = workdir / "checkpoints" / "15"
  largest = max((p for p in step.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  damage(largest)
  return workdir, largest


def truncate(path: Path) -> None:
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
  raw = bytearray(path.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
  ("damage", "problem"), [(truncate, "truncated or overwritten"), (flip_a_byte, "changed after it was saved")]
)
def test_a_damaged_checkpoint_is_named_by_step_and_file_and_left_as_it_is(trained, tmp_path, damage, problem):
  workdir, file = damaged_copy(trained, tmp_path, damage)
  before = file_digests(workdir)
  with pytest.raises(DamagedCheckpointError) as error:
    train_and_evaluate(tiny_config(steps=20, checkpoint_every=5), workdir, corpus=tiny_corpus())
  message = str(error.value)
  assert "checkpoint step 15 is damaged" in message and str(file) in message and problem in message
  assert "train.restore_fallback=True to resume from step 10" in message
  assert file_digests(workdir) == before  # nothing written, overwritten or deleted


def test_without_a_manifest_orbax_reading_errors_still_name_the_step(trained, tmp_path):
  workdir, _ = damaged_copy(trained, tmp_path, truncate)
  (workdir / "checkpoints" / "manifests" / "15.json").unlink()  # as if killed before the manifest was written
  for chunk in (workdir / "checkpoints" / "15" / "state").rglob("d/*"):  # every array data file
    truncate(chunk)
  before = file_digests(workdir)
  with pytest.raises(DamagedCheckpointError, match=r"checkpoint step 15 in .*15 could not be read"):
    train_and_evaluate(tiny_config(steps=20, checkpoint_every=5), workdir, corpus=tiny_corpus())
  assert file_digests(workdir) == before


def test_fallback_resumes_from_the_previous_checkpoint_and_keeps_the_damaged_one(trained, tmp_path):
  workdir, _ = damaged_copy(trained, tmp_path, flip_a_byte)
  damaged = file_digests(workdir / "checkpoints" / "15")
  config = tiny_config(steps=20, checkpoint_every=5, restore_fallback=True)
  train_and_evaluate(config, workdir, corpus=tiny_corpus())
  assert file_digests(workdir / "damaged_checkpoints" / "15") == damaged  # moved aside, not deleted
  assert (workdir / "damaged_checkpoints" / "15.manifest.json").exists()
  assert Checkpointer(workdir / "checkpoints").all_steps() == [10, 15, 20]
  # Steps 11-15 were trained again from step 10 and match the first time, as does everything after.
  reference = tmp_path / "reference"
  train_and_evaluate(tiny_config(steps=20, checkpoint_every=5), reference, corpus=tiny_corpus())
  assert read_losses(workdir) == read_losses(reference)


def test_a_metrics_line_cut_by_a_kill_is_ended_and_skipped(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  with (workdir / "metrics.jsonl").open("a") as f:
    f.write('{"kind": "train", "step": 16, "lo')  # what a SIGKILL in the middle of a write leaves
  train_and_evaluate(tiny_config(steps=20, checkpoint_every=5), workdir, corpus=tiny_corpus())
  assert sorted(read_losses(workdir)) == list(range(1, 21))
  assert (workdir / "loss.png").stat().st_size > 0


def no_training(monkeypatch) -> list:
  """Records train steps: an unusable workdir must be refused before the first."""
  calls = []
  make_train_step = train_lib.make_train_step
  monkeypatch.setattr(train_lib, "make_train_step", lambda *a, **k: calls.append(1) or make_train_step(*a, **k))
  return calls


def test_a_read_only_workdir_is_refused_before_training(tmp_path, monkeypatch):
  calls = no_training(monkeypatch)
  workdir = tmp_path / "readonly"
  workdir.mkdir()
  if os.geteuid() != 0:
    workdir.chmod(0o500)
  else:  # root writes through permission bits: the file system itself says read-only
    named_temporary_file = tempfile.NamedTemporaryFile

    def read_only(*args, dir=None, **kwargs):
      if dir is not None and Path(dir) == workdir:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
      return named_temporary_file(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
  with pytest.raises(TrainingError, match=f"workdir {workdir} is not usable: (Read-only file system|Permission)"):
    train_and_evaluate(tiny_config(steps=5), workdir, corpus=tiny_corpus())
  assert not calls
  workdir.chmod(0o700)


def test_processes_that_check_one_workdir_at_once_all_pass_and_read_a_whole_config(tmp_path):
  # The processes of a multi-host run check one shared workdir at the same moment: each must probe
  # with a file of its own and never read the config record half written.
  config, workdir = tiny_config(steps=5), tmp_path / "shared"
  start, errors = threading.Barrier(16), []

  def check():
    start.wait()
    try:
      for _ in range(20):
        check_workdir(workdir, config)
    except Exception as error:  # noqa: BLE001 (collected for the assertion below)
      errors.append(error)

  threads = [threading.Thread(target=check) for _ in range(16)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not errors, errors[:3]
  assert sorted(p.name for p in workdir.iterdir()) == ["config.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_partial(tmp_path, monkeypatch):
  path = tmp_path / "config.json"
  write_text_atomic(path, "old")

  def full_disk(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "replace", full_disk)
  with pytest.raises(OSError, match="No space left"):
    write_text_atomic(path, "new")
  assert path.read_text() == "old"
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_how_the_speeds_started_does_not_stop_a_resume(tmp_path):
  config = tiny_config()
  check_workdir(tmp_path, config)
  record = json.loads((tmp_path / "config.json").read_text())
  assert record["model"]["speed_init"] == "spread"
  del record["model"]["speed_init"]  # as a workdir written before the key existed
  (tmp_path / "config.json").write_text(json.dumps(record))
  config.model.speed_init = "tied"  # the checkpoint holds the trained speeds, whatever they started at
  check_workdir(tmp_path, config)
  config.model.mlp_dim += 2
  with pytest.raises(CheckpointError, match="model.mlp_dim"):
    check_workdir(tmp_path, config)


def test_a_workdir_that_is_a_file_is_refused(tmp_path, monkeypatch):
  calls = no_training(monkeypatch)
  (tmp_path / "file").write_text("not a directory")
  with pytest.raises(TrainingError, match="is not usable"):
    train_and_evaluate(tiny_config(steps=5), tmp_path / "file" / "run", corpus=tiny_corpus())
  assert not calls


def test_a_full_disk_is_refused_before_training(tmp_path, monkeypatch):
  calls = no_training(monkeypatch)
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=100_000))
  with pytest.raises(TrainingError, match=r"has 0.1 MiB free; 3 checkpoints of this model plus one .* need about"):
    train_and_evaluate(tiny_config(steps=5), tmp_path / "run", corpus=tiny_corpus())
  assert not calls and not (tmp_path / "run" / "checkpoints").exists()


POISON = 7  # a token that occurs once in the training text: every batch that holds it goes non-finite


def poisoned_corpus() -> tuple[input_pipeline.Corpus, bytes]:
  rng = np.random.default_rng(3)
  text = bytearray(rng.integers(97, 123, 4000).astype(np.uint8))
  text[1234] = POISON
  clean = bytes(rng.integers(97, 123, 2000).astype(np.uint8))
  return input_pipeline.tokenize(
    {"train": [bytes(text)], "validation": [clean], "test": [clean]}, tokenizers.ByteTokenizer(), 32
  ), text


@pytest.fixture
def poison(monkeypatch):
  """Makes the loss (and every gradient) NaN for batches that contain the POISON token."""
  token_losses = train_lib.token_losses

  def poisoned(graphdef, params, batch, segment_ids=None):
    return token_losses(graphdef, params, batch, segment_ids) * jnp.where(jnp.any(batch == POISON), jnp.nan, 1.0)

  monkeypatch.setattr(train_lib, "token_losses", poisoned)


def poisoned_steps(corpus: input_pipeline.Corpus, config) -> list[int]:
  """Which steps' batches hold the poison, from the data pipeline alone."""
  dataset = iter(
    input_pipeline.train_dataset(corpus.tokens["train"], config.data.seq_len, config.train.batch_size, config.seed)
  )
  return [step for step in range(1, config.train.steps + 1) if (next(dataset) == POISON).any()]


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, poison):
  corpus, _ = poisoned_corpus()
  config = tiny_config(steps=40, checkpoint_every=2, keep_checkpoints=100)
  first = poisoned_steps(corpus, config)[0]
  with pytest.raises(TrainingError, match=f"non-finite loss nan at step {first}; stopped, the last good checkpoint"):
    train_and_evaluate(config, tmp_path, corpus=corpus)
  steps = Checkpointer(tmp_path / "checkpoints").all_steps()
  assert steps == list(range(2, first, 2))  # every checkpoint before the bad step, none after it
  _, params, _, step = load_trained(tmp_path)
  assert step == steps[-1] and all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))


def test_skip_mode_skips_exactly_the_bad_batches_and_trains_on(tmp_path, poison):
  corpus, _ = poisoned_corpus()
  config = tiny_config(steps=40, checkpoint_every=10, on_nonfinite="skip")
  bad = poisoned_steps(corpus, config)
  assert len(bad) >= 2  # the poison comes back every epoch
  result = train_and_evaluate(config, tmp_path, corpus=corpus)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["kind"] == "skipped"] == bad
  assert all(np.isfinite(r["loss"]) for r in rows if r["kind"] == "train")
  assert np.isfinite(result["loss"]) and result["step"] == 40


def test_a_step_that_is_not_there_is_named_with_the_steps_that_are(trained):
  with pytest.raises(CheckpointError, match=r"has no checkpoint of step 7; it has steps \[5, 10, 15\]"):
    load_trained(trained, step=7)
  _, _, _, step = load_trained(trained, step=10)
  assert step == 10
