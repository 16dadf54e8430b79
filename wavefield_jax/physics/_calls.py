"""How the public physics functions are called: each runs as one compiled program per shape when called
outside jit, its arguments checked first (concrete values here, traced ones inside the program with
`traced_checks`); the shape and dtype checks every function shares."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


_TRACED_CHECKS = contextvars.ContextVar("wavefield_traced_checks", default=False)


@contextlib.contextmanager
def traced_checks():
  """Checks the constants' values under `jit` as well, where they are traced and cannot be read.

  Inside this context, functions traced check speed and damping (finite and > 0) with
  `jax.experimental.checkify`; wrap what you jit in `checkify.checkify` to get the error back.
  Outside it (the default), traced constants go unchecked and cost nothing.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax.experimental import checkify
    >>> from wavefield_jax.physics import wave_conv
    >>> f = lambda d: wave_conv(jnp.ones((1, 8, 1, 1)), jnp.array([1.0]), d, jnp.array([0.0]))
    >>> with traced_checks():
    ...   error, _ = jax.jit(checkify.checkify(f))(jnp.array([-0.5]))
    >>> error.get()
    'damping must be finite and > 0 for every head; got -0.5 (`check` failed)'
  """
  token = _TRACED_CHECKS.set(True)
  try:
    yield
  finally:
    _TRACED_CHECKS.reset(token)


def real_dtype(*arrays) -> jnp.dtype:
  """float64 where any input is float64 (with jax_enable_x64), else float32: the FFT's precision."""
  wide = jax.config.jax_enable_x64 and any(getattr(a, "dtype", None) == jnp.float64 for a in arrays)
  return jnp.dtype(jnp.float64 if wide else jnp.float32)


def complex_dtype(real: jnp.dtype) -> jnp.dtype:
  return jnp.dtype(jnp.complex128 if real == jnp.float64 else jnp.complex64)


