"""The training loop: it learns, resumes exactly across processes, and refuses mismatched workdirs."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import helpers
import jax
import jax.numpy as jnp
import ml_collections
import pytest
from helpers import file_digests, read_losses

from wavefield_jax import input_pipeline, tokenizers, train_lib
from wavefield_jax.checkpointing import Checkpointer, CheckpointError
from wavefield_jax.config import base_config
from wavefield_jax.generate import sample_text
from wavefield_jax.train_lib import train_and_evaluate

REPO = Path(__file__).resolve().parent.parent

# The tiny run the command-line tests train: configs/tiny.py's one layer of each mixer on a user's text.
TINY_RUN = {
  "config": f"{REPO / 'configs' / 'tiny.py'}:hybrid",
  "config.data.source": "local_text",
  "config.data.seq_len": 32,
  "config.train.steps": 24,
  "config.train.batch_size": 4,
  "config.train.warmup_steps": 4,
  "config.train.log_every": 1,
  "config.train.eval_every": 10,
  "config.train.eval_windows": 4,
  "config.train.checkpoint_every": 5,
  "config.train.sample_tokens": 8,
}


def tiny_run_flags(**changes) -> list[str]:
  """TINY_RUN as train.py flags, with `changes` (keys without the `config.train.` prefix) applied."""
  run = TINY_RUN | {f"config.train.{key}": value for key, value in changes.items()}
  return [f"--{key}={value}" for key, value in run.items()]


# Trains models, starts processes or compiles many shapes: left out of `make test-fast`.
pytestmark = pytest.mark.slow


def tiny_config(**train) -> ml_collections.ConfigDict:
  return helpers.tiny_config(**(dict(warmup_steps=10, log_every=10, eval_every=1000) | train))


def test_the_loop_learns_a_repetitive_text(tmp_path):
  verse = b"Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n"
  corpus = input_pipeline.tokenize(
    {"train": [verse * 200], "validation": [verse * 5], "test": [verse * 5]}, tokenizers.ByteTokenizer(), 32
  )
  config = tiny_config(steps=250, learning_rate=1e-2)
  result = train_and_evaluate(config, tmp_path, corpus=corpus)
  losses = read_losses(tmp_path)
  assert losses[10] > 1.0
  assert max(losses[s] for s in range(240, 251)) < 0.1
  assert result["loss"] < 0.1 and result["bpb"] < 0.15
  assert (tmp_path / "loss.png").stat().st_size > 0 and (tmp_path / "samples.txt").exists()
  # Started again, the finished run reports its result and writes no second record of its last step.
  records = [(tmp_path / name).read_bytes() for name in ("metrics.jsonl", "samples.txt")]
  again = train_and_evaluate(config, tmp_path, corpus=corpus)
  assert again["step"] == 250 and abs(again["loss"] - result["loss"]) < 1e-6
  assert [(tmp_path / name).read_bytes() for name in ("metrics.jsonl", "samples.txt")] == records


def run_train(run: list[str], workdir: Path, text_glob: str, *overrides: str) -> subprocess.CompletedProcess:
  command = [
    sys.executable,
    str(REPO / "train.py"),
    *run,
    f"--workdir={workdir}",
    f"--config.data.files.train={text_glob}",
    f"--config.data.tfds_dir={workdir.parent / 'tfds'}",
    *overrides,
  ]
  env = os.environ | {"XLA_FLAGS": ""}  # one device, as a user's run
  return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


@pytest.fixture
def text_files(tmp_path, rng):
  words = ["wave", "field", "damped", "speed", "phase", "token", "the", "of", "and", "light"]
  text = "\n".join(" ".join(rng.choice(words, 12)) for _ in range(600))
  (tmp_path / "corpus.txt").write_text(text)
  return tiny_run_flags(), str(tmp_path / "corpus.txt")


def test_resume_in_a_new_process_gives_the_same_losses(tmp_path, text_files):
  run, corpus = text_files
  straight = run_train(run, tmp_path / "straight", corpus)
  assert straight.returncode == 0, straight.stderr[-2000:]
  first = run_train(run, tmp_path / "split", corpus, "--config.train.stop_at=12")
  assert first.returncode == 0, first.stderr[-2000:]
  assert "stopped at train.stop_at=12" in first.stdout
  assert max(read_losses(tmp_path / "split")) == 12
  second = run_train(run, tmp_path / "split", corpus)
  assert second.returncode == 0, second.stderr[-2000:]
  assert "resuming from step 12" in second.stdout
  want, got = read_losses(tmp_path / "straight"), read_losses(tmp_path / "split")
  assert sorted(want) == sorted(got) == list(range(1, 25))
  for step in want:
    assert abs(want[step] - got[step]) <= 1e-6, (step, want[step], got[step])


def test_a_workdir_of_another_model_is_refused_and_left_untouched(tmp_path, text_files):
  run, corpus = text_files
  workdir = tmp_path / "run"
  assert run_train(run, workdir, corpus, "--config.train.steps=5").returncode == 0
  before = file_digests(workdir)
  other = run_train(run, workdir, corpus, "--config.model.dim=48", "--config.model.mlp_dim=96")
  assert other.returncode != 0
  assert "different config" in other.stderr and "model.dim: checkpoint 32 vs config 48" in other.stderr
  assert "Traceback" not in other.stderr
  assert file_digests(workdir) == before


def test_bad_corpora_give_one_clear_line(tmp_path, text_files):
  run, _ = text_files
  (tmp_path / "empty.txt").write_bytes(b"")
  (tmp_path / "short.txt").write_bytes(b"\xff\xfe\x00 too short")
  for name, message in (("empty.txt", "split is empty"), ("short.txt", "fewer than one training window")):
    result = run_train(run, tmp_path / name.split(".")[0], str(tmp_path / name))
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_mismatched_checkpoint_restore_is_a_checkpoint_error(tmp_path):
  verse = b"To be, or not to be, that is the question.\n" * 100
  corpus = input_pipeline.tokenize(
    {"train": [verse], "validation": [verse], "test": [verse]}, tokenizers.ByteTokenizer(), 32
  )
  train_and_evaluate(tiny_config(steps=3, checkpoint_every=3), tmp_path, corpus=corpus)
  (tmp_path / "config.json").write_text(
    (tmp_path / "config.json").read_text().replace('"mlp_dim": 64', '"mlp_dim": 96')
  )
  config = tiny_config(steps=6)
  config.model.mlp_dim = 96
  with pytest.raises(CheckpointError, match="checkpoint step 3 .* does not match"):
    train_and_evaluate(config, tmp_path, corpus=corpus)


def test_commands_define_no_flags_when_imported():
  from absl import flags

  import wavefield_jax.evaluate
  import wavefield_jax.inspection
  import wavefield_jax.sample
  import wavefield_jax.train  # noqa: F401

  assert "workdir" not in flags.FLAGS and "prompt" not in flags.FLAGS


def test_evaluate_and_sample_commands_on_a_trained_run(tmp_path, text_files):
  run, corpus = text_files
  workdir = tmp_path / "run"
  assert run_train(run, workdir, corpus, "--config.train.steps=5").returncode == 0
  (tmp_path / "unseen.txt").write_text("the damped wave carries light and phase\n" * 20)
  command = [
    sys.executable,
    "-m",
    "wavefield_jax.evaluate",
    f"--workdir={workdir}",
    f"--text={tmp_path / 'unseen.txt'}",
    "--json",
  ]
  done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  scores = json.loads(done.stdout)
  (result,) = scores["files"]
  assert scores["step"] == 5 and result["bytes"] == 40 * 20 - 1
  assert 0 < result["bpb"] < 8.5 and abs(result["bpb"] - result["loss"] / 0.6931471805599453) < 1e-9

  sample = [sys.executable, "-m", "wavefield_jax.sample", f"--workdir={workdir}", "--prompt=The wave", "--top_k=5"]
  # The command once (its output format); the seed's and temperature's effects in this process.
  # Bytes, not text=True: universal newlines would turn a sampled "\r" into "\n".
  done = subprocess.run(sample + ["--max_new_tokens=12", "--seed=3"], capture_output=True, cwd=REPO, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  header, _, text = done.stdout.decode("utf-8").partition("\n")  # not splitlines: a byte may be \x1c-\x1e or \x85
  assert header.startswith("--- sample 1 of 1 (step 5, seed 3)")
  text = text.removesuffix("\n")
  assert text.startswith("The wave") and len(text.encode()) >= len("The wave") + 12 - 1  # 12 new bytes
  (again,), step = sample_text(workdir, "The wave", 12, top_k=5, seed=3)
  assert step == 5 and again == text  # the seed decides the text
  greedy = [sample_text(workdir, "The wave", 12, temperature=0, seed=s)[0] for s in (1, 2)]
  assert greedy[0] == greedy[1]  # greedy decoding ignores the seed
  bad = subprocess.run(sample + ["--top_p=1.5"], capture_output=True, text=True, cwd=REPO, timeout=300)
  assert bad.returncode != 0 and "top_p must be in (0, 1]" in bad.stderr


def start_two_processes(tmp_path: Path, run: list[str], corpus: str, workdir: Path) -> list[subprocess.Popen]:
  with socket.socket() as probe:  # a port the OS says is free now: concurrent tests never share one
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  processes = []
  for rank in range(2):
    command = [
      sys.executable,
      str(REPO / "train.py"),
      *run,
      f"--workdir={workdir}",
      f"--config.data.files.train={corpus}",
      f"--config.data.tfds_dir={tmp_path / f'tfds{rank}'}",
      "--multihost",
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={rank}",
    ]
    env = os.environ | {"XLA_FLAGS": "", "PYTHONUNBUFFERED": "1"}  # one CPU device per process
    processes.append(
      subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
  return processes


def test_ctrl_c_on_one_process_stops_both_after_the_same_step_and_one_checkpoint(tmp_path):
  (tmp_path / "periodic.txt").write_text("wave field jax! " * 2000)
  run = tiny_run_flags(steps=100000, log_every=2, eval_every=100000, checkpoint_every=100000, sample_tokens=0)
  workdir = tmp_path / "two"
  processes = start_two_processes(tmp_path, run, str(tmp_path / "periodic.txt"), workdir)
  deadline = time.monotonic() + 480  # two processes compiling on a loaded 2-core machine can take minutes
  while not (workdir / "metrics.jsonl").exists() or not read_losses(workdir):  # both are in the loop
    ended = [p.communicate()[1][-2000:] for p in processes if p.poll() is not None]
    assert time.monotonic() < deadline and not ended, f"training never started: {ended}"
    time.sleep(0.5)
  processes[1].send_signal(signal.SIGINT)  # only the second process is interrupted
  outputs = [p.communicate(timeout=300) for p in processes]
  for process, (_, stderr) in zip(processes, outputs, strict=True):
    assert process.returncode == 0, stderr[-2000:]
  saved = [re.search(r"interrupted: saved step (\d+)", stdout) for stdout, _ in outputs]
  assert all(saved), [stdout[-500:] for stdout, _ in outputs]
  (step,) = {int(match.group(1)) for match in saved}
  assert step % 2 == 0 and step < 100000  # at a log step, where the processes agree
  assert Checkpointer(workdir / "checkpoints").all_steps() == [step]


def test_two_processes_on_localhost_agree_with_one(tmp_path):
  # A text with period 16: every window of 32 is the same, so however the processes split and shuffle
  # the windows, the global batch is the same as one process's: the losses must agree.
  (tmp_path / "periodic.txt").write_text("wave field jax! " * 2000)
  run = tiny_run_flags(steps=6, sample_tokens=0)
  corpus = str(tmp_path / "periodic.txt")
  processes = start_two_processes(tmp_path, run, corpus, tmp_path / "two")
  single = run_train(run, tmp_path / "one", corpus)
  assert single.returncode == 0, single.stderr[-2000:]
  assert "validation:" in single.stdout and "sample:" not in single.stdout  # sample_tokens=0: no empty box
  for process in processes:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
  want, got = read_losses(tmp_path / "one"), read_losses(tmp_path / "two")
  assert sorted(got) == list(range(1, 7))
  for step in want:
    assert abs(want[step] - got[step]) <= 1e-5 * abs(want[step]), (step, want[step], got[step])
  assert (tmp_path / "two" / "checkpoints" / "6").is_dir()


def test_train_step_compiles_without_ynnpack_reductions():
  # One sequence per step ran 2.5x slower per token with XLA's YNNPACK reduction fusions (train_lib); the
  # compiled step has none, where the same gradient jitted plainly has them (the check reads the program).
  if not train_lib.compiler_options():
    pytest.skip("this XLA has no YNNPACK fusions to turn off")
  config = base_config()
  config.model.update(dict(dim=32, num_heads=4, mlp_dim=64, max_len=64, num_layers=2, mixers=("wave", "wave")))
  graphdef, state, optimizer = train_lib.init_state(config, seed=0)
  batch = jnp.ones((1, 65), jnp.int32)
  step = train_lib.make_train_step(graphdef, optimizer, skip_nonfinite=False)
  assert "__ynn_fusion" not in step.lower(state, batch).compile().as_text()
  plain = jax.jit(jax.grad(lambda p: train_lib.token_losses(graphdef, p, batch).mean()))
  assert "__ynn_fusion" in plain.lower(state["params"]).compile().as_text()
