"""Independent float64 NumPy references: the formulas of docs/design.md section 1, written out directly."""

import jax
import jax.numpy as jnp
import numpy as np


def kernel_f64(speed, damping, phase, length: int) -> np.ndarray:
  """[H, L]: (1 - exp(-g)) exp(-g t) cos(c t + phi), all in float64."""
  c, g, p = (np.asarray(a, np.float64)[:, None] for a in (speed, damping, phase))
  t = np.arange(length, dtype=np.float64)[None, :]
  return (1.0 - np.exp(-g)) * np.exp(-g * t) * np.cos(c * t + p)


def field_f64(speed, damping, phase, length: int) -> np.ndarray:
  """[H, L, L] Toeplitz field W[h, t, s] = k[h, t - s] for s <= t, by explicit loops over lags."""
  kernel = kernel_f64(speed, damping, phase, length)
  field = np.zeros((kernel.shape[0], length, length))
  for lag in range(length):
    rows = np.arange(lag, length)
    field[:, rows, rows - lag] = kernel[:, lag : lag + 1]
  return field


def conv_f64(u, speed, damping, phase) -> np.ndarray:
  """y[b, t, h, k] = sum_s W[h, t, s] u[b, s, h, k], the O(L^2) sum."""
  field = field_f64(speed, damping, phase, np.shape(u)[1])
  return np.einsum("hts,bshk->bthk", field, np.asarray(u, np.float64))


def conv_f64_fft(u, speed, damping, phase) -> np.ndarray:
  """The same sum as `conv_f64` by NumPy's float64 FFT of size 2L: for lengths where O(L^2) is too slow."""
  length = np.shape(u)[1]
  kernel = kernel_f64(speed, damping, phase, length)  # [H, L]
  u_hat = np.fft.rfft(np.asarray(u, np.float64), n=2 * length, axis=1)  # [B, F, H, K]
  kernel_hat = np.fft.rfft(kernel.T, n=2 * length, axis=0)  # [F, H]
  return np.fft.irfft(u_hat * kernel_hat[None, :, :, None], n=2 * length, axis=1)[:, :length]


def relative_error(got, want) -> float:
  wide = np.complex128 if np.iscomplexobj(got) or np.iscomplexobj(want) else np.float64
  got, want = np.asarray(got, wide), np.asarray(want, wide)
  return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def random_constants(rng: np.random.Generator, heads: int):
  """Random physical constants across the whole range: damping log-uniform 1e-4..5, speeds 0..pi."""
  speed = rng.uniform(1e-3, np.pi, heads).astype(np.float32)
  damping = np.exp(rng.uniform(np.log(1e-4), np.log(5.0), heads)).astype(np.float32)
  phase = rng.uniform(0, np.pi, heads).astype(np.float32)
  return speed, damping, phase


def random_problem(rng: np.random.Generator, B: int, L: int, H: int, K: int):
  u = rng.standard_normal((B, L, H, K)).astype(np.float32)
  return (u, *random_constants(rng, H))


def future_leak(fn, x: np.ndarray) -> float:
  """Largest |d y[:, t] / d x[:, s]| over s > t, relative to the largest entry of the whole Jacobian.

  Args:
    fn: maps x [B, L, ...] to y [B, L, ...] (the sequence on axis 1 of both).
    x: the point at which to differentiate.
  """
  jacobian = np.abs(np.asarray(jax.jacrev(fn)(jnp.asarray(x))))  # [B, L, ..., B, L, ...]
  out_rank = jacobian.ndim - x.ndim
  keep = (1, out_rank + 1)
  per_positions = jacobian.max(axis=tuple(a for a in range(jacobian.ndim) if a not in keep))  # [L_out, L_in]
  length = x.shape[1]
  future = np.triu(np.ones((length, length), bool), k=1)  # input after output
  return float(per_positions[future].max() / per_positions.max())
