"""wavefield-jax: Wave Field language models in JAX and Flax NNX."""

from wavefield_jax.layers import WaveFieldMixer, WaveParam
from wavefield_jax.physics import (
  fft_length,
  state_response,
  wave_conv,
  wave_conv_chunked,
  wave_field,
  wave_kernel,
  wave_scan,
  wave_state,
  wave_step,
)

__all__ = [
  "WaveFieldMixer",
  "WaveParam",
  "fft_length",
  "state_response",
  "wave_conv",
  "wave_conv_chunked",
  "wave_field",
  "wave_kernel",
  "wave_scan",
  "wave_state",
  "wave_step",
]
