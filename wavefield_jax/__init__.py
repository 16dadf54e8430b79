"""wavefield-jax: Wave Field language models in JAX and Flax NNX.

The public API: the physics functions (pure, differentiable in the three constants per head), the NNX
mixers and their constants' parameter type, the language model with its config, generation, and
loading a trained run.

Example:
  >>> import jax.numpy as jnp
  >>> import wavefield_jax as wf
  >>> k = wf.wave_kernel(jnp.array([0.5]), jnp.array([0.1]), jnp.array([0.0]), 4)  # [H, length]
  >>> k.shape
  (1, 4)
"""

import importlib.metadata

from wavefield_jax.checkpointing import load_trained
from wavefield_jax.config import model_config
from wavefield_jax.generate import generate
from wavefield_jax.layers import RetentionMixer, SelectiveWaveMixer, WaveFieldMixer, WaveParam
from wavefield_jax.losses import tiled_cross_entropy
from wavefield_jax.model import WaveFieldLM, count_params
from wavefield_jax.physics import (
  fft_length,
  retention_chunked,
  retention_step,
  selective_conv_chunked,
  selective_scan,
  selective_step,
  state_response,
  wave_conv,
  wave_conv_chunked,
  wave_field,
  wave_kernel,
  wave_scan,
  wave_state,
  wave_step,
)

try:
  __version__ = importlib.metadata.version("wavefield-jax")
except importlib.metadata.PackageNotFoundError:  # imported from a checkout that was never installed
  __version__ = "0+unknown"

__all__ = [
  "RetentionMixer",
  "SelectiveWaveMixer",
  "WaveFieldLM",
  "WaveFieldMixer",
  "WaveParam",
  "count_params",
  "fft_length",
  "generate",
  "load_trained",
  "model_config",
  "retention_chunked",
  "retention_step",
  "selective_conv_chunked",
  "selective_scan",
  "selective_step",
  "state_response",
  "tiled_cross_entropy",
  "wave_conv",
  "wave_conv_chunked",
  "wave_field",
  "wave_kernel",
  "wave_scan",
  "wave_state",
  "wave_step",
]
