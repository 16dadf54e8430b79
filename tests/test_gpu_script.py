"""benchmarks/gpu.sh before there is a GPU: its dry run (tiny sizes, CPU) runs every step as the GPU
machine will, without the packages that machine lacks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MISSING_ON_THE_GPU_MACHINE = ("ml_collections", "grain", "tensorflow_datasets", "array_record")
BY_DESIGN = ("a floor of the forward pass only", "skipped (longer than what ran)")


@pytest.mark.slow
def test_gpu_script_dry_run_needs_none_of_the_packages_the_gpu_machine_lacks(tmp_path):
  blocked = tmp_path / "blocked"
  for package in MISSING_ON_THE_GPU_MACHINE:  # found before site-packages, and unimportable
    (blocked / package).mkdir(parents=True)
    (blocked / package / "__init__.py").write_text(f"raise ImportError('{package} is not on the GPU machine')\n")
  check = [sys.executable, "-c", "import grain"]
  assert subprocess.run(check, env=os.environ | {"PYTHONPATH": str(blocked)}, capture_output=True).returncode != 0

  out = tmp_path / "out"
  env = os.environ | {
    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    "PYTHONPATH": str(blocked),
    "OUT": str(out),
  }
  done = subprocess.run(
    ["bash", "benchmarks/gpu.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert "installed ml_collections-" in done.stdout  # from benchmarks/wheels, without the index

  scaling = json.loads((out / "scaling.json").read_text())
  rows = scaling["rows"] + scaling["chunk_sweep"]
  assert {r["kind"] for r in rows} >= {"fft", "matmul", "attention"}
  assert all(r.get("error", BY_DESIGN[0]) in BY_DESIGN for r in rows), [r for r in rows if "error" in r]
  throughput = json.loads((out / "throughput.json").read_text())
  assert {r["model"] for r in throughput["rows"]} == {"wave_fft", "hybrid"}
  assert all(r["tokens_per_s"] > 0 for r in throughput["rows"])
  decode = json.loads((out / "decode.json").read_text())
  assert all(r["latency_ms"] > 0 and "error" not in r for r in decode["rows"])
