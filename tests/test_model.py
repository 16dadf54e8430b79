"""WaveFieldLM: causality, decoding equals the parallel forward, configs, parameter counts."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from reference import future_leak, relative_error

from wavefield_jax.config import TWO_LAYER_MIXERS, model_config, validate_config
from wavefield_jax.model import WaveFieldLM, count_params

# local: a sliding window of 8 (small_model), so the 40-token tests reach five windows back.
KINDS = {k: TWO_LAYER_MIXERS[k] for k in ("wave", "transformer", "hybrid", "hybrid_local", "selective_retention")}
# The section 7 mixers' model-level cases compile many small einsums: in the full set only.
# One model with both (selective, then retention) carries them here; test_layers holds each one alone.
KIND_CASES = [k for k in KINDS if k != "selective_retention"]
KIND_CASES.append(pytest.param("selective_retention", marks=pytest.mark.slow))


def small_model(mixers, seed=0, **overrides):
  config = model_config(
    vocab_size=61, dim=32, num_layers=len(mixers), num_heads=4, mixers=mixers, mlp_dim=64, max_len=64, window=8
  )
  config.update(overrides)
  return WaveFieldLM(config, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("kind", KIND_CASES)
def test_model_is_causal(rng, kind):
  model = small_model(KINDS[kind], seed=int(rng.integers(1 << 30)))
  x = model.embed(jnp.asarray(rng.integers(0, 61, (1, 16))))
  assert future_leak(model.from_embeddings, np.asarray(x)) < 1e-6


@pytest.mark.parametrize("kind", KIND_CASES)
def test_decoding_equals_parallel_forward(rng, kind):
  model = small_model(KINDS[kind], seed=int(rng.integers(1 << 30)))
  tokens = jnp.asarray(rng.integers(0, 61, (2, 40)))
  want = model(tokens)
  # Token by token from an empty cache.
  cache = model.init_cache(2, 40)
  step = nnx.jit(lambda m, t, c: m.step(t, c))
  stepped = []
  for t in range(40):
    logits, cache = step(model, tokens[:, t], cache)
    stepped.append(logits)
  assert relative_error(jnp.stack(stepped, axis=1), want) < 1e-4
  # A prompt by prefill, the rest by steps.
  cache = model.init_cache(2, 40)
  prompt_logits, cache = model.prefill(tokens[:, :25], cache)
  rest = []
  for t in range(25, 40):
    logits, cache = step(model, tokens[:, t], cache)
    rest.append(logits)
  assert relative_error(jnp.concatenate([prompt_logits, jnp.stack(rest, axis=1)], axis=1), want) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("kind", KIND_CASES)
def test_jitted_loss_is_finite_and_trains_in_float32(rng, kind):
  check_training(rng, kind, "float32")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wave", "hybrid"])  # bfloat16 through the wave and the attention mixer
def test_jitted_loss_is_finite_and_trains_in_bfloat16(rng, kind):
  check_training(rng, kind, "bfloat16")


def check_training(rng, kind, dtype):
  model = small_model(KINDS[kind], seed=int(rng.integers(1 << 30)), dtype=dtype)
  tokens = jnp.asarray(rng.integers(0, 61, (4, 33)))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, tokens):
    def loss_fn(model):
      logits = model(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer, tokens)) for _ in range(15)]
  assert np.all(np.isfinite(losses))
  assert model(tokens).dtype == jnp.float32
  assert losses[-1] < 0.8 * losses[0]  # memorising one batch: the gradients are real


def test_parameter_counts_of_wave_and_transformer_match():
  wave = WaveFieldLM(model_config(mixers=("wave",) * 4), rngs=nnx.Rngs(0))
  transformer = WaveFieldLM(model_config(mixers=("attention",) * 4), rngs=nnx.Rngs(0))
  wave_count, transformer_count = count_params(wave), count_params(transformer)
  assert wave_count["wave_constants"] == 3 * wave.config.num_heads * 4
  assert transformer_count["wave_constants"] == 0
  assert abs(wave_count["total"] / transformer_count["total"] - 1) < 0.02
  manual = sum(p.size for p in jax.tree.leaves(nnx.state(wave, nnx.Param)))
  assert wave_count["total"] == manual == wave_count["wave_constants"] + wave_count["other"]


CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def load_config(name: str, *args: str):
  """configs/<name>.py's get_config(*args), as `--config=configs/<name>.py:<arg>` would load it."""
  spec = importlib.util.spec_from_file_location(f"configs_{name}", CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.py")), ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path):
  validate_config(load_config(path.stem))


CONFIG_KINDS = ("wave", "transformer", "hybrid", "hybrid_local")


@pytest.mark.parametrize(
  "entries",
  [
    ("default", "transformer", "hybrid", "hybrid_local"),
    tuple(f"small:{kind}" for kind in CONFIG_KINDS),
    tuple(f"wikitext103_125m:{kind}" for kind in CONFIG_KINDS),
  ],
  ids=["default", "small", "125m"],
)
def test_compared_models_have_equal_size(entries):
  """The quality benchmark and the pod plan compare these per size: same width and depth, parameters
  within 2%; the pod model has the count its name says (within 6% of 125M)."""
  configs = [load_config(*entry.split(":")) for entry in entries]
  for config in configs:
    validate_config(config)
  assert len({(c.model.dim, c.model.num_layers, c.model.num_heads, c.model.mlp_dim) for c in configs}) == 1
  assert len({tuple(c.model.mixers) for c in configs}) == len(configs)
  models = [nnx.eval_shape(lambda c=c: WaveFieldLM(c.model, rngs=nnx.Rngs(0))) for c in configs]
  totals = [count_params(model)["total"] for model in models]
  assert max(totals) / min(totals) < 1.02, totals
  if entries[0].startswith("wikitext103_125m"):
    assert all(0.95 < total / 125e6 < 1.06 for total in totals), totals


def test_speed_init_reaches_every_wave_family_layer():
  config = model_config(dim=32, num_layers=4, mixers=("wave", "attention", "selective", "retention"), mlp_dim=64)
  config.speed_init = "tied"
  model = WaveFieldLM(config, rngs=nnx.Rngs(0))
  constants = [layer.mixer.constants() for layer in model.blocks if hasattr(layer.mixer, "constants")]
  assert len(constants) == 3
  for speed, damping, _ in constants:
    np.testing.assert_allclose(speed, damping, rtol=1e-5)


def test_small_config_names_its_choices():
  choices = r"\['hybrid', 'hybrid_local', 'retention', 'retention_local', 'selective', 'selective_local', "
  choices += r"'selective_retention', 'transformer', 'wave'\]"
  with pytest.raises(ValueError, match=r"configs/small.py takes one of " + choices):
    load_config("small", "mamba")


@pytest.mark.parametrize(
  "overrides, key",
  [
    (dict(dim=30), "model.dim=30 must be divisible"),
    (dict(mixers=("wave", "lstm", "wave", "wave")), "unknown mixer 'lstm'"),
    (dict(mixers=("wave",) * 3), "model.mixers must name one mixer per layer"),
    (dict(num_layers=0, mixers=()), "model.num_layers must be a positive integer"),
    (dict(vocab_size=-5), "model.vocab_size must be a positive integer"),
    (dict(dtype="float16"), "model.dtype must be one of"),
    (dict(attention_impl="flash"), "model.attention_impl"),
    (dict(remat="some"), "model.remat must be one of"),
    (dict(speed_init="random"), "model.speed_init must be one of"),
  ],
)
def test_bad_config_names_the_key(overrides, key):
  with pytest.raises(ValueError, match=key):
    WaveFieldLM(model_config(**overrides), rngs=nnx.Rngs(0))


def remat_loss(remat: str, length: int, batch: jax.Array, segment_ids: jax.Array):
  config = model_config(
    vocab_size=61, dim=32, num_layers=3, num_heads=4, mlp_dim=96, max_len=length, window=8, remat=remat
  )
  config.mixers = ("wave", "local", "selective")
  graphdef, params = nnx.split(WaveFieldLM(config, rngs=nnx.Rngs(0)))

  def loss(params):
    return nnx.merge(graphdef, params).token_losses(batch[:, :-1], batch[:, 1:], segment_ids).mean()

  return jax.jit(jax.value_and_grad(loss)), params


@pytest.mark.slow
def test_every_remat_policy_gives_the_same_loss_and_gradients_and_changes_the_compiled_temporaries(rng):
  # A policy that saves nothing different is a bug: each must change what the compiled step keeps.
  batch = jnp.asarray(rng.integers(0, 61, (2, 1025)))
  segment_ids = jnp.asarray(np.cumsum(rng.random((2, 1024)) < 0.01, axis=1))  # packed documents, kept apart
  results, temporaries = {}, {}
  for policy in ("none", "projections", "full"):
    fn, params = remat_loss(policy, 1024, batch, segment_ids)
    compiled = fn.lower(params).compile()
    temporaries[policy] = compiled.memory_analysis().temp_size_in_bytes
    results[policy] = compiled(params)
  assert temporaries["none"] > temporaries["projections"] > temporaries["full"], temporaries
  want, want_grads = results["none"]
  for policy in ("full", "projections"):
    loss, grads = results[policy]
    assert abs(float(loss) - float(want)) < 1e-5 * float(want), policy
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
      assert relative_error(g, w) < 1e-4, policy


def test_offload_is_refused_on_the_cpu():
  with pytest.raises(ValueError, match="model.remat='offload' needs a GPU or TPU"):
    small_model(("wave", "wave"), remat="offload")


@pytest.mark.parametrize("kind", sorted(TWO_LAYER_MIXERS))
def test_every_model_kind_builds_from_shapes_alone(kind):
  # nnx.eval_shape is how a trained run is loaded (checkpointing.load_trained): no initializer may need a
  # concrete value.
  abstract = nnx.eval_shape(lambda: small_model(TWO_LAYER_MIXERS[kind]))
  assert count_params(abstract)["total"] == count_params(small_model(TWO_LAYER_MIXERS[kind]))["total"]
