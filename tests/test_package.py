"""The package as users meet it: a wheel that runs outside a checkout, commands that explain themselves."""

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = ["--config.model.dim=32", "--config.model.mlp_dim=64", "--config.train.eval_windows=2"]


def command(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_help_lists_the_flags_and_every_config_key():
  done = command("train.py", "--help")
  assert done.returncode == 0
  for flag in ("--workdir", "--config", "--multihost"):
    assert flag in done.stdout
  for key in ("model.remat = 'none'", "model.loss_chunk_size = None", "train.steps = 1000", "data.seq_len = 256"):
    assert key in done.stdout
  assert "--grain_py_debug_mode" not in done.stdout  # other packages' flags stay out of the short help
  sample = command("-m", "wavefield_jax.sample", "--help")
  assert sample.returncode == 0 and "--temperature" in sample.stdout and "Print text sampled" in sample.stdout


@pytest.mark.parametrize(
  "args, line",
  [
    (["--config.train.step=3"], "error: unknown config key train.step; did you mean train.steps?"),
    (["--config.model.dimm=3"], "error: unknown config key model.dimm; did you mean model.dim?"),
    (["--wrokdir=x"], "error: unknown flag --wrokdir; did you mean --workdir?"),
  ],
)
def test_a_mistyped_key_or_flag_is_one_line_and_status_2(tmp_path, args, line):
  done = command("train.py", f"--workdir={tmp_path / 'run'}", *args)
  assert done.returncode == 2
  assert done.stderr.strip() == line
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_wheel_runs_every_command_outside_the_checkout(tmp_path):
  # Built and installed as a user would; the dependencies come from this environment (a .pth file), not
  # from the network, and nothing of the checkout is on the path.
  subprocess.run(
    [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", tmp_path / "dist"], cwd=REPO, check=True
  )
  (wheel,) = (tmp_path / "dist").glob("wavefield_jax-*.whl")
  venv.create(tmp_path / "env", with_pip=False)
  python = tmp_path / "env" / "bin" / "python"
  site = subprocess.run(
    [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True
  )
  Path(site.stdout.decode().strip(), "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", wheel], check=True)
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  (outside / "text.txt").write_text("To be, or not to be, that is the question.\n")
  bin_dir = python.parent

  def run(name: str, *args: str) -> str:
    done = subprocess.run([bin_dir / name, *args], capture_output=True, text=True, cwd=outside, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout

  where = subprocess.run(
    [python, "-c", "import wavefield_jax; print(wavefield_jax.__file__)"], capture_output=True, cwd=outside
  )
  assert str(tmp_path / "env") in where.stdout.decode()
  trained = run("wavefield-train", "--workdir=run", "--config.train.steps=3", "--config.train.sample_tokens=20", *TINY)
  assert "bits per byte (step 3)" in trained
  assert "bits/byte" in run("wavefield-evaluate", "--workdir=run", "--text=text.txt")
  assert "ROMEO:" in run("wavefield-sample", "--workdir=run", "--prompt=ROMEO:", "--max_new_tokens=5")
  assert "report.md" in run("wavefield-inspect", "--workdir=run", "--length=16", "--windows=2")
  # lm-eval offline, on a LAMBADA-format cloze file and a raw WikiText-format file made here.
  (outside / "cloze.jsonl").write_text("".join(f'{{"text": "To be, or not to {w}"}}\n' for w in ("be", "go", "see")))
  (outside / "wiki.raw").write_text(" = Hamlet = \n\n To be, or not to be. \n = = Act = = \n That is the question. \n")
  scored = run(
    "wavefield-harness",
    "--workdir=run",
    "--tasks=lambada_local,wikitext103_local",
    "--lambada=cloze.jsonl",
    "--wikitext103=wiki.raw",
    "--output=lm_eval.json",
  )
  assert "lambada_local: " in scored and "word_perplexity" in scored
  assert set(json.loads((outside / "lm_eval.json").read_text())["results"]) == {"lambada_local", "wikitext103_local"}
  # A shipped config by its checkout path, with an argument, from outside the checkout.
  small = ["--config=configs/small.py:selective", "--config.train.steps=1", "--config.train.sample_tokens=0"]
  assert "step 1" in run("wavefield-train", "--workdir=small", *small, "--config.train.eval_windows=1")
