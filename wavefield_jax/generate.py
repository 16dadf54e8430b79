"""Sampling with the decode cache: a parallel prefill over the prompt, then one jitted step per token."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wavefield_jax import tokenizers
from wavefield_jax.model import WaveFieldLM


def sample_logits(
  logits: jax.Array,
  rng: jax.Array,
  *,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
) -> jax.Array:
  """Draws one token per row.

  Args:
    logits: [B, V] float32.
    rng: a PRNG key.
    temperature: 0 means greedy (argmax); higher flattens the distribution.
    top_k: keep only the k most likely tokens.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p.

  Returns:
    [B] int32 tokens.
  """
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V] descending
    before = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1) - jax.nn.softmax(ordered, axis=-1)
    # The smallest logit still inside the nucleus: a token is kept if the mass before it is < top_p.
    cutoff = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, vocab: int):
  if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
    raise ValueError(f"max_new_tokens must be a non-negative integer; got {max_new_tokens!r}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0; got {temperature}")
  if top_k is not None and not 1 <= top_k <= vocab:
    raise ValueError(f"top_k must be in [1, {vocab}]; got {top_k}")
  if top_p is not None and not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1]; got {top_p}")


def make_decoder(model: WaveFieldLM) -> tuple[Callable, Callable]:
  """Jitted (prefill, step) over the model's split state, so each call pays no graph traversal.

  Returns:
    prefill(tokens [B, P], cache) -> (logits [B, P, V], cache) and
    step(token [B], cache) -> (logits [B, V], cache), the cache donated to the step.
  """
  graphdef, state = nnx.split(model)

  @jax.jit
  def prefill(state, tokens, cache):
    return nnx.merge(graphdef, state).prefill(tokens, cache)

  @functools.partial(jax.jit, donate_argnums=2)
  def step(state, token, cache):
    return nnx.merge(graphdef, state).step(token, cache)

  return functools.partial(prefill, state), functools.partial(step, state)


# The prompt tokens every row has, but the last, are prefilled in chunks whose sizes are powers of two up to
# LARGEST_PREFILL (at most log2 of it compiled shapes, whatever the prompt length); each row's remaining prompt
# tokens run through the decode loop, which then samples.
LARGEST_PREFILL = 1024
# Padded lengths (attention's KV cache, the loop's prompt buffer) are powers of two from this one up.
SMALLEST_BUCKET = 64
# Incremented each time the decode loop is traced: a second call with the same shapes must leave it alone.
TRACE_COUNT = {"decode": 0, "prefill": 0}


class Structure:
  """A model's GraphDef as a static argument of jit. A GraphDef holding the model's ConfigDict does not hash;
  two with the same repr describe the same modules, so one compiled program serves both."""

  def __init__(self, graphdef: nnx.GraphDef):
    self.graphdef, self._key = graphdef, repr(graphdef)

  def __hash__(self) -> int:
    return hash(self._key)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, Structure) and self._key == other._key


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _prefill_chunk(structure: Structure, state: nnx.State, cache: list, tokens: jax.Array) -> list:
  TRACE_COUNT["prefill"] += 1
  return nnx.merge(structure.graphdef, state).prefill(tokens, cache)[1]


@functools.partial(
  jax.jit,
  static_argnames=("structure", "max_new_tokens", "temperature", "top_k", "top_p", "stop_tokens"),
)
def _decode(
  structure: Structure,
  state: nnx.State,
  cache: list,
  tail: jax.Array,
  tail_lengths: jax.Array,
  rng: jax.Array,
  *,
  max_new_tokens: int,
  temperature: float,
  top_k: int | None,
  top_p: float | None,
  stop_tokens: tuple[int, ...],
) -> jax.Array:
  """One loop over the prompts' last tokens and the new ones: tail [B, T] holds tail_lengths [B] (1..T)
  prompt tokens per row, fed one per step; each row then feeds back what it samples, until it has drawn
  `max_new_tokens` or a stop token. Returns the new tokens [B, max_new_tokens], a stopped row repeating its
  stop token."""
  TRACE_COUNT["decode"] += 1
  model = nnx.merge(structure.graphdef, state)
  batch = tail.shape[0]
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)

  def running(carry):
    return ~jnp.all(carry["done"])

  def advance(carry):
    logits, cache = model.step(carry["token"], carry["cache"])  # [B, V]
    t = carry["t"]
    sampled = sample_logits(logits, jax.random.fold_in(rng, t), temperature=temperature, top_k=top_k, top_p=top_p)
    in_prompt = t + 1 < tail_lengths  # the next input is still the prompt's
    writing = ~in_prompt & ~carry["done"]
    count = carry["count"]
    new = jnp.where(writing[:, None] & (jnp.arange(max_new_tokens) == count[:, None]), sampled[:, None], carry["new"])
    count = count + writing
    stopped = writing & jnp.isin(sampled, stops)
    forced = jax.lax.dynamic_index_in_dim(tail, jnp.minimum(t + 1, tail.shape[1] - 1), axis=1, keepdims=False)
    return {
      "t": t + 1,
      "token": jnp.where(in_prompt, forced, sampled),
      "cache": cache,
      "new": new,
      "count": count,
      "done": carry["done"] | stopped | (count >= max_new_tokens),
    }

  start = {
    "t": jnp.zeros((), jnp.int32),
    "token": tail[:, 0],
    "cache": cache,
    "new": jnp.zeros((batch, max_new_tokens), jnp.int32),
    "count": jnp.zeros((batch,), jnp.int32),
    "done": jnp.zeros((batch,), bool),
  }
  final = jax.lax.while_loop(running, advance, start)
  last = jnp.take_along_axis(final["new"], jnp.maximum(final["count"] - 1, 0)[:, None], 1)  # [B, 1]
  return jnp.where(jnp.arange(max_new_tokens) < final["count"][:, None], final["new"], last)


def bucket_length(positions: int) -> int:
  """A padded length for `positions`: a power of two, at least SMALLEST_BUCKET, so that attention's
  KV cache, the one cache whose shape depends on it, takes a few shapes."""
  return max(SMALLEST_BUCKET, 1 << (positions - 1).bit_length())


def generate(
  model: WaveFieldLM,
  prompt: jax.Array,
  max_new_tokens: int,
  *,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
  rng: jax.Array,
  stop_tokens: tuple[int, ...] = (),
  prompt_lengths: jax.Array | None = None,
) -> jax.Array:
  """Continues each prompt by `max_new_tokens` sampled tokens, in one compiled loop.

  The decode loop compiles once per model structure, batch shape and sampling settings, the prefill once per
  power-of-two chunk size: a second call with the same shapes traces nothing, and every token is drawn inside
  one `lax.while_loop`.

  Args:
    model: the language model.
    prompt: [B, P] int tokens, P >= 1.
    max_new_tokens: N, tokens to add.
    temperature: see `sample_logits`.
    top_k: see `sample_logits`.
    top_p: see `sample_logits`.
    rng: PRNG key; the same key gives the same tokens.
    stop_tokens: a row that draws one of these stops; its remaining positions repeat that token.
    prompt_lengths: [B] tokens of each row's prompt (1..P), for right-padded prompts of several lengths;
      all P when not given.

  Returns:
    [B, P + N] int32: the prompt followed by the sampled tokens (each row's new tokens at P..P + N - 1).
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be [B, P] tokens with P >= 1; got shape {prompt.shape}")
  _check_sampling(max_new_tokens, temperature, top_k, top_p, model.config.vocab_size)
  if max_new_tokens == 0:
    return prompt
  batch, length = prompt.shape
  lengths = jnp.full((batch,), length, jnp.int32) if prompt_lengths is None else jnp.asarray(prompt_lengths)
  if lengths.shape != (batch,) or not bool(jnp.all((lengths >= 1) & (lengths <= length))):
    raise ValueError(f"prompt_lengths must be [B] = [{batch}] values in 1..{length}; got {prompt_lengths}")
  graphdef, state = nnx.split(model)
  structure = Structure(graphdef)
  cache = model.init_cache(batch, bucket_length(length + max_new_tokens))
  prefilled = 0
  while (remaining := int(lengths.min()) - 1 - prefilled) > 0:  # leaves each row one token for the loop
    size = min(LARGEST_PREFILL, 1 << (remaining.bit_length() - 1))
    cache = _prefill_chunk(structure, state, cache, prompt[:, prefilled : prefilled + size])
    prefilled += size
  # The rest of each prompt, in a buffer of a bucketed width so that prompt lengths share a program.
  rest = prompt[:, prefilled:]
  width = bucket_length(rest.shape[1])
  tail = jnp.pad(rest, ((0, 0), (0, width - rest.shape[1])))
  new = _decode(
    structure,
    state,
    cache,
    tail,
    lengths - prefilled,
    rng,
    max_new_tokens=max_new_tokens,
    temperature=float(temperature),
    top_k=top_k,
    top_p=top_p,
    stop_tokens=tuple(int(t) for t in stop_tokens),
  )
  return jnp.concatenate([prompt, new], axis=1)


def sample_text(
  workdir: str | Path,
  prompt: str,
  max_new_tokens: int = 300,
  *,
  temperature: float = 0.8,
  top_k: int | None = None,
  top_p: float | None = None,
  seed: int = 0,
  num_samples: int = 1,
  step: int | None = None,
) -> tuple[list[str], int]:
  """Samples `num_samples` continuations of `prompt` from the checkpoint of `workdir`.

  Returns:
    The texts (each the prompt followed by its continuation) and the checkpoint step they came from.
  """
  from wavefield_jax.checkpointing import load_trained  # orbax loads when a workdir is read

  if not prompt:
    raise ValueError("prompt must hold at least one character; a newline ('\\n') starts a fresh line")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1; got {num_samples}")
  graphdef, params, config, step = load_trained(workdir, step)
  model = nnx.merge(graphdef, params)
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  prompt_tokens = np.tile(tokenizer.encode(prompt.encode("utf-8"))[None], (num_samples, 1))  # [N, P]
  tokens = generate(
    model,
    prompt_tokens,
    max_new_tokens,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    rng=jax.random.key(seed),
  )
  return [tokenizer.decode(np.asarray(row)) for row in tokens], step
