"""The recall benchmark's tasks: every weighted position's next token is determined by what came before."""

import numpy as np
import pytest

from benchmarks import recall


@pytest.mark.parametrize("length, pairs, vocab", [(32, 2, 64), (64, 4, 256), (256, 16, 256), (16, 4, 10)])
def test_every_mqar_answer_is_the_value_its_key_was_paired_with(length, pairs, vocab):
  rng = np.random.default_rng(np.random.SeedSequence().entropy)
  tokens, weights = recall.mqar(rng, 32, length, pairs, vocab)
  assert tokens.shape == (32, length + 1) and weights.shape == (32, length)
  for row, row_weights in zip(tokens, weights, strict=True):
    keys, values = row[0 : 2 * pairs : 2], row[1 : 2 * pairs : 2]
    assert len(set(keys)) == pairs
    assert np.all((keys >= 1) & (keys < vocab // 2)) and np.all((values >= vocab // 2) & (values < vocab))
    queries = np.flatnonzero(row_weights)
    assert len(queries) == pairs and np.all(queries >= 2 * pairs)
    assert sorted(row[queries]) == sorted(keys)  # each key asked once
    for query in queries:
      assert row[query + 1] == values[list(keys).index(row[query])]
    others = np.setdiff1d(np.arange(2 * pairs, length + 1), np.concatenate([queries, queries + 1]))
    assert np.all(row[others] == 0)  # nothing else in the sequence names a key or a value


def test_every_copy_sequence_answer_repeats_the_first_copy():
  rng = np.random.default_rng(np.random.SeedSequence().entropy)
  length = 64
  tokens, weights = recall.copy_sequence(rng, 16, length)
  half = length // 2 + 1
  targets = tokens[:, 1:]
  for t in np.flatnonzero(weights[0]):  # the target at t is token t + 1, seen before at t + 1 - half
    assert np.array_equal(targets[:, t], tokens[:, t + 1 - half])
  assert np.all(weights[:, :half] == 0) and np.all(weights[:, half:] == 1)


@pytest.mark.parametrize(
  "spec, message",
  [("mqar:8:4", "needs L >= 16"), ("mqar:64:4:8", "vocabulary of at least 10"), ("zoology:32:16", "L >= 64")],
)
def test_impossible_mqar_cases_are_refused_by_name(spec, message):
  case = recall.parse_case(spec, 800)
  with pytest.raises(ValueError, match=message):
    recall.TASKS[case["task"]](np.random.default_rng(0), 1, case["length"], case["pairs"], case["vocab"])


def test_selective_copy_answers_are_the_scattered_tokens_in_order():
  rng = np.random.default_rng(np.random.SeedSequence().entropy)
  tokens, weights = recall.selective_copy(rng, 16, 256, 16, 16)
  targets = tokens[:, 1:]
  for row in range(16):
    marker = int(np.flatnonzero(tokens[row] == 15)[0])  # the first marker, V - 1
    data = tokens[row, :marker][tokens[row, :marker] != 0]  # the scattered tokens, in order
    assert len(data) == 16 and np.all((data >= 1) & (data <= 14))
    answered = np.flatnonzero(weights[row])
    assert answered[0] == marker and len(answered) == 16
    assert np.array_equal(targets[row, answered], data)  # each answer is determined by the context before it


@pytest.mark.parametrize(
  "spec",
  ["mqar:64", "induction:64", "induction_heads:64:4", "zoology:64:4:16", "copy:64", "mqar:64:4:64:1", "mqar:x:4"],
)
def test_malformed_cases_are_refused(spec):
  with pytest.raises(ValueError, match="a case is"):
    recall.parse_case(spec, 800)


def test_a_case_may_name_its_own_steps():
  assert recall.parse_case("mqar:32:2:16@2000", 800) == dict(task="mqar", length=32, pairs=2, vocab=16, steps=2000)
  assert recall.parse_case("copy_sequence:64", 800) == dict(
    task="copy_sequence", length=64, pairs=0, vocab=256, steps=800
  )
  assert recall.parse_case("induction_heads:256@15000", 800) == dict(
    task="induction_heads", length=256, pairs=0, vocab=16, steps=15000
  )
  assert recall.parse_case("zoology:256:16", 800) == dict(task="zoology", length=256, pairs=16, vocab=8192, steps=800)
  assert recall.parse_case("copy:256:16:16", 800) == dict(task="copy", length=256, pairs=16, vocab=16, steps=800)


def test_a_model_name_may_set_the_speeds_the_width_and_the_heads():
  assert recall.model_shape("retention_h1") == (("retention", "retention"), recall.DIM, 1, "spread")
  assert recall.model_shape("selective_retention_h16") == (("selective", "retention"), recall.DIM, 16, "spread")
  assert recall.model_shape("retention_d128") == (("retention", "retention"), 128, recall.HEADS, "spread")
  assert recall.model_shape("wave_d256_h8") == (("wave", "wave"), 256, 8, "spread")
  assert recall.model_shape("hybrid_local") == (("wave", "local"), recall.DIM, recall.HEADS, "spread")
  assert recall.model_shape("selective_tied") == (("selective", "selective"), recall.DIM, recall.HEADS, "tied")
  assert recall.model_shape("selective_local_tied_d128_h8") == (("selective", "local"), 128, 8, "tied")
  for name in ("waves", "wave_h3", "wave_h", "h4", "wave_d30", "wave_h4_d128", "wave_d128_tied", "tied"):
    with pytest.raises(ValueError, match="unknown model"):
      recall.model_shape(name)


@pytest.mark.parametrize("text", ["64", "64:x", "128:10,64:10", "64:10,64:10", "256:10", "2:10"])
def test_a_bad_warmup_is_refused(text):
  with pytest.raises(ValueError, match="--warmup"):
    recall.parse_warmup(text, 256)


@pytest.mark.slow
def test_a_warmup_trains_each_shorter_length_first_then_the_case(monkeypatch):
  drawn = []
  induction_heads = recall.TASKS["induction_heads"]

  def recorded(rng, batch, length, pairs, vocab):
    drawn.append((batch, length))
    return induction_heads(rng, batch, length, pairs, vocab)

  monkeypatch.setitem(recall.TASKS, "induction_heads", recorded)
  warmup = recall.parse_warmup("8:3,16:2", 32)
  case = recall.parse_case("induction_heads:32@4", 0) | dict(
    model="wave", tokens_per_step=64, learning_rate=1e-3, warmup=warmup
  )
  row = recall.measure(case)
  assert drawn[:9] == [(8, 8)] * 3 + [(4, 16)] * 2 + [(2, 32)] * 4  # then the scoring's unseen sequences
  assert [step for step, _ in row["loss_curve"]] == list(range(1, 10))
  spec = recall.spec_of(case)
  assert recall.budget(spec) == "3 at 8, then 2 at 16, then 4 x 64"
  assert recall.budget(recall.spec_of(case | {"warmup": []})) == "4 x 64"


def test_the_best_rate_is_the_best_at_the_training_length_then_beyond():
  case = recall.parse_case("induction_heads:256@10", 0) | dict(model="selective", tokens_per_step=2048)
  rows = [
    case | dict(learning_rate=rate, accuracy=at_256, accuracy_at={"256": at_256, "4096": at_4096, "65536": 0.1})
    for rate, at_256, at_4096 in [(1e-3, 1.0, 0.5), (3e-3, 1.0, 0.7), (1e-2, 0.9, 0.9)]
  ]
  for order in (rows, rows[::-1]):
    (best,) = recall.best_rows(order).values()
    assert best["learning_rate"] == 3e-3


def test_every_induction_heads_answer_is_the_token_after_the_first_special():
  rng = np.random.default_rng(np.random.SeedSequence().entropy)
  length, vocab = 256, 16
  tokens, weights = recall.induction_heads(rng, 64, length)
  special = vocab - 1
  assert tokens.shape == (64, length + 1) and np.all((tokens >= 0) & (tokens < vocab))
  assert np.array_equal(np.flatnonzero(weights.sum(0)), [length - 1]) and np.all(weights[:, -1] == 1)
  for row in tokens:
    seen = np.flatnonzero(row[:length] == special)
    assert len(seen) == 2 and seen[1] == length - 1  # once inside, once as the query
    assert row[length] == row[seen[0] + 1] and row[length] != special
  firsts = [np.flatnonzero(row == special)[0] for row in tokens]
  assert len(set(firsts)) > 10  # the first occurrence moves


def test_zoology_queries_are_near_the_pairs_and_the_filler_is_random():
  rng = np.random.default_rng(np.random.SeedSequence().entropy)
  length, pairs, vocab = 256, 16, recall.ZOOLOGY_VOCAB
  tokens, weights = recall.zoology(rng, 256, length, pairs)
  offsets = []
  for row, row_weights in zip(tokens, weights, strict=True):
    keys, values = row[0 : 2 * pairs : 2], row[1 : 2 * pairs : 2]
    assert len(set(keys)) == pairs and np.all((keys >= 1) & (keys < vocab // 2)) and np.all(values >= vocab // 2)
    queries = np.flatnonzero(row_weights)
    assert len(queries) == pairs and sorted(row[queries]) == sorted(keys)
    for query in queries:
      assert row[query + 1] == values[list(keys).index(row[query])]
    offsets.extend((queries - 2 * pairs) // 2)
  # The power law of exponent 0.01 puts queries near the pairs: the first 8 of 112 slots hold several times
  # their uniform share, the last half well under its share; the filler spans the vocabulary (zeros: one value).
  offsets = np.asarray(offsets)
  slots = (length + 1 - 2 * pairs) // 2
  assert np.mean(offsets < 8) > 3 * 8 / slots and np.mean(offsets >= slots // 2) < 0.5 * 0.5
  assert len(np.unique(tokens[:, 2 * pairs :])) > vocab // 4


def test_the_project_mqar_asks_at_uniform_offsets():
  rng = np.random.default_rng(np.random.SeedSequence().entropy)
  length, pairs = 256, 16
  tokens, weights = recall.mqar(rng, 512, length, pairs)
  offsets = (np.nonzero(weights)[1] - 2 * pairs) // 2
  slots = (length + 1 - 2 * pairs) // 2
  assert abs(np.mean(offsets < slots // 2) - 0.5) < 0.03


@pytest.mark.slow
def test_scoring_in_chunks_through_the_cache_equals_the_whole_forward(monkeypatch):
  import jax.numpy as jnp

  from wavefield_jax.train_lib import build_model

  monkeypatch.setattr(recall, "SCORE_CHUNK", 16)
  monkeypatch.setattr(recall, "SCORE_SEQUENCES", 24)
  length = 64
  for model_name in ("selective_retention", "hybrid"):
    case = dict(task="mqar", length=length, pairs=4, vocab=16, model=model_name, steps=1, learning_rate=1e-3)
    _, _, model = build_model(recall.case_config(case), seed=np.random.SeedSequence().entropy % 2**31)
    tokens, weights = recall.mqar(np.random.default_rng(7), 24, length, 4, 16)
    predicted = np.asarray(jnp.argmax(model(jnp.asarray(tokens[:, :-1])), -1))
    expected = ((predicted == tokens[:, 1:]) * weights).sum() / weights.sum()
    assert recall.accuracy_at(model, case, length, seed=7) == pytest.approx(expected, abs=1e-6)


def test_state_floats_count_the_decode_cache():
  from wavefield_jax.train_lib import build_model

  dim, length = 64, 128
  case = dict(task="mqar", length=length, pairs=4, vocab=256, steps=1, learning_rate=1e-3)
  config = recall.case_config(case | {"model": "wave"})
  conv = (config.model.conv_width - 1) * 3 * dim  # the short convolution's last inputs of q, k, v
  assert recall.state_floats(build_model(config, 0)[2], length) == 2 * (conv + 2 * dim)  # complex wave state
  transformer = build_model(recall.case_config(case | {"model": "transformer"}), 0)[2]
  assert recall.state_floats(transformer, length) == 2 * 2 * length * dim  # keys and values
  retention = build_model(recall.case_config(case | {"model": "retention_h1"}), 0)[2]
  assert recall.state_floats(retention, length) >= 2 * 2 * dim * dim  # a K x K complex state per head


@pytest.mark.slow
def test_clock_reach_is_where_the_physics_halves_and_turns_the_field():
  import jax.numpy as jnp
  from flax import nnx

  from wavefield_jax import physics
  from wavefield_jax.layers import SelectiveWaveMixer
  from wavefield_jax.train_lib import build_model

  case = dict(task="induction_heads", length=64, pairs=0, vocab=16, steps=1, learning_rate=1e-3)
  seed = int(np.random.SeedSequence().entropy % 2**31)
  model = build_model(recall.case_config(case | {"model": "selective_retention"}), seed)[2]
  (reach,) = recall.clock_reach(model, case, seed=seed)  # one selective layer, under the retention layer
  mixer = next(m for _, m in nnx.iter_modules(model) if isinstance(m, SelectiveWaveMixer))
  speed, damping, _ = mixer.constants()
  for tokens, want in ((reach["half_life_tokens"], 0.5), (reach["quarter_turn_tokens"], None)):
    elapsed = jnp.full((1, 1, speed.shape[0]), reach["median_step"] * tokens)  # that many tokens at the median step
    decay = np.asarray(physics.selective_decay(elapsed, speed, damping))[0, reach["head"]]
    if want is None:
      assert np.angle(decay) == pytest.approx(np.pi / 2, rel=1e-4)
    else:
      assert abs(decay) == pytest.approx(want, rel=1e-4)
  assert recall.clock_reach(build_model(recall.case_config(case | {"model": "transformer"}), seed)[2], case, 0) == []
