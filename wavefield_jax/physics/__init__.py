"""The damped wave field: kernels, the O(L^2) reference field and the fast causal paths.

Every head is one normal mode of the damped wave equation `u_tt + 2 gamma u_t = c^2 u_xx`: a damped
oscillator whose causal impulse response, sampled once per token, is

  k_h(t) = (1 - exp(-gamma_h)) * exp(-gamma_h t) * cos(c_h t + phi_h),  t = 0, 1, 2, ...

With `lambda_h = exp(-gamma_h + i c_h)` this is `k_h(t) = norm_h * Re(exp(i phi_h) lambda_h**t)`, so the
same mixing runs three ways that agree to float32 rounding:

- `wave_conv`: causal convolution by FFT, zero padded to at least 2L - 1 (training, prefill);
- `wave_scan`: the recurrence `s_t = lambda s_{t-1} + u_t` (decoding, one `wave_step` per token);
- `wave_conv(..., chunk_size=T)`: FFT inside chunks, the complex state carried across them (very
  long or sequence-sharded inputs).

Everything here is a pure function of arrays: jit-able and differentiable in every argument. Called
outside `jit`, each public function runs as one compiled program per shape, its constants checked first.
Shapes: B batch, L length, H heads, K channels per head, F frequency bins, C chunks, T chunk length.

Modules: `wave` (the time-invariant wave above), `selective` (its clock set by the data), `retention` (its
field reading the sources whose keys match), and the private `_calls` (how a public function is called and
checked) and `_common` (the oscillator, the readout and the chunked form's pieces the three share).
"""

from wavefield_jax.physics._calls import check_constants, traced_checks
from wavefield_jax.physics._common import (
  ChunkMasks,
  chunk_masks,
  document_index,
  document_starts,
  from_chunks,
  state_decay,
  to_chunks,
)
from wavefield_jax.physics.retention import RETENTION_CHUNK, retention_chunked, retention_step
from wavefield_jax.physics.selective import (
  SELECTIVE_CHUNK,
  segment_sum,
  selective_conv_chunked,
  selective_decay,
  selective_scan,
  selective_step,
)
from wavefield_jax.physics.wave import (
  MATMUL_CHUNK,
  METHODS,
  check_method,
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
  "ChunkMasks",
  "MATMUL_CHUNK",
  "METHODS",
  "RETENTION_CHUNK",
  "SELECTIVE_CHUNK",
  "check_constants",
  "check_method",
  "chunk_masks",
  "document_index",
  "document_starts",
  "fft_length",
  "from_chunks",
  "retention_chunked",
  "retention_step",
  "segment_sum",
  "selective_conv_chunked",
  "selective_decay",
  "selective_scan",
  "selective_step",
  "state_decay",
  "state_response",
  "to_chunks",
  "traced_checks",
  "wave_conv",
  "wave_conv_chunked",
  "wave_field",
  "wave_kernel",
  "wave_scan",
  "wave_state",
  "wave_step",
]
