"""Sampling with the decode cache: a parallel prefill over the prompt, then one jitted step per token."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

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


def generate(
  model: WaveFieldLM,
  prompt: jax.Array,
  max_new_tokens: int,
  *,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
  rng: jax.Array,
) -> jax.Array:
  """Continues each prompt by `max_new_tokens` sampled tokens.

  Args:
    model: the language model.
    prompt: [B, P] int tokens, P >= 1.
    max_new_tokens: N, tokens to add.
    temperature: see `sample_logits`.
    top_k: see `sample_logits`.
    top_p: see `sample_logits`.
    rng: PRNG key; the same key gives the same tokens.

  Returns:
    [B, P + N] int32: the prompt followed by the sampled tokens.
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be [B, P] tokens with P >= 1; got shape {prompt.shape}")
  _check_sampling(max_new_tokens, temperature, top_k, top_p, model.config.vocab_size)
  if max_new_tokens == 0:
    return prompt
  prefill, step = make_decoder(model)
  cache = model.init_cache(prompt.shape[0], prompt.shape[1] + max_new_tokens)
  logits, cache = prefill(prompt, cache)
  logits = logits[:, -1]
  sample = jax.jit(functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p))
  tokens = []
  for rng_t in jax.random.split(rng, max_new_tokens):
    token = sample(logits, rng_t)
    tokens.append(token)
    if len(tokens) < max_new_tokens:
      logits, cache = step(token, cache)
  return jnp.concatenate([prompt, jnp.stack(tokens, axis=1)], axis=1)