def check_constants(speed, damping, phase, *others) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Validates the three [H] constants where the user's values enter; returns them in the compute
  dtype (float32, or float64 when any argument, `others` included, is float64)."""
  arrays = {"speed": speed, "damping": damping, "phase": phase}
  for name, value in arrays.items():
    if jnp.ndim(value) != 1:
      raise ValueError(f"{name} must be a 1-D array of per-head values [H]; got shape {jnp.shape(value)}")
  sizes = {name: jnp.shape(value)[0] for name, value in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"speed, damping and phase must have the same number of heads; got {sizes}")
  if sizes["speed"] == 0:
    raise ValueError("speed, damping and phase must hold at least one head; got H=0")
  check_values(arrays)
  dtype = real_dtype(speed, damping, phase, *others)
  return tuple(jnp.asarray(a, dtype) for a in (speed, damping, phase))


def check_values(arguments: dict) -> None:
  """The value checks of whichever of speed, damping, phase and delta `arguments` holds: those given
  concretely are read; traced ones are checked inside `traced_checks` only."""
  for name in ("speed", "damping"):
    value = arguments.get(name)
    if value is None:
      continue
    if _is_concrete(value):
      host = np.asarray(value, dtype=np.float64)
      bad = ~(host > 0) | ~np.isfinite(host)
      if bad.any():
        head = int(np.argmax(bad))
        raise ValueError(f"{name} must be finite and > 0 for every head; got {host.flat[head]} at head {head}")
    elif _TRACED_CHECKS.get():
      bad = ~(value > 0) | ~jnp.isfinite(value)
      checkify.check(~bad.any(), f"{name} must be finite and > 0 for every head; got {{}}", value[jnp.argmax(bad)])
  phase = arguments.get("phase")
  if phase is not None and _is_concrete(phase) and not np.isfinite(np.asarray(phase, dtype=np.float64)).all():
    raise ValueError("phase must be finite for every head")
  delta = arguments.get("delta")
  if delta is not None and _is_concrete(delta):
    host = np.asarray(delta, dtype=np.float64)
    bad = ~(host >= 0) | ~np.isfinite(host)
    if bad.any():
      index = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(f"delta must be finite and >= 0 everywhere; got {host[index]} at [b, t, h] = {index}")


def _is_static(value) -> bool:
  return value is None or isinstance(value, (str, int, np.integer))


def _is_array_like(value) -> bool:
  return isinstance(value, (jax.Array, np.ndarray, np.generic, int, float, complex))


def one_program(*static_argnames: str):
  """Runs a public function as one compiled program per shape and static arguments.

  Called outside `jit` (as in a notebook), JAX would otherwise dispatch and compile every primitive of
  the chunked forms on its own: seconds per call at a new shape. The concrete values are checked
  first, as they cannot be read inside the program; the `traced_checks` setting is part of the key.
  """

  def decorate(fn):
    signature = inspect.signature(fn)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def compiled(static: tuple, checks: bool, dynamic: dict):
      token = _TRACED_CHECKS.set(checks)
      try:
        return fn(**dict(static), **dynamic)
      finally:
        _TRACED_CHECKS.reset(token)

    @functools.wraps(fn)
    def run(*args, **kwargs):
      arguments = signature.bind(*args, **kwargs).arguments
      static = tuple((name, arguments.pop(name)) for name in static_argnames if name in arguments)
      if not all(_is_static(value) for _, value in static) or not all(map(_is_array_like, jax.tree.leaves(arguments))):
        return fn(*args, **kwargs)  # not a program's input: the function's own checks name the problem
      concrete = {name: value for name, value in arguments.items() if _is_concrete(value)}
      check_values(concrete)
      # Traced constants are checked inside the program, and only under `traced_checks`: checked here,
      # a concrete call in that context would stage a check that no `checkify` takes back.
      traced = any(not _is_concrete(arguments.get(name)) for name in ("speed", "damping"))
      return compiled(static, traced and _TRACED_CHECKS.get(), arguments)

    return run

  return decorate


def check_length(length: int) -> int:
  if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length < 1:
    raise ValueError(f"length must be a positive integer; got {length!r}")
  return int(length)


def check_sources(u, num_heads: int, name: str = "u") -> None:
  if jnp.ndim(u) != 4:
    raise ValueError(f"{name} must have shape [B, L, H, K]; got rank {jnp.ndim(u)} shape {jnp.shape(u)}")
  if jnp.shape(u)[2] != num_heads:
    raise ValueError(f"{name} has {jnp.shape(u)[2]} heads on axis 2 but the constants have {num_heads}")
  if jnp.shape(u)[1] == 0:
    raise ValueError(f"{name} must hold at least one position; got shape {jnp.shape(u)}")
  if not jnp.issubdtype(jnp.result_type(u), jnp.floating):
    raise TypeError(f"{name} must be a floating point array; got dtype {jnp.result_type(u)}")


def check_state(state, u, real: jnp.dtype) -> jax.Array:
  """The [B, H, K] complex state carried into u [B, L, H, K] (zeros if None)."""
  batch, _, heads, channels = u.shape
  if state is None:
    return jnp.zeros((batch, heads, channels), complex_dtype(real))
  if jnp.shape(state) != (batch, heads, channels):
    raise ValueError(f"initial_state must have shape [B, H, K] = {(batch, heads, channels)}; got {jnp.shape(state)}")
  return jnp.asarray(state).astype(complex_dtype(real))


def check_segments(segment_ids, u) -> jax.Array | None:
  """Segment ids [B, L] of integers for sources u [B, L, ...] (None: one document per row)."""
  if segment_ids is None:
    return None
  if jnp.shape(segment_ids) != jnp.shape(u)[:2]:
    raise ValueError(f"segment_ids must have shape [B, L] = {jnp.shape(u)[:2]}; got {jnp.shape(segment_ids)}")
  if not jnp.issubdtype(jnp.result_type(segment_ids), jnp.integer):
    raise TypeError(f"segment_ids must be integers; got dtype {jnp.result_type(segment_ids)}")
  return jnp.asarray(segment_ids)
