"""Scoring token sequences as lm-eval asks: a continuation's log-probability and whether it is the greedy
one, and a whole document's log-probability with each token given the most context.

Requests are padded on the right into a few lengths (powers of two, `generate.bucket_length`) and batches of
a fixed size, so the number of compiled programs is bounded by the number of lengths, not of requests. Each
request has a row of its own: nothing is packed, so no request's state reaches another's.

A model whose mixers are all of the wave family scores a document of any length in one pass, carrying its
decode state chunk by chunk (memory flat in the length); a model with attention scores it in windows of its
training length, each window predicting new tokens from the most context that fits, as lm-eval's rolling
windows do.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from wavefield_jax import tokenizers
from wavefield_jax.errors import DataError
from wavefield_jax.generate import bucket_length, generate

WAVE_FAMILY = ("wave", "selective", "retention")
# Documents are read in chunks of this many tokens by the models that carry state.
DOCUMENT_CHUNK = 2048
# What a document's first token is predicted from: the tokenizer's separator (GPT-2's end of text, which
# precedes every document in training), or a newline for bytes, which have no separator.
NEWLINE = 10


class Scorer:
  """Scores requests with one trained model.

  Args:
    graphdef: the model's graph definition.
    params: its parameters.
    config: the run's config (model, tokenizer and training window `data.seq_len`).
    batch_size: rows per compiled call.
  """

  def __init__(self, graphdef: nnx.GraphDef, params: dict, config: ml_collections.ConfigDict, batch_size: int = 8):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    self.model = nnx.merge(graphdef, params)
    self.config = config
    self.window = config.data.seq_len
    self.batch_size = batch_size
    self.tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
    self.prefix = self.tokenizer.separator[0] if self.tokenizer.separator else NEWLINE
    self.carries_state = all(kind in WAVE_FAMILY for kind in config.model.mixers)
    self.traces = 0  # compiled programs so far (each distinct shape traces once)
    graphdef, state = nnx.split(self.model)

    @jax.jit
    def token_scores(state, inputs, targets):  # [B, L] each -> log p(target) [B, L], greedy [B, L]
      self.traces += 1
      logits = nnx.merge(graphdef, state)(inputs)
      return _scores(logits, targets)

    @functools.partial(jax.jit, donate_argnums=1)
    def chunk_scores(state, cache, inputs, targets):
      self.traces += 1
      logits, cache = nnx.merge(graphdef, state).prefill(inputs, cache)
      return *_scores(logits, targets), cache

    self._token_scores = functools.partial(token_scores, state)
    self._chunk_scores = functools.partial(chunk_scores, state)

  def continuations(self, requests: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[float, bool]]:
    """(log p(continuation | context), whether every continuation token is the argmax) per request.

    Args:
      requests: (context [C] int, continuation [N] int) pairs, C + N >= 2, N >= 1.
    """
    items = []
    for index, (context, continuation) in enumerate(requests):
      if len(continuation) == 0:
        raise DataError(f"request {index}: the continuation tokenizes to nothing")
      whole = np.concatenate([np.asarray(context), np.asarray(continuation)]).astype(np.int32)
      if len(context) == 0:
        whole = np.concatenate([[self.prefix], whole]).astype(np.int32)
      if not self.carries_state and len(whole) - 1 > self.window:
        raise DataError(
          f"request {index} has {len(whole) - 1} tokens to read; {window_description(self.config)}"
          " (shorten the context or use a model of the wave family)"
        )
      items.append((whole[:-1], whole[1:], len(continuation)))
    return self._score_items(items)

  def _score_items(self, items: list[tuple[np.ndarray, np.ndarray, int]]) -> list[tuple[float, bool]]:
    """(inputs [L], targets [L], n) -> (sum of the last n targets' log-probabilities, all of them greedy)."""
    results: list[tuple[float, bool] | None] = [None] * len(items)
    by_length: dict[int, list[int]] = {}
    for index, (inputs, _, _) in enumerate(items):
      by_length.setdefault(bucket_length(len(inputs)), []).append(index)
    for length, indices in sorted(by_length.items()):
      for start in range(0, len(indices), self.batch_size):
        group = indices[start : start + self.batch_size]
        inputs = np.zeros((self.batch_size, length), np.int32)  # padded rows and positions are never read
        targets = np.zeros((self.batch_size, length), np.int32)
        for row, index in enumerate(group):
          inputs[row, : len(items[index][0])], targets[row, : len(items[index][1])] = items[index][:2]
        logprobs, greedy = (np.asarray(a) for a in self._token_scores(inputs, targets))
        for row, index in enumerate(group):
          end = len(items[index][0])
          scored = slice(end - items[index][2], end)
          results[index] = (float(logprobs[row, scored].astype(np.float64).sum()), bool(greedy[row, scored].all()))
    return results

  def document(self, tokens: np.ndarray) -> float:
    """log p(tokens), every token scored once from the prefix on, with the most context the model reads."""
    tokens = np.asarray(tokens, np.int32)
    if tokens.size == 0:
      raise DataError("a document must have at least one token")
    inputs = np.concatenate([[self.prefix], tokens[:-1]]).astype(np.int32)
    if not self.carries_state:  # windows of the training length, each predicting up to a window of new tokens
      items = []
      for start in range(0, len(tokens), self.window):
        end = min(start + self.window, len(tokens))
        read = slice(max(0, end - self.window), end)  # the most context that fits
        items.append((inputs[read], tokens[read], end - start))
      return sum(logprob for logprob, _ in self._score_items(items))
    cache = self.model.init_cache(1, DOCUMENT_CHUNK)
    total = 0.0
    for start in range(0, len(tokens), DOCUMENT_CHUNK):
      chunk = slice(start, start + DOCUMENT_CHUNK)
      count = len(tokens[chunk])
      length = DOCUMENT_CHUNK if count == DOCUMENT_CHUNK else bucket_length(count)  # the last chunk padded
      padded = [np.pad(a[chunk], (0, length - count))[None] for a in (inputs, tokens)]
      logprobs, _, cache = self._chunk_scores(cache, *padded)
      total += float(np.asarray(logprobs)[0, :count].astype(np.float64).sum())
    return total

  def document_scores(self, tokens: np.ndarray) -> dict:
    """{"loss": nats per token, "bpb": bits per byte, "tokens", "bytes"} of one document."""
    nats = -self.document(tokens)
    count = int(np.asarray(self.tokenizer.token_bytes)[tokens].sum())
    return {"loss": nats / len(tokens), "bpb": nats / math.log(2) / count, "tokens": len(tokens), "bytes": count}

  def generate_until(self, contexts: list[np.ndarray], until: list[list[str]], max_new_tokens: int) -> list[str]:
    """Greedy continuations of each context, cut before the first of its stop strings.

    A stop string of one token ends that row's loop early; longer ones are cut from the decoded text.
    """
    results = []
    for start in range(0, len(contexts), self.batch_size):
      group = list(range(start, min(start + self.batch_size, len(contexts))))
      prompts = []
      for index in group:
        prompt = np.asarray(contexts[index], np.int32)
        if prompt.size == 0:
          prompt = np.asarray([self.prefix], np.int32)
        if not self.carries_state:  # keep the most recent tokens that leave room for the new ones
          prompt = prompt[-max(1, self.window - max_new_tokens) :]
        prompts.append(prompt)
      width = bucket_length(max(len(p) for p in prompts))
      batch = np.zeros((self.batch_size, width), np.int32)
      lengths = np.ones(self.batch_size, np.int32)
      for row, prompt in enumerate(prompts):
        batch[row, : len(prompt)], lengths[row] = prompt, len(prompt)
      stops = {int(ids[0]) for index in group for text in until[index] if len(ids := self.tokenizer.encode(text)) == 1}
      tokens = generate(
        self.model,
        batch,
        max_new_tokens,
        temperature=0.0,
        rng=jax.random.key(0),
        stop_tokens=tuple(sorted(stops)),
        prompt_lengths=lengths,
      )
      for row, index in enumerate(group):
        text = self.tokenizer.decode(np.asarray(tokens[row, width:]))
        for stop in until[index]:
          text = text.split(stop)[0] if stop else text
        results.append(text)
    return results


def window_description(config: ml_collections.ConfigDict) -> str:
  """Names the layers that limit a model's reach, and their window (the training length)."""
  attention = sorted({kind for kind in config.model.mixers if kind not in WAVE_FAMILY})
  return f"the model's {'/'.join(attention)} layers see a window of {config.data.seq_len} tokens"


def _scores(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """logits [B, L, V], targets [B, L] -> log p(target) [B, L] and whether target is the argmax [B, L]."""
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  chosen = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
  return chosen, jnp.argmax(logits, axis=-1) == targets


def score_files(
  workdir: str | Path,
  paths: list[str],
  step: int | None = None,
  batch_size: int = 8,
  context: int | str | None = None,
) -> dict:
  """Scores text files with the latest (or the given) checkpoint of a workdir.

  Args:
    workdir: a training workdir.
    paths: text files, each read as bytes and tokenized with the run's tokenizer.
    step: the checkpoint's step; the latest when None.
    batch_size: windows per compiled call.
    context: windows of this many tokens (None: the training length), each target scored once; or
      "document": each file as one sequence (models of the wave family only), every token scored.

  Returns:
    {"step": int, "context": ..., "files": [{"path", "loss", "bpb", "tokens", "bytes"}, ...]}.
  """
  from wavefield_jax import input_pipeline
  from wavefield_jax.checkpointing import load_trained
  from wavefield_jax.train_lib import evaluate, make_eval_step

  graphdef, params, config, step = load_trained(workdir, step)
  if context == "document" and not all(kind in WAVE_FAMILY for kind in config.model.mixers):
    description = window_description(config)
    raise DataError(f"--context document reads a file as one sequence, but {description}; give --context N")
  if context is not None and context != "document" and (not isinstance(context, int) or context < 1):
    raise DataError(f"--context must be a positive number of tokens or 'document'; got {context!r}")
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  scorer = Scorer(graphdef, params, config, batch_size) if context == "document" else None
  eval_step = None if scorer else make_eval_step(graphdef)
  token_bytes = jnp.asarray(tokenizer.token_bytes)
  results = []
  for path in paths:
    try:
      raw = Path(path).read_bytes()
    except OSError as error:
      raise DataError(f"cannot read {path}: {error.strerror}") from error
    tokens = tokenizer.encode(raw)
    if tokens.size < 2:
      raise DataError(f"{path} has {tokens.size} token(s); at least 2 are needed to score it")
    if scorer:
      results.append({"path": str(path)} | scorer.document_scores(tokens))
      continue
    windows, weights = input_pipeline.eval_windows(tokens, context or config.data.seq_len)
    results.append({"path": str(path)} | evaluate(eval_step, params, windows, weights, token_bytes, batch_size))
  return {"step": step, "context": context or config.data.seq_len, "files": results}
