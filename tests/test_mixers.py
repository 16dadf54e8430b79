"""The mixer registry: a toy mixer added from outside the package, as docs/development.md's recipe says, runs
in the model through every path (forward, prefill, decode), causally."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wavefield_jax import mixers
from wavefield_jax.config import model_config, validate_model_config
from wavefield_jax.generate import generate
from wavefield_jax.model import WaveFieldLM


class CumulativeMean(nnx.Module):
  """y_t = W (x_1 + ... + x_t) / t: a mixer whose decode state is a running sum and a count."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.dim = dim
    self.proj = nnx.Linear(dim, dim, rngs=rngs)

  def init_cache(self, batch_size: int, max_len: int | None = None) -> dict:
    del max_len
    return {"sum": jnp.zeros((batch_size, self.dim)), "count": jnp.zeros((), jnp.int32)}

  def prefill(self, x: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
    sums = cache["sum"][:, None] + jnp.cumsum(x, axis=1)  # [B, L, D]
    counts = cache["count"] + jnp.arange(1, x.shape[1] + 1)  # [L]
    y = self.proj(sums / counts[None, :, None])
    return y, {"sum": sums[:, -1], "count": cache["count"] + x.shape[1]}

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.prefill(x, self.init_cache(x.shape[0]))[0]

  def step(self, x_t: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
    y, cache = self.prefill(x_t[:, None], cache)
    return y[:, 0], cache


@pytest.fixture
def toy_registered():
  mixers.register(
    "cumulative_mean",
    CumulativeMean,
    lambda config, dtype, mesh, rngs: CumulativeMean(config.dim, rngs=rngs),
    wave_family=False,
  )
  yield
  del mixers.REGISTRY["cumulative_mean"]


@pytest.mark.slow
def test_a_mixer_registered_from_outside_runs_in_the_model(rng, toy_registered):
  config = model_config(
    vocab_size=40, dim=16, num_layers=2, num_heads=2, mlp_dim=32, mixers=("cumulative_mean", "wave")
  )
  validate_model_config(config)
  model = WaveFieldLM(config, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
  prompt = jnp.asarray(rng.integers(0, 40, (2, 6)))
  tokens = generate(model, prompt, 5, temperature=0.0, rng=jax.random.key(0))  # prefill, then decode steps
  logits = model(tokens[:, :-1])
  np.testing.assert_array_equal(tokens[:, 6:], np.argmax(logits[:, 5:], axis=-1))
  # Causal through the gradient: no output position depends on a later input.
  x = model.embed(tokens[:, :-1])
  jacobian = jax.jacrev(lambda x: model.from_embeddings(x)[0, 4].sum())(x)  # d logits[0, 4] / d x
  assert np.all(np.asarray(jacobian[0, 5:]) == 0) and np.any(np.asarray(jacobian[0, :5]) != 0)


def test_an_unknown_mixer_is_named_with_the_kinds_there_are():
  with pytest.raises(ValueError, match=r"unknown mixer 'wavy'; choose from \('wave', 'selective'"):
    validate_model_config(model_config(num_layers=1, mixers=("wavy",)))
  with pytest.raises(ValueError, match="unknown mixer 'wavy'"):
    mixers.kind("wavy")
