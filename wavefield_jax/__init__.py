"""wavefield-jax: Wave Field language models in JAX and Flax NNX."""

import importlib.metadata

from wavefield_jax.layers import RetentionMixer, SelectiveWaveMixer, WaveFieldMixer, WaveParam
from wavefield_jax.losses import tiled_cross_entropy
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
  "WaveFieldMixer",
  "WaveParam",
  "fft_length",
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
