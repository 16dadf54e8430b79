"""Sharding on 8 host CPU devices: sequence-parallel wave conv, sharded train steps, no hidden gathers."""

import chex
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import conv_f64, random_problem, relative_error, retention_f64, selective_f64

import wavefield_jax as wf
from wavefield_jax import physics, sequence_parallel, sharding
from wavefield_jax.checkpointing import Checkpointer
from wavefield_jax.train_lib import init_state, make_train_step, token_losses


def test_eight_devices():
  assert jax.device_count() == 8


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fft", "matmul"])
@pytest.mark.parametrize("data, seq", [(2, 4), (1, 8), (8, 1)])
def test_sequence_parallel_conv_equals_single_device(rng, data, seq, method):
  mesh = sharding.make_mesh(data, seq)
  u, speed, damping, phase = random_problem(rng, B=8, L=96, H=3, K=2)
  damping[0] = 1e-3  # a long memory crosses every device boundary
  # Chunks of 5 inside each device's 12 (or 96) positions: a ragged last chunk on every device.
  conv = lambda *a: sequence_parallel.sharded_wave_conv(*a, mesh, method=method, chunk_size=5)  # noqa: E731
  got = jax.jit(conv)(u, speed, damping, phase)
  assert relative_error(got, conv_f64(u, speed, damping, phase)) < 1e-3
  assert relative_error(got, wf.wave_conv(u, speed, damping, phase)) < 1e-4
  weights = rng.standard_normal(u.shape).astype(np.float32)

  def loss(fn):
    return lambda u, c, g, p: jnp.sum(weights * fn(u, c, g, p))

  sharded = jax.jit(jax.grad(loss(conv), argnums=(0, 1, 2, 3)))
  single = jax.jit(jax.grad(loss(wf.wave_conv), argnums=(0, 1, 2, 3)))
  for got_grad, want_grad in zip(sharded(u, speed, damping, phase), single(u, speed, damping, phase), strict=True):
    assert relative_error(got_grad, want_grad) < 1e-4


def test_sequence_parallel_needs_divisible_lengths(rng):
  u, speed, damping, phase = random_problem(rng, B=2, L=30, H=2, K=2)
  with pytest.raises(ValueError, match="divisible by the mesh's 'seq' axis"):
    sequence_parallel.sharded_wave_conv(u, speed, damping, phase, sharding.make_mesh(2, 4))


def tiny_config(mixers=("wave", "wave")):
  config = helpers.load_config("tiny")
  config.model.mixers = mixers
  return config


def one_step(mesh, batch, fsdp=False, mixers=("wave", "wave")):
  """Loss, grad norm and updated params after one train step on `mesh` (None: one device)."""
  config = tiny_config(mixers)
  graphdef, state, optimizer = init_state(config, seed=0, mesh=mesh)
  shardings = None
  if mesh is not None:
    state_sharding = sharding.state_shardings(mesh, state, fsdp=fsdp)
    state = jax.device_put(state, state_sharding)
    shardings = (state_sharding, sharding.batch_sharding(mesh))
  step = make_train_step(graphdef, optimizer, skip_nonfinite=False, shardings=shardings)
  new_state, metrics = step(state, batch, None, None)
  return float(metrics["loss"]), float(metrics["grad_norm"]), new_state["params"], step, state


def gradients(mesh, batch, mixers):
  graphdef, state, _ = init_state(tiny_config(mixers), seed=0, mesh=mesh)
  if mesh is not None:
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  return jax.jit(jax.grad(lambda params: token_losses(graphdef, params, batch).mean()))(state["params"])


