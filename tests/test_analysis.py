"""The analysis API against hand-computable cases, exact Jacobians and finite differences."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from reference import relative_error

from wavefield_jax import analysis, input_pipeline, physics, plots, tables, tokenizers
from wavefield_jax.config import model_config
from wavefield_jax.head_constants import inverse_softplus
from wavefield_jax.layers import WaveFieldMixer
from wavefield_jax.model import WaveFieldLM
from wavefield_jax.train_lib import train_and_evaluate

# Trains models, starts processes or compiles many shapes: left out of `make test-fast`.
pytestmark = pytest.mark.slow

VOCAB = 23


def set_constants(mixer: WaveFieldMixer, speed, damping, phase) -> None:
  mixer.field.speed_raw[...] = inverse_softplus(jnp.asarray(speed, jnp.float32))
  mixer.field.damping_log[...] = jnp.log(jnp.asarray(damping, jnp.float32))
  mixer.field.phase[...] = jnp.asarray(phase, jnp.float32)


def tiny_lm(seed: int, mixers=("wave", "attention", "wave")) -> WaveFieldLM:
  config = model_config(vocab_size=VOCAB, dim=16, num_layers=len(mixers), num_heads=2, mixers=mixers, mlp_dim=32)
  return WaveFieldLM(config, rngs=nnx.Rngs(seed))


def test_a_head_with_known_constants_has_the_known_decay_length_and_period(rng):
  speed = rng.uniform(0.05, 3.0, 2)
  damping = np.exp(rng.uniform(np.log(1e-3), 0.0, 2))
  phase = rng.uniform(0, np.pi, 2)
  mixer = WaveFieldMixer(8, 2, max_len=64, rngs=nnx.Rngs(0))
  start = WaveFieldMixer(8, 2, max_len=64, rngs=nnx.Rngs(0))
  initial = [np.asarray(a) for a in start.constants()]
  set_constants(mixer, speed, damping, phase)
  rows = analysis.constants_table(mixer, start)
  assert [(r["layer"], r["head"]) for r in rows] == [("", 0), ("", 1)]
  for h, row in enumerate(rows):
    np.testing.assert_allclose(row["decay_length"], 1 / damping[h], rtol=1e-5)
    np.testing.assert_allclose(row["period"], 2 * np.pi / speed[h], rtol=1e-5)
    np.testing.assert_allclose(
      [row["speed"], row["damping"], row["phase"]], [speed[h], damping[h], phase[h]], rtol=1e-5
    )
    np.testing.assert_allclose(
      [row["speed_init"], row["damping_init"], row["phase_init"]], [initial[0][h], initial[1][h], initial[2][h]]
    )


def test_the_table_names_the_layers_of_a_language_model():
  rows = analysis.constants_table(tiny_lm(0))
  assert [(r["layer"], r["head"]) for r in rows] == [("0", 0), ("0", 1), ("2", 0), ("2", 1)]
  assert "| layer | head | speed |" in tables.markdown_table(rows)
  with pytest.raises(ValueError, match="no wave-family mixer"):
    analysis.constants_table(tiny_lm(0, ("attention",)))


def test_the_medium_wave_has_a_front_at_speed_c_and_the_mass_of_the_damped_oscillator(rng):
  speed, damping = rng.uniform(0.3, 2.0), rng.uniform(0.03, 0.1)
  steps = int(12 / damping)  # long enough that the front itself has faded (exp(-12))
  length = int(speed * steps) + 2
  field = analysis.medium_response(speed, damping, length, steps)  # [T, 2 * length + 1]
  x = np.arange(-length, length + 1)
  for t in (1, steps // 3, steps - 1):
    inside = np.abs(x) < speed * t
    assert np.all(field[t, ~inside] == 0) and np.all(field[t, inside] > 0)
  # Integrating the PDE over x: M'' + 2 gamma M' = 0, M(0) = 0, M'(0) = 1.
  t = steps - 1
  assert field[t].sum() == pytest.approx(-np.expm1(-2 * damping * t) / (2 * damping), rel=1e-3)
  # Without damping the wave is d'Alembert's: 1 / (2c) everywhere inside the cone.
  undamped = analysis.medium_response(speed, 1e-12, length, 20)
  np.testing.assert_allclose(undamped[19, np.abs(x) < speed * 19], 1 / (2 * speed), rtol=1e-6)


def exact_flow(model: WaveFieldLM, tokens: np.ndarray) -> np.ndarray:
  embedded = model.embed(jnp.asarray(tokens)[None])
  jacobian = jax.jacrev(lambda x: model.from_embeddings(x)[0])(embedded)  # [L, V, 1, L, D]
  return np.sqrt(np.square(np.asarray(jacobian, np.float64)[:, :, 0]).sum(axis=(1, 3)))  # [L, L]


def test_information_flow_equals_the_jacobian_and_is_causal(rng):
  model = tiny_lm(int(rng.integers(1 << 30)))
  tokens = rng.integers(0, VOCAB, 12)
  want = exact_flow(model, tokens)
  exact = analysis.information_flow(model, tokens, probes=None)
  assert relative_error(exact, want) < 1e-5
  assert np.triu(exact, 1).max() < 1e-6 * exact.max()
  assert np.diag(exact).min() > 0 and exact[-1, 0] > 0  # the first token reaches the last through the layers
  estimate = analysis.information_flow(model, tokens, probes=400, seed=int(rng.integers(1 << 30)))
  assert relative_error(estimate, want) < 0.1
  with pytest.raises(ValueError, match="tokens must be"):
    analysis.information_flow(model, tokens[None])


def test_constant_gradients_equal_autodiff_in_the_physical_values_and_finite_differences(rng):
  model = tiny_lm(int(rng.integers(1 << 30)), mixers=("wave", "wave"))
  windows = jnp.asarray(rng.integers(0, VOCAB, (6, 17)))
  rows = analysis.constant_gradients(model, windows, batch_size=4)  # two batches: the sums must combine
  graphdef, state = nnx.split(model)
  pure = nnx.to_pure_dict(state)

  def loss(physical: dict) -> jax.Array:  # {layer: (speed, damping, phase)}, set through the raw parameters
    params = jax.tree.map(lambda leaf: leaf, pure)  # fresh dicts, same leaves
    for layer, (speed, damping, phase) in physical.items():
      mixer = params["blocks"][layer]["mixer"]["field"]
      mixer["speed_raw"], mixer["damping_log"], mixer["phase"] = inverse_softplus(speed), jnp.log(damping), phase
    net = nnx.merge(graphdef, params)
    return optax.softmax_cross_entropy_with_integer_labels(net(windows[:, :-1]), windows[:, 1:]).mean()

  physical = {layer: tuple(model.blocks[layer].mixer.constants()) for layer in (0, 1)}
  grads = jax.grad(loss)(physical)  # differentiated in the physical values directly: no hand chain rule
  for row in rows:
    values = [np.asarray(v, np.float64) for v in physical[int(row["layer"])]]
    for i, name in enumerate(analysis.CONSTANTS):
      want = float(grads[int(row["layer"])][i][row["head"]])
      assert row[f"d_{name}"] == pytest.approx(want, rel=1e-3, abs=1e-7), (row, name)
      assert row[f"{name}_x_grad"] == pytest.approx(values[i][row["head"]] * row[f"d_{name}"], rel=1e-6)

  # The constants the loss is most sensitive to, against a Richardson-extrapolated central difference.
  def shifted_loss(layer: int, index: int, head: int, delta: float) -> float:
    values = [np.asarray(v, np.float64).copy() for v in physical[layer]]
    values[index][head] += delta
    return float(loss(physical | {layer: tuple(values)}))

  def richardson(layer: int, index: int, head: int, h: float) -> float:
    central = lambda h: (shifted_loss(layer, index, head, h) - shifted_loss(layer, index, head, -h)) / (2 * h)  # noqa: E731
    return (4 * central(h / 2) - central(h)) / 3

  # A random tiny model can pass a residual close to zero into an RMSNorm, which makes the loss sharply
  # curved in one constant: shrink the step until two Richardson estimates agree; where float32 rounding
  # stops them agreeing first, the next most sensitive constant is compared instead (three at most).
  ranked = sorted(((r, n) for r in rows for n in analysis.CONSTANTS), key=lambda rn: -abs(rn[0][f"{rn[1]}_x_grad"]))
  attempts = []
  for row, name in ranked[:3]:
    layer, index, head = int(row["layer"]), analysis.CONSTANTS.index(name), row["head"]
    h = 0.05 * abs(float(physical[layer][index][head]))
    coarse, fine = richardson(layer, index, head, h), richardson(layer, index, head, h / 4)
    while abs(coarse - fine) > 0.005 * abs(fine) and h > 1e-3:
      h /= 4
      coarse, fine = fine, richardson(layer, index, head, h / 4)
    attempts.append((name, coarse, fine))
    if abs(coarse - fine) <= 0.005 * abs(fine):
      assert row[f"d_{name}"] == pytest.approx(fine, rel=0.02), (row, name)
      break
  else:
    raise AssertionError(f"finite differences did not converge for any of three constants: {attempts}")


def test_inspect_writes_the_report_of_a_trained_workdir(tmp_path, rng):
  from wavefield_jax.config import base_config

  text = bytes(rng.integers(97, 123, 20_000).astype(np.uint8))
  corpus = input_pipeline.tokenize(
    {"train": [text], "validation": [text[:4000]], "test": [text[:4000]]}, tokenizers.ByteTokenizer(), 32
  )
  config = base_config()
  config.seed = 7
  config.model.update(dict(dim=32, num_layers=2, num_heads=4, mixers=("wave", "wave"), mlp_dim=64, max_len=32))
  config.data.seq_len = 32
  config.train.update(dict(steps=20, batch_size=8, warmup_steps=2, eval_every=1000, eval_windows=4, sample_tokens=0))
  train_and_evaluate(config, tmp_path / "run", corpus=corpus)
  (tmp_path / "text.txt").write_bytes(text[:3000])
  command = [sys.executable, "-m", "wavefield_jax.inspection", f"--workdir={tmp_path / 'run'}", "--length=40"]
  done = subprocess.run([*command, f"--text={tmp_path / 'text.txt'}", "--windows=4"], capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "step 20: physical constants per head" in done.stdout
  out = tmp_path / "run" / "inspect"
  for name in ("constants", "kernels", "fields", "medium", "flow"):
    assert (out / f"{name}.png").stat().st_size > 10_000
  report = (out / "report.md").read_text()
  assert "| 1 | 3 |" in report and "![flow](flow.png)" in report
  # The initial values shown are those of the run's own seed.
  model, initial, _, _ = analysis.load(tmp_path / "run")
  want = WaveFieldLM(config.model, rngs=nnx.Rngs(7)).blocks[1].mixer.constants()[1]
  np.testing.assert_allclose(initial.blocks[1].mixer.constants()[1], want)
  assert not np.allclose(model.blocks[1].mixer.constants()[1], want)  # and training moved them
  too_short = tmp_path / "short.txt"
  too_short.write_bytes(b"abc")
  done = subprocess.run([*command, f"--text={too_short}"], capture_output=True, text=True)
  assert done.returncode == 2 and "needs at least 41" in done.stderr


def test_clock_steps_and_retention_matches_are_what_the_layers_compute(rng, tmp_path):
  config = model_config(vocab_size=64, dim=32, num_layers=3, num_heads=4, mlp_dim=64, max_len=64)
  config.mixers = ("selective", "retention", "wave")
  model = WaveFieldLM(config, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
  tokens = jnp.asarray(rng.integers(0, 64, (2, 20)))
  x0 = model.embed(tokens)
  (name, delta), *rest = analysis.clock_steps(model, tokens)
  assert name == "0" and not rest and delta.shape == (2, 20, 4)
  assert relative_error(delta, model.blocks[0].mixer.clock_steps(model.blocks[0].mixer_norm(x0))) < 1e-6
  (name, match), *rest = analysis.retention_matches(model, tokens)
  assert name == "1" and not rest and match.shape == (2, 4, 20, 20)
  assert np.all(match[..., np.triu_indices(20, 1)[0], np.triu_indices(20, 1)[1]] == 0)  # nothing from the future
  # The matches times the values are the layer's field, as the chunked physics computes it.
  mixer, x1 = model.blocks[1].mixer, model.blocks[1].mixer_norm(model.blocks[0](x0))
  q, k, v, _, _ = mixer.queries_keys(x1, None)
  want, _ = physics.retention_chunked(q, k, v, *mixer.constants(), 8)
  assert relative_error(np.einsum("bhts,bshv->bthv", match, v), want) < 1e-5
  plots.plot_clock(analysis.clock_steps(model, tokens), tmp_path / "clock.png", labels=list("abcdefghijklmnopqrst"))
  assert (tmp_path / "clock.png").stat().st_size > 1000
  with pytest.raises(ValueError, match="has no selective layer"):
    analysis.clock_steps(WaveFieldLM(model_config(vocab_size=64, dim=32, num_heads=4), rngs=nnx.Rngs(0)), tokens)
