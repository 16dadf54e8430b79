"""Scoring as lm-eval asks (`scoring`, `harness`): each request against an independent float64 scoring of
the same tokens through the forward pass, whole documents against one forward over all of them, a bounded
number of compiled programs, and lm-eval itself running the registered model on local task files."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from wavefield_jax import harness, scoring
from wavefield_jax.config import base_config
from wavefield_jax.errors import DataError
from wavefield_jax.generate import generate
from wavefield_jax.model import WaveFieldLM


def scorer_for(mixers: tuple[str, ...], window: int = 48, seed: int = 0) -> scoring.Scorer:
  config = base_config()
  config.model.update(dict(dim=32, num_heads=4, mlp_dim=64, num_layers=len(mixers), max_len=window))
  config.model.mixers = mixers
  config.data.seq_len = window
  graphdef, params = nnx.split(WaveFieldLM(config.model, rngs=nnx.Rngs(seed)))
  return scoring.Scorer(graphdef, nnx.to_pure_dict(params), config, batch_size=4)


@nnx.jit
def forward(model: WaveFieldLM, tokens: jax.Array) -> jax.Array:
  return model(tokens)


def reference_logprobs(scorer: scoring.Scorer, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """log p(target) [L] in float64 from the plain forward over `inputs`. Zeros after them fill the row to a
  multiple of 16, so that a few compiled programs serve every request: the model is causal (tested on its
  own), so what follows the inputs changes nothing of their logits."""
  padded = np.zeros((1, -(-len(inputs) // 16) * 16), np.int32)
  padded[0, : len(inputs)] = inputs
  logits = np.asarray(forward(scorer.model, padded), np.float64)[0, : len(inputs)]
  logits -= logits.max(-1, keepdims=True)
  logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return logprobs[np.arange(len(targets)), targets], np.argmax(logits, -1) == targets


@pytest.mark.slow
@pytest.mark.parametrize("mixers", [("wave", "retention"), ("selective", "attention")])
def test_loglikelihood_equals_the_forward_pass_on_the_same_tokens(rng, mixers):
  scorer = scorer_for(mixers)
  requests = []
  for _ in range(11):  # lengths over several buckets and a partial batch
    context = rng.integers(0, 256, rng.integers(0, 30))
    requests.append((context, rng.integers(0, 256, rng.integers(1, 18))))
  # A continuation that is the model's own greedy choice: its flag must say so.
  context = rng.integers(0, 256, 9)
  greedy = np.asarray(generate(scorer.model, context[None], 3, temperature=0.0, rng=jax.random.key(0)))[0, 9:]
  requests.append((context, greedy))
  results = scorer.continuations(requests)
  for (context, continuation), (logprob, is_greedy) in zip(requests, results, strict=True):
    whole = np.concatenate([[scorer.prefix] if len(context) == 0 else [], context, continuation]).astype(np.int32)
    expected, argmax = reference_logprobs(scorer, whole[:-1], whole[1:])
    n = len(continuation)
    assert logprob == pytest.approx(expected[-n:].sum(), rel=1e-5, abs=1e-4)
    assert is_greedy == bool(argmax[-n:].all())
  assert results[-1][1]


def test_a_document_is_read_whole_with_the_state_carried(rng, monkeypatch):
  monkeypatch.setattr(scoring, "DOCUMENT_CHUNK", 64)  # several chunks and a padded last one
  scorer = scorer_for(("wave", "selective", "retention"))
  tokens = rng.integers(0, 256, 200).astype(np.int32)
  inputs = np.concatenate([[scorer.prefix], tokens[:-1]]).astype(np.int32)
  expected, _ = reference_logprobs(scorer, inputs, tokens)
  assert scorer.document(tokens) == pytest.approx(expected.sum(), rel=1e-5)


def test_attention_reads_a_document_in_lm_eval_rolling_windows(rng):
  window = 48
  scorer = scorer_for(("wave", "attention"), window=window)
  tokens = rng.integers(0, 256, 130).tolist()
  expected = 0.0  # lm-eval's own windows, each scored by its own forward
  for context, predicted in map(make_disjoint_window, get_rolling_token_windows(tokens, scorer.prefix, window, 1)):
    whole = np.asarray(context + predicted, np.int32)
    logprobs, _ = reference_logprobs(scorer, whole[:-1], whole[1:])
    expected += logprobs[-len(predicted) :].sum()
  assert scorer.document(np.asarray(tokens)) == pytest.approx(expected, rel=1e-5)


def test_compiled_programs_are_bounded_by_the_lengths_not_the_requests(rng):
  scorer = scorer_for(("wave", "wave"))
  requests = [(rng.integers(0, 256, n), rng.integers(0, 256, 3)) for n in rng.integers(1, 120, 40)]
  scorer.continuations(requests)
  buckets = {scoring.bucket_length(len(c) + 2) for c, _ in requests}
  assert scorer.traces == len(buckets) <= 2


def test_requests_that_cannot_be_scored_are_named(rng):
  attention = scorer_for(("attention", "wave"), window=32)
  with pytest.raises(DataError, match="request 1 has 40 tokens to read.*window of 32 tokens"):
    attention.continuations([(rng.integers(0, 256, 5), [3]), (rng.integers(0, 256, 38), [3, 4, 5])])
  with pytest.raises(DataError, match="continuation tokenizes to nothing"):
    attention.continuations([(rng.integers(0, 256, 5), [])])


@pytest.mark.slow
def test_a_model_with_attention_is_not_read_as_one_document(tmp_path):
  from helpers import tiny_config

  from wavefield_jax.train_lib import train_and_evaluate

  config = tiny_config(steps=1, sample_tokens=0)  # its `hybrid` kind: wave then attention
  train_and_evaluate(config, tmp_path / "run")
  (tmp_path / "a.txt").write_text("some text to score")
  with pytest.raises(DataError, match="--context document reads a file as one sequence.*window of 32 tokens"):
    scoring.score_files(tmp_path / "run", [str(tmp_path / "a.txt")], context="document")
  windows = scoring.score_files(tmp_path / "run", [str(tmp_path / "a.txt")], context=8)
  assert windows["context"] == 8 and windows["files"][0]["tokens"] == len("some text to score") - 1


def test_generation_stops_at_the_stop_string():
  scorer = scorer_for(("wave", "retention"))
  context = np.frombuffer(b"The wave field", np.uint8).astype(np.int32)
  free = scorer.generate_until([context], [[]], 12)[0]  # 12 bytes: at least 3 characters
  stop = free[2]  # a character the greedy text holds: the text ends before its first occurrence
  assert scorer.generate_until([context], [[stop]], 12)[0] == free[: free.index(stop)]


def test_wikitext_pages_start_at_titles():
  raw = " = Alpha = \n\n text one \n = = Part = = \n more \n = Beta = \n\n two \n"
  assert harness.wikitext_pages(raw) == [" = Alpha = \n\n text one \n = = Part = = \n more \n", " = Beta = \n\n two \n"]


@pytest.mark.slow
def test_lm_eval_scores_a_trained_run_on_local_tasks_and_rolling_equals_evaluate(tmp_path, rng):
  from helpers import tiny_config

  from wavefield_jax.train_lib import train_and_evaluate

  config = tiny_config(steps=3, sample_tokens=0)
  config.model.mixers = ("wave", "selective")
  train_and_evaluate(config, tmp_path / "run")
  words = ["wave", "field", "light", "speed", "phase", "night"]
  text = "\n".join(" ".join(rng.choice(words, 10)) for _ in range(30)) + "\n"
  (tmp_path / "page.txt").write_text(text)
  model = harness.WavefieldLM(str(tmp_path / "run"))

  class Request:  # what lm-eval hands the model
    def __init__(self, *args):
      self.args = args

  rolling = model.loglikelihood_rolling([Request(text)])[0]
  document = scoring.score_files(tmp_path / "run", [str(tmp_path / "page.txt")], context="document")["files"][0]
  assert -rolling == pytest.approx(document["loss"] * document["tokens"], rel=1e-6)
  lambada = tmp_path / "lambada.jsonl"
  lambada.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, 8))}) + "\n" for _ in range(6)))
  (tmp_path / "wiki.test.raw").write_text(" = Title = \n\n" + text + " = Other = \n\n" + text[::-1] + "\n")
  results = harness.run_harness(
    str(tmp_path / "run"),
    ["lambada_local", "wikitext103_local"],
    wikitext103=str(tmp_path / "wiki.test.raw"),
    lambada=str(lambada),
  )["results"]
  assert 0.0 <= results["lambada_local"]["acc,none"] <= 1.0 and results["lambada_local"]["perplexity,none"] > 1
  assert results["wikitext103_local"]["bits_per_byte,none"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
  "args, message",
  [
    (["--tasks", "lambada_locl"], "knows no task 'lambada_locl'; nearest: lambada_local"),
    (["--tasks", "lambada_local", "--lambada", "missing.jsonl"], "cannot read missing.jsonl"),
    (["--tasks", "lambada_local"], "is not a training workdir: it has no config.json"),
  ],
)
def test_bad_harness_input_is_one_line_and_status_2(tmp_path, args, message):
  (tmp_path / "run").mkdir()
  lambada = ["--lambada", str(tmp_path / "l.jsonl")]
  (tmp_path / "l.jsonl").write_text('{"text": "a b"}\n')
  command = [sys.executable, "-m", "wavefield_jax.harness", "--workdir", str(tmp_path / "run"), *args]
  command += lambada if "--lambada" not in args else []
  done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
  assert done.returncode == 2
  assert message in done.stderr.strip().splitlines()[-1]
