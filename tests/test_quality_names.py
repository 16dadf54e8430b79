"""The quality benchmark's model names: each one builds, through train.py's own flags, the config it names."""

import pytest

from benchmarks import quality
from wavefield_jax.config import validate_config


@pytest.mark.parametrize(
  "size, model, mixers, expected",
  [
    ("small", "wave_h16_wlr3e-2", ("wave", "wave"), {"model.num_heads": 16, "train.wave_learning_rate": 0.03}),
    ("small", "hybrid_local64_ml4096", ("wave", "local"), {"model.window": 64, "model.max_len": 4096}),
    ("default", "hybrid", ("wave", "wave", "attention", "wave"), {"model.num_heads": 4}),
  ],
)
def test_a_name_builds_its_mixers_and_overrides(size, model, mixers, expected):
  config = quality.model_config_of(size, model)
  validate_config(config)
  assert tuple(config.model.mixers) == mixers
  for key, value in expected.items():
    section, name = key.split(".")
    assert config[section][name] == value


@pytest.mark.parametrize(
  "model, message",
  [
    ("wave_x3", "unknown override _x"),
    ("wave_h1.5", "_h takes int"),
    ("wave_wlr3e", "_wlr takes float"),
    ("hybrid_local", "unknown model"),
    ("mamba", "unknown model"),
  ],
)
def test_a_bad_name_is_refused_before_training(model, message):
  with pytest.raises(ValueError, match=message):
    quality.config_flags("small", model)
