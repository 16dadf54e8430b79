"""Fuzzing the public physics functions and config validation with hypothesis: a correct finite result, or a
ValueError / TypeError that names the argument; never a NaN from finite valid input."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import conv_f64, kernel_f64, relative_error

import wavefield_jax as wf
from wavefield_jax.config import base_config, model_config, validate_config, validate_model_config

# Trains models, starts processes or compiles many shapes: left out of `make test-fast`.
pytestmark = pytest.mark.slow

FUZZ = settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])

speeds = st.one_of(
  st.floats(1e-7, 1e-3), st.floats(math.pi - 1e-3, math.pi + 1e-3), st.floats(1e-3, 2 * math.pi), st.just(1e-30)
)
dampings = st.one_of(st.floats(1e-9, 1e-4), st.floats(1e-4, 5.0), st.floats(5.0, 1e6))
phases = st.floats(-20.0, 20.0)
dtypes = st.sampled_from([np.float32, np.float16, "bfloat16"])


@st.composite
def constants(draw, heads: int | None = None):
  heads = heads or draw(st.integers(1, 4))
  return tuple(np.asarray(draw(st.lists(s, min_size=heads, max_size=heads))) for s in (speeds, dampings, phases))


@FUZZ
@given(constants(), st.one_of(st.integers(1, 600), st.sampled_from([4097, 65536])))
def test_kernel_is_finite_bounded_and_right(values, length):
  speed, damping, phase = values
  kernel = np.asarray(wf.wave_kernel(speed, damping, phase, length))
  assert kernel.shape == (speed.size, length) and np.isfinite(kernel).all()
  norm = -np.expm1(-np.asarray(damping, np.float32).astype(np.float64))
  assert (np.abs(kernel) <= norm[:, None] * (1 + 1e-5) + 1e-30).all()
  want = kernel_f64(*(np.asarray(a, np.float32) for a in values), length)
  assert relative_error(kernel, want) < 1e-3 or np.linalg.norm(want) < 1e-30


@st.composite
def problems(draw):
  B, L, H, K = draw(st.integers(1, 2)), draw(st.integers(1, 200)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
  dtype = draw(dtypes)
  u = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal((B, L, H, K))
  scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
  return (u * scale).astype(np.dtype(dtype) if dtype != "bfloat16" else np.float32), dtype, draw(constants(H))


TOLERANCE = {np.float32: 1e-3, np.float16: 2e-2, "bfloat16": 5e-2}


@settings(FUZZ, max_examples=12)  # each example compiles every path at a new shape
@given(problems(), st.integers(1, 250))
def test_every_path_is_finite_and_equals_the_field(problem, chunk_size):
  u, dtype, (speed, damping, phase) = problem
  if dtype == "bfloat16":
    u = jnp.asarray(u, jnp.bfloat16)
  want = conv_f64(np.asarray(u, np.float64), *(np.asarray(a, np.float32) for a in (speed, damping, phase)))
  outputs = {
    "wave_conv fft": wf.wave_conv(u, speed, damping, phase, method="fft"),
    "wave_scan": wf.wave_scan(u, speed, damping, phase),
    "wave_conv_chunked fft": wf.wave_conv_chunked(u, speed, damping, phase, chunk_size, method="fft")[0],
    # the matmul method at any chunk size (wave_conv's matmul method is this with chunks of 32)
    "wave_conv_chunked matmul": wf.wave_conv_chunked(u, speed, damping, phase, chunk_size, method="matmul")[0],
  }
  for name, y in outputs.items():
    assert y.shape == u.shape and y.dtype == u.dtype, name
    y = np.asarray(y, np.float64)
    assert np.isfinite(y).all(), name
    # Below the output dtype's smallest normal number (float16: 6e-5) values may round to zero.
    floor = float(jnp.finfo(dtype).tiny) * math.sqrt(y.size)
    assert np.linalg.norm(y - want) <= TOLERANCE[dtype] * np.linalg.norm(want) + floor, name


bad_values = st.sampled_from([0.0, -1e-3, -5.0, float("nan"), float("inf"), -float("inf")])


@FUZZ
@given(constants(), st.sampled_from(["speed", "damping", "phase"]), bad_values, st.data())
def test_invalid_constants_raise_a_value_error_naming_them(values, name, bad, data):
  if name == "phase" and math.isfinite(bad):
    bad = float("nan")  # any finite phase is valid
  values = dict(zip(("speed", "damping", "phase"), (v.copy() for v in values), strict=True))
  values[name][data.draw(st.integers(0, values[name].size - 1))] = bad
  u = np.ones((1, 5, values["speed"].size, 2), np.float32)
  for call in (
    lambda: wf.wave_kernel(values["speed"], values["damping"], values["phase"], 8),
    lambda: wf.wave_conv(u, values["speed"], values["damping"], values["phase"]),
    lambda: wf.wave_scan(u, values["speed"], values["damping"], values["phase"]),
  ):
    with pytest.raises(ValueError, match=name):
      call()


@FUZZ
@given(
  st.sampled_from([np.int32, np.bool_, np.complex64]),
  st.integers(0, 5),
  st.integers(-3, 2),
)
def test_wrong_dtypes_ranks_and_lengths_name_the_argument(dtype, rank, length):
  speed = damping = phase = np.full(2, 0.5, np.float32)
  if rank != 4:
    with pytest.raises(ValueError, match="u must have shape"):
      wf.wave_conv(np.ones((2,) * rank, np.float32), speed, damping, phase)
  with pytest.raises(TypeError, match="u must be a floating point array"):
    wf.wave_conv(np.ones((1, 3, 2, 1), dtype), speed, damping, phase)
  if length < 1:
    with pytest.raises(ValueError, match="length must be a positive integer"):
      wf.wave_kernel(speed, damping, phase, length)
  with pytest.raises(ValueError, match="same number of heads"):
    wf.wave_kernel(speed, damping, phase[:1], 4)


anything = st.one_of(
  st.integers(-3, 600),
  st.booleans(),
  st.floats(allow_nan=True),
  st.text(max_size=6),
  st.none(),
  st.lists(st.sampled_from(["wave", "attention", "mamba"]), max_size=5).map(tuple),
)
MODEL_KEYS = ("vocab_size", "dim", "num_layers", "num_heads", "mixers", "mlp_dim", "conv_width", "max_len", "dtype")


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(MODEL_KEYS), anything, min_size=1, max_size=3))
def test_model_configs_are_valid_or_name_a_changed_key(overrides):
  config = model_config()
  try:  # ConfigDict itself refuses a value of another type, naming the field; validation does the rest
    for key, value in overrides.items():
      config[key] = value
    validate_model_config(config)
  except (ValueError, TypeError) as error:
    assert any(f"model.{key}" in str(error) or f"'{key}'" in str(error) for key in overrides), str(error)
    return
  # Accepted: every invariant a model relies on holds.
  for key in ("vocab_size", "dim", "num_layers", "num_heads", "mlp_dim", "conv_width", "max_len"):
    assert isinstance(config[key], int) and not isinstance(config[key], bool) and config[key] > 0
  assert config.dim % config.num_heads == 0 and len(tuple(config.mixers)) == config.num_layers
  assert set(config.mixers) <= {"wave", "attention"} and config.dtype in ("float32", "bfloat16")


TRAIN_KEYS = ("steps", "batch_size", "learning_rate", "warmup_steps", "weight_decay", "grad_clip", "on_nonfinite")


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(TRAIN_KEYS), anything, min_size=1, max_size=3))
def test_run_configs_are_valid_or_name_a_changed_key(overrides):
  config = base_config()
  try:
    for key, value in overrides.items():
      config.train[key] = value
    validate_config(config)
  except (ValueError, TypeError) as error:
    assert any(f"train.{key}" in str(error) or f"'{key}'" in str(error) for key in overrides), str(error)
    return
  train = config.train
  for key in ("steps", "batch_size"):
    assert isinstance(train[key], int) and not isinstance(train[key], bool) and train[key] > 0
  assert isinstance(train.warmup_steps, int) and train.warmup_steps >= 0
  for key in ("learning_rate", "grad_clip"):
    assert isinstance(train[key], (int, float)) and math.isfinite(train[key]) and train[key] > 0
  assert math.isfinite(train.weight_decay) and train.weight_decay >= 0 and train.on_nonfinite in ("stop", "skip")
