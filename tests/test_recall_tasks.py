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


def test_every_induction_answer_repeats_the_first_copy():
  rng = np.random.default_rng(np.random.SeedSequence().entropy)
  length = 64
  tokens, weights = recall.induction(rng, 16, length)
  half = length // 2 + 1
  targets = tokens[:, 1:]
  for t in np.flatnonzero(weights[0]):  # the target at t is token t + 1, seen before at t + 1 - half
    assert np.array_equal(targets[:, t], tokens[:, t + 1 - half])
  assert np.all(weights[:, :half] == 0) and np.all(weights[:, half:] == 1)


@pytest.mark.parametrize(
  "spec, message",
  [("mqar:8:4", "needs L >= 16"), ("mqar:64:4:8", "vocabulary of 10 to 256"), ("mqar:64:4:257", "10 to 256")],
)
def test_impossible_mqar_cases_are_refused_by_name(spec, message):
  case = recall.parse_case(spec, 800)
  with pytest.raises(ValueError, match=message):
    recall.mqar(np.random.default_rng(0), 1, case["length"], case["pairs"], case["vocab"])


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


@pytest.mark.parametrize("spec", ["mqar:64", "induction:64:4", "copy:64", "mqar:64:4:64:1"])
def test_malformed_cases_are_refused(spec):
  with pytest.raises(ValueError, match="a case is"):
    recall.parse_case(spec, 800)


def test_a_case_may_name_its_own_steps():
  assert recall.parse_case("mqar:32:2:16@2000", 800) == dict(task="mqar", length=32, pairs=2, vocab=16, steps=2000)
  assert recall.parse_case("induction:64", 800) == dict(task="induction", length=64, pairs=0, vocab=256, steps=800)
  assert recall.parse_case("copy:256:16:16", 800) == dict(task="copy", length=256, pairs=16, vocab=16, steps=800)


def test_a_model_name_may_set_the_heads():
  assert recall.model_shape("retention_h1") == (("retention", "retention"), 1)
  assert recall.model_shape("selective_retention_h16") == (("selective", "retention"), 16)
  assert recall.model_shape("hybrid_local") == (("wave", "local"), recall.HEADS)
  for name in ("waves", "wave_h3", "wave_h", "h4"):
    with pytest.raises(ValueError, match="unknown model"):
      recall.model_shape(name)