@pytest.mark.slow
@pytest.mark.parametrize(
  "data, seq, fsdp, mixers",
  [(8, 1, False, ("wave", "wave")), (8, 1, True, ("wave", "wave"))]
  + [(2, 4, False, ("attention", "wave"))],  # both mixers split over seq
)
def test_sharded_train_step_equals_one_device(rng, data, seq, fsdp, mixers):
  batch = jnp.asarray(rng.integers(0, 256, (8, 65)), jnp.int32)
  mesh = sharding.make_mesh(data, seq)
  want_grads, got_grads = gradients(None, batch, mixers), gradients(mesh, batch, mixers)
  flat = [
    (np.ravel(g), np.ravel(w)) for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True)
  ]
  # The whole gradient within 1e-5. Leaf by leaf, a few-element leaf whose sum over the batch nearly
  # cancels (a head's phase) can show float32's reordered summation at 2e-5: 1e-4 there.
  assert relative_error(np.concatenate([g for g, _ in flat]), np.concatenate([w for _, w in flat])) < 1e-5
  for got, want in flat:
    assert relative_error(got, want) < 1e-4
  want_loss, want_norm, want_params, _, _ = one_step(None, batch, mixers=mixers)
  got_loss, got_norm, got_params, _, _ = one_step(mesh, batch, fsdp, mixers)
  assert abs(got_loss - want_loss) <= 1e-5 * abs(want_loss)
  assert abs(got_norm - want_norm) <= 1e-5 * abs(want_norm)
  chex.assert_trees_all_close(jax.device_get(got_params), jax.device_get(want_params), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mixers", [("attention", "attention"), ("wave", "local")])
def test_every_layer_splits_over_seq(rng, mixers):
  """On a 1 x 8 mesh each device does about an eighth of the step's arithmetic, attention, MLPs and
  logits included: activations are split over seq from the embedding on, not only in the wave layers."""
  batch = jnp.asarray(rng.integers(0, 256, (1, 65)), jnp.int32)
  flops = {}
  for seq in (1, 8):
    _, _, _, step, state = one_step(sharding.make_mesh(1, seq), batch, mixers=mixers)
    flops[seq] = step.lower(state, batch, None, None).compile().cost_analysis()["flops"]
  assert flops[8] < flops[1] / 4, flops


@pytest.mark.slow
def test_data_parallel_step_has_no_all_gather(rng):
  batch = jnp.asarray(rng.integers(0, 256, (8, 65)), jnp.int32)
  mesh = sharding.make_mesh(8, 1)
  _, _, _, step, state = one_step(mesh, batch)
  hlo = step.lower(state, batch, None, None).compile().as_text()
  assert "all-reduce" in hlo  # the gradients are summed across devices: the check reads the real program
  assert "all-gather" not in hlo


def test_physics_functions_run_under_pmap(rng):
  u, speed, damping, phase = random_problem(rng, B=8, L=40, H=2, K=3)
  shards = u.reshape(8, 1, 40, 2, 3)
  for fn in (wf.wave_conv, wf.wave_scan):
    mapped = jax.pmap(fn, in_axes=(0, None, None, None))(shards, speed, damping, phase)
    assert relative_error(np.asarray(mapped).reshape(u.shape), fn(u, speed, damping, phase)) < 1e-6


@pytest.mark.slow
def test_sequence_parallel_selective_and_retention_equal_single_device(rng):
  mesh = sharding.make_mesh(2, 4)  # batch split too, and a ragged last chunk on every device
  u, speed, damping, phase = random_problem(rng, B=4, L=96, H=3, K=2)
  damping[0] = 1e-3
  delta = np.exp(rng.uniform(-3, 1, u.shape[:3])).astype(np.float32)
  got = jax.jit(lambda *a: sequence_parallel.sharded_selective_conv(*a, mesh, chunk_size=5))(
    u, delta, speed, damping, phase
  )
  assert relative_error(got, selective_f64(u, delta, speed, damping, phase)) < 1e-4
  q, k = (rng.standard_normal(u.shape).astype(np.float32) for _ in range(2))
  got = jax.jit(lambda *a: sequence_parallel.sharded_retention(*a, mesh, chunk_size=5))(q, k, u, speed, damping, phase)
  assert relative_error(got, retention_f64(q, k, u, speed, damping, phase)) < 1e-4


def sharded_start(mesh, config):
  graphdef, state, optimizer = init_state(config, seed=0, mesh=mesh)
  state_sharding = sharding.state_shardings(mesh, state, fsdp=True)
  step = make_train_step(graphdef, optimizer, False, (state_sharding, sharding.batch_sharding(mesh)))
  return jax.device_put(state, state_sharding), step


def train_on(mesh, step, state, batches):
  losses = []
  for batch in batches:
    state, metrics = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)), None, None)
    losses.append(float(metrics["loss"]))
  return state, losses


