"""Benchmarks run each case in a fresh process: its result, its progress and its failure come back."""

import os
import textwrap

import pytest

from benchmarks import common

CHILD = """
import json, sys, time
case = json.loads(sys.argv[sys.argv.index("--case") + 1])
for done in range(3):
  sys.stderr.write(f"\\rtrain {case['name']}: {done}/3 steps")  # a progress bar redraws without a newline
  sys.stderr.flush()
if case["outcome"] == "raise":
  raise ValueError(f"no such length: {case['length']}")
if case["outcome"] == "hang":
  time.sleep(60)
print("a line of the child's own")
print(json.dumps(case | {"accuracy": case["length"] / 1000}))
"""


@pytest.fixture
def child_module(tmp_path, monkeypatch):
  name = f"case_child_{tmp_path.name.replace('-', '_')}"
  (tmp_path / f"{name}.py").write_text(textwrap.dedent(CHILD))
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  return name


def test_a_case_returns_the_json_it_printed_last_and_its_progress_reaches_stderr(child_module, capfd):
  length = int.from_bytes(os.urandom(2), "little") + 1
  case = {"name": "wave", "length": length, "outcome": "print"}
  assert common.run_case(child_module, case, timeout=60) == case | {"accuracy": length / 1000}
  err = capfd.readouterr().err
  assert "\rtrain wave: 2/3 steps" in err


def test_a_failed_case_names_its_exception_and_keeps_the_case(child_module, capfd):
  case = {"name": "selective", "length": 77, "outcome": "raise"}
  result = common.run_case(child_module, case, timeout=60)
  assert result == case | {"error": "exit 1: ValueError: no such length: 77"}
  assert "Traceback" in capfd.readouterr().err  # the whole traceback was shown as it happened


def test_a_case_past_its_timeout_is_stopped_and_reported(child_module):
  case = {"name": "transformer", "length": 5, "outcome": "hang"}
  result = common.run_case(child_module, case, timeout=3)
  assert result == case | {"error": "timeout after 3 s"}
