"""Test setup: 8 host CPU devices, set before JAX starts (docs/design.md, section 6)."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = " ".join(
  [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One compilation cache per session, shared by the xdist workers (started after this, with this environment)
# and by the processes the tests start: the tiny run that train.py compiled once is loaded by the next
# train.py, evaluate, sample or wheel command instead of compiled again. Every compile is cached.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="wavefield-jax-compiled-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

# hypothesis is imported here, at a shallow stack: imported lazily by its pytest plugin during the terminal
# summary, its assertion-rewritten modules hit CPython 3.11.7's "AST constructor recursion depth mismatch".
import zlib  # noqa: E402

import hypothesis  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# JIT compilation makes the first example of a property slow; time limits per example would only flake.
hypothesis.settings.register_profile("wavefield", deadline=None, print_blob=True)
hypothesis.settings.load_profile("wavefield")


# One seed per session, printed in the header: TEST_SEED=N replays every test's random inputs.
# Set in the environment here, so that pytest-xdist's workers, started after this, share the seed.
SESSION_SEED = int(os.environ.setdefault("TEST_SEED", str(np.random.SeedSequence().entropy % 2**32)))


def pytest_report_header(config) -> str:
  return f"TEST_SEED={SESSION_SEED} (fresh random inputs; set TEST_SEED to replay them)"


@pytest.fixture
def rng(request) -> np.random.Generator:
  """Fresh random inputs for every run, different for every test and replayed by the session seed."""
  request.node.user_properties.append(("seed", SESSION_SEED))
  print(f"TEST_SEED={SESSION_SEED}")  # shown beside a failure
  return np.random.default_rng([SESSION_SEED, zlib.crc32(request.node.nodeid.encode())])
