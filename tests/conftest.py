"""Test setup: 8 host CPU devices, set before JAX starts (docs/design.md, section 6)."""

import os

os.environ["XLA_FLAGS"] = " ".join(
  [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# hypothesis is imported here, at a shallow stack: imported lazily by its pytest plugin during the terminal
# summary, its assertion-rewritten modules hit CPython 3.11.7's "AST constructor recursion depth mismatch".
import hypothesis  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# JIT compilation makes the first example of a property slow; time limits per example would only flake.
hypothesis.settings.register_profile("wavefield", deadline=None, print_blob=True)
hypothesis.settings.load_profile("wavefield")


@pytest.fixture
def rng(request) -> np.random.Generator:
  """Fresh random inputs for every run; the seed is printed when a test fails so it can be replayed."""
  seed = int(os.environ.get("TEST_SEED", np.random.SeedSequence().entropy % 2**32))
  request.node.user_properties.append(("seed", seed))
  print(f"TEST_SEED={seed}")
  return np.random.default_rng(seed)
