"""The docstring examples of the public API run as written (doctest), and every module with one has one."""

import doctest
import importlib

import pytest

# The modules whose docstrings carry examples; each must have at least one.
MODULES = [
  "wavefield_jax",
  "wavefield_jax.physics.wave",
  "wavefield_jax.physics._calls",
  "wavefield_jax.layers",
  "wavefield_jax.losses",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
  result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0, f"{name} has no docstring examples"
  assert result.failed == 0
