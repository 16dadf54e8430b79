"""Shared benchmark plumbing: one case per fresh subprocess, medians, and JSON / Markdown / PNG output."""

from __future__ import annotations

import codecs
import collections
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from wavefield_jax.tables import markdown_table  # noqa: F401 (every benchmark takes its tables from here)

RESULTS = Path(os.environ.get("WAVEFIELD_RESULTS", Path(__file__).parent / "results"))


def machine() -> dict:
  """What the numbers were measured on."""
  import jax

  device = jax.devices()[0]
  return {
    "platform": device.platform,
    "device": getattr(device, "device_kind", str(device)),
    "cpus": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "date": time.strftime("%Y-%m-%d"),
  }


def peak_rss_mib() -> float:
  """Peak memory in MiB: of the accelerator where there is one, else the process's peak RSS (Linux: KiB)."""
  import jax

  stats = jax.devices()[0].memory_stats() if jax.devices()[0].platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 2) -> dict:
  """Median, min and all wall times in seconds of `fn()` (which must block until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


STDERR_TAIL_CHUNKS = 64  # of up to 4 KiB each: where a failed case's exception is looked for


def run_case(module: str, case: dict, timeout: float = 900) -> dict:
  """Runs `python -m module --case JSON` in a fresh process and returns the JSON it prints last.

  The child's stderr (its progress bars and warnings) reaches this process's stderr as it is written, so a
  case that trains for an hour shows how far it is. A case that fails (out of memory, timeout) comes back as
  {"error": ...}, naming the exception its stderr ended with, instead of raising.
  """
  command = [sys.executable, "-m", module, "--case", json.dumps(case)]
  with tempfile.TemporaryFile() as stdout:
    child = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    tail = collections.deque(maxlen=STDERR_TAIL_CHUNKS)
    relay = threading.Thread(target=_relay, args=(child.stderr, tail), daemon=True)
    relay.start()
    try:
      child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      child.kill()
      child.wait()
      return case | {"error": f"timeout after {timeout:.0f} s"}
    finally:
      relay.join()
    stdout.seek(0)
    printed = stdout.read().decode(errors="replace")
  if child.returncode != 0:
    lines = ("".join(tail) or printed).strip().splitlines()
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]  # the exception, not a note
    reason = (raised or lines or [""])[-1]
    return case | {"error": f"exit {child.returncode}: {reason[:300]}"}
  return json.loads(printed.strip().splitlines()[-1])


def _relay(stream, tail: collections.deque) -> None:
  """Copies a child's stderr to ours chunk by chunk (a progress bar redraws without a newline), keeping the
  last chunks in `tail`."""
  decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
  while chunk := stream.read1(4096):
    text = decoder.decode(chunk)
    sys.stderr.write(text)
    sys.stderr.flush()
    tail.append(text)
  stream.close()


def case_main(measure: Callable[[dict], dict]) -> bool:
  """In a child process (`--case` given): measures one case, prints its JSON, returns True."""
  if "--case" not in sys.argv:
    return False
  case = json.loads(sys.argv[sys.argv.index("--case") + 1])
  print(json.dumps(case | measure(case)))
  return True


def write_results(name: str, payload: dict, table: str) -> None:
  """benchmarks/results/{name}.json and {name}.md (the PNG is written by the benchmark)."""
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
  (RESULTS / f"{name}.md").write_text(table + "\n")
  print(table)
