"""Each wave head's three constants as the optimizer sees them: where they start (`initial_constants`) and
the raw values that keep them physical under any update (`physical_constants`). Pure and traceable."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def inverse_softplus(y: jax.Array) -> jax.Array:
  return y + jnp.log(-jnp.expm1(-y))


SPEED_INITS = ("spread", "tied")


def initial_constants(
  num_heads: int, max_len: int, rng: jax.Array, speed_init: str = "spread"
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Heads spread across scales (docs/design.md, section 1); traceable, so models can be built under jit.

  Damping is geometric from 1/max_len (global heads, decay over the whole context) to 1 (local heads);
  phases are stratified over [0, pi) and shuffled. The speeds follow `speed_init`:
    "spread": stratified over (0, pi] and shuffled, so that speed and decay length are not tied together;
    "tied": equal to the damping, so each head turns one radian in its decay length and the global heads
      start close to integrators of the whole context. A source far back then reaches the query with the
      sign it was written with, whatever the distance, which is what recall across the context needs: a
      selective model learns induction heads at 128 and 256 from this start and not from "spread"
      (docs/results/recall.md).

  Returns:
    speed: [H] float32 physical values.
    damping: [H] float32 physical values.
    phase: [H] float32 physical values.
  """
  if speed_init not in SPEED_INITS:
    raise ValueError(f"speed_init must be one of {SPEED_INITS}; got {speed_init!r}")
  if num_heads > 1:
    damping = jnp.geomspace(1.0 / max_len, 1.0, num_heads)
  else:
    damping = jnp.full((1,), 1.0 / math.sqrt(max_len))
  speed_rng, phase_rng, speed_order, phase_order = jax.random.split(rng, 4)

  def stratified(key, order_key):  # one draw in each of H equal strata of (0, 1), shuffled
    strata = (jnp.arange(num_heads) + jax.random.uniform(key, (num_heads,))) / num_heads
    return jax.random.permutation(order_key, strata)

  speed = damping if speed_init == "tied" else jnp.pi * jnp.maximum(stratified(speed_rng, speed_order), 1e-3)
  phase = jnp.pi * stratified(phase_rng, phase_order)
  return speed, damping.astype(jnp.float32), phase


def physical_constants(
  speed_raw: jax.Array, damping_log: jax.Array, phase: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The trained raw values of a head, each [H], as (speed, damping, phase): speed = softplus(raw) and
  damping = exp(raw) keep both positive whatever the optimizer does; the phase is trained as it is."""
  return jax.nn.softplus(speed_raw), jnp.exp(damping_log), phase
