"""The Linen modules: every trained value under `params`, the NNX mixer's outputs, constants that train."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from wavefield_jax import linen, mixers

CONSTANTS = ("speed_raw", "damping_log", "phase")


@pytest.mark.parametrize("kind", ["wave", "selective", "retention"])
def test_linen_mixer_keeps_every_value_in_params_and_matches_the_nnx_mixer(kind, rng):
  x = jnp.asarray(rng.standard_normal((2, 40, 16)), jnp.float32)
  module = linen.WaveFieldMixer(dim=16, num_heads=2, max_len=64, kind=kind)
  variables = module.init(jax.random.key(int(rng.integers(1 << 30))), x)
  assert set(variables) == {"params"}  # no WaveParam collection to lose
  assert all(variables["params"]["mixer"]["field"][name].shape == (2,) for name in CONSTANTS)
  # The same values loaded into the NNX mixer give the same outputs.
  nnx_mixer = mixers.REGISTRY[kind].module(16, 2, max_len=64, rngs=nnx.Rngs(1))
  state = nnx.state(nnx_mixer)
  nnx.replace_by_pure_dict(state, variables["params"]["mixer"])
  nnx.update(nnx_mixer, state)
  np.testing.assert_allclose(module.apply(variables, x), nnx_mixer(x), atol=1e-6)
  # Applying twice gives the same output: nothing is re-created at random.
  np.testing.assert_array_equal(module.apply(variables, x), module.apply(variables, x))


@pytest.mark.slow
def test_a_linen_training_loop_moves_the_constants_and_lowers_the_loss(rng):
  x = jnp.asarray(rng.standard_normal((4, 48, 16)), jnp.float32)
  module = linen.WaveFieldMixer(dim=16, num_heads=2, max_len=64)
  params = module.init(jax.random.key(0), x)["params"]
  # The target: the same mixer with slower, longer-lived waves.
  target_params = jax.tree.map(lambda a: a, params)
  target_params["mixer"]["field"]["speed_raw"] = params["mixer"]["field"]["speed_raw"] - 1.0
  target_params["mixer"]["field"]["damping_log"] = params["mixer"]["field"]["damping_log"] - 1.0
  target = module.apply({"params": target_params}, x)

  def loss_fn(p):
    return jnp.mean((module.apply({"params": p}, x) - target) ** 2)

  optimizer = optax.adam(3e-2)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = optimizer.update(grads, s)
    return optax.apply_updates(p, updates), s, loss, grads

  first = None
  for _ in range(40):
    new_params, opt_state, loss, grads = step(params, opt_state)
    if first is None:
      first = float(loss)
      assert all(float(jnp.abs(grads["mixer"]["field"][n]).sum()) > 0 for n in CONSTANTS)
    params = new_params
  assert float(loss_fn(params)) < 0.5 * first
  initial = module.init(jax.random.key(0), x)["params"]["mixer"]["field"]
  for name in CONSTANTS:  # every constant took part in the fit
    assert float(jnp.abs(initial[name] - params["mixer"]["field"][name]).max()) > 1e-2, name


def test_linen_mixer_names_a_bad_kind():
  with pytest.raises(ValueError, match="kind must be one of"):
    linen.WaveFieldMixer(dim=16, num_heads=2, max_len=64, kind="conv").init(jax.random.key(0), jnp.ones((1, 4, 16)))


def test_linen_mixer_takes_starting_constants():
  speed, damping, phase = jnp.array([0.5, 1.5]), jnp.array([0.01, 0.2]), jnp.array([0.0, 1.0])
  module = linen.WaveFieldMixer(dim=16, num_heads=2, max_len=64, constants=(speed, damping, phase))
  params = module.init(jax.random.key(0), jnp.ones((1, 4, 16)))["params"]["mixer"]["field"]
  np.testing.assert_allclose(jax.nn.softplus(params["speed_raw"]), speed, rtol=1e-5)
  np.testing.assert_allclose(jnp.exp(params["damping_log"]), damping, rtol=1e-5)
  np.testing.assert_allclose(params["phase"], phase)


def test_linen_mixer_takes_a_speed_init():
  module = linen.WaveFieldMixer(dim=16, num_heads=4, max_len=64, kind="selective", speed_init="tied")
  params = module.init(jax.random.key(0), jnp.ones((1, 4, 16)))["params"]["mixer"]["field"]
  np.testing.assert_allclose(jax.nn.softplus(params["speed_raw"]), jnp.exp(params["damping_log"]), rtol=1e-5)
