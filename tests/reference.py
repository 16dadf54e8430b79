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


def selective_field_f64(delta, speed, damping, phase) -> np.ndarray:
  """[B, H, L, L]: W[b, h, t, s] = (1 - exp(-g d_s)) exp(-g (T_t - T_s)) cos(c (T_t - T_s) + phi) for s <= t,
  T the float64 cumulative clock, by broadcasting over all pairs."""
  delta = np.moveaxis(np.asarray(delta, np.float64), 1, -1)  # [B, H, L]
  c, g, p = (np.asarray(a, np.float64)[None, :, None, None] for a in (speed, damping, phase))
  clock = np.cumsum(delta, axis=-1)  # [B, H, L]
  elapsed = clock[..., :, None] - clock[..., None, :]  # [B, H, t, s]
  weight = (1.0 - np.exp(-g * delta[..., None, :])) * np.exp(-g * elapsed) * np.cos(c * elapsed + p)
  return np.where(np.tril(np.ones(elapsed.shape[-2:], bool)), weight, 0.0)


def selective_f64(u, delta, speed, damping, phase) -> np.ndarray:
  """y[b, t, h, k] = sum_s W[b, h, t, s] u[b, s, h, k], the O(L^2) sum of the selective wave."""
  return np.einsum("bhts,bshk->bthk", selective_field_f64(delta, speed, damping, phase), np.asarray(u, np.float64))


def selective_recurrence_f64(u, delta, speed, damping, phase) -> tuple[np.ndarray, np.ndarray]:
  """The selective recurrence in complex128, one position at a time: (y [B, L, H, K], final state [B, H, K])."""
  u, delta = np.asarray(u, np.float64), np.asarray(delta, np.float64)
  c, g, p = (np.asarray(a, np.float64)[None, :, None] for a in (speed, damping, phase))
  state = np.zeros((u.shape[0], u.shape[2], u.shape[3]), np.complex128)
  y = np.empty_like(u)
  for t in range(u.shape[1]):
    step = delta[:, t, :, None]  # [B, H, 1]
    state = np.exp((-g + 1j * c) * step) * state + (1.0 - np.exp(-g * step)) * u[:, t]
    y[:, t] = np.real(np.exp(1j * p) * state)
  return y, state


def retention_f64(q, k, v, speed, damping, phase) -> np.ndarray:
  """y[b, t, h] = sum_{s <= t} k_h(t - s) (q_t . k_s) v_s, the O(L^2) sum with the float64 field."""
  field = field_f64(speed, damping, phase, np.shape(q)[1])  # [H, L, L]
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  return np.einsum("hts,bthk,bshk,bshv->bthv", field, q, k, v)


def retention_recurrence_f64(q, k, v, speed, damping, phase) -> tuple[np.ndarray, np.ndarray]:
  """The retention recurrence in complex128: S = lambda S + k v^T, y = norm Re(e^{i phi} q^T S)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  c, g, p = (np.asarray(a, np.float64)[None, :, None, None] for a in (speed, damping, phase))
  state = np.zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), np.complex128)
  y = np.empty((*q.shape[:3], v.shape[3]))
  for t in range(q.shape[1]):
    state = np.exp(-g + 1j * c) * state + k[:, t, :, :, None] * v[:, t, :, None, :]
    read = np.einsum("bhk,bhkv->bhv", q[:, t], state)
    y[:, t] = (1.0 - np.exp(-g[..., 0])) * np.real(np.exp(1j * p[..., 0]) * read)
  return y, state