@pytest.mark.slow
def test_a_checkpoint_restores_onto_another_mesh_and_trains_on(rng, tmp_path):
  # Pods change shape between jobs: written on 2 x 4 (state split over all 8 devices), restored onto 1 x 8
  # and onto 4 devices, training goes on with the losses the original mesh gives.
  config = tiny_config(("wave", "attention"))
  batches = [rng.integers(0, 256, (8, 65)).astype(np.int32) for _ in range(5)]
  original = sharding.make_mesh(2, 4)
  state, step = sharded_start(original, config)
  state, _ = train_on(original, step, state, batches[:2])
  checkpointer = Checkpointer(tmp_path / "checkpoints", asynchronous=False)
  checkpointer.save(2, state, {"position": 2})
  checkpointer.wait()
  _, want = train_on(original, step, state, batches[2:])
  for mesh in (sharding.make_mesh(1, 8), sharding.make_mesh(2, 2, devices=jax.devices()[:4])):
    like, step_here = sharded_start(mesh, config)
    restored, data_state = checkpointer.restore(2, like)
    assert data_state == {"position": 2}
    assert {a.sharding for a in jax.tree.leaves(restored)} == {a.sharding for a in jax.tree.leaves(like)}
    _, got = train_on(mesh, step_here, restored, batches[2:])
    np.testing.assert_allclose(got, want, rtol=2e-5)
  checkpointer.close()


def test_fsdp_splits_the_state_over_data_and_seq():
  mesh = sharding.make_mesh(1, 8)
  config = tiny_config()
  config.model.update(dict(vocab_size=512, dim=64))  # an embedding large enough to be split
  _, state, _ = init_state(config, seed=0, mesh=mesh)
  shardings = sharding.state_shardings(mesh, state, fsdp=True)
  for tree in (shardings["params"], shardings["opt_state"][1].inner_states["no_decay"].inner_state[0].mu):
    embedding = tree["embed"]["embedding"]
    assert embedding.spec == jax.sharding.PartitionSpec(("data", "seq"), None)
    assert embedding.shard_shape((512, 64)) == (64, 64)


def test_sequence_parallel_takes_a_meshs_own_axis_names(rng):
  u, speed, damping, phase = random_problem(rng, B=2, L=48, H=2, K=3)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4), ("batch", "model"))
  conv = jax.jit(lambda *a: sequence_parallel.sharded_wave_conv(*a, mesh, axes=("batch", "model")))
  assert relative_error(conv(u, speed, damping, phase), physics.wave_conv(u, speed, damping, phase)) < 1e-5
  mixer = wf.WaveFieldMixer(16, 2, max_len=64, mesh=mesh, mesh_axes=("batch", "model"), rngs=nnx.Rngs(0))
  x = jnp.asarray(rng.standard_normal((2, 48, 16)), jnp.float32)
  plain = wf.WaveFieldMixer(16, 2, max_len=64, rngs=nnx.Rngs(0))
  forward = nnx.jit(lambda m, x: m(x))  # jitted: shard_map run op by op compiles every op apart
  assert relative_error(forward(mixer, x), forward(plain, x)) < 1e-5
  with pytest.raises(
    ValueError, match=r"must name the mesh's batch and sequence axes; the mesh has axes \('batch', 'model'\)"
  ):
    sequence_parallel.sharded_wave_conv(u, speed, damping, phase, mesh)
