"""Print text sampled from a trained run: the prompt, then what the model writes after it.

  python -m wavefield_jax.sample --workdir runs/default --prompt "ROMEO:" [--max_new_tokens 300]
      [--temperature 0.8] [--top_k 40] [--top_p 0.95] [--seed 0] [--num_samples 1] [--step N]

The prompt goes through the model in one parallel prefill; each new token is one step of the
recurrence (O(1) per token for wave layers, whatever the length of the prompt).
"""

from __future__ import annotations

from pathlib import Path


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
  import jax
  import numpy as np
  from flax import nnx

  from wavefield_jax import tokenizers
  from wavefield_jax.checkpointing import load_trained
  from wavefield_jax.generate import generate

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


def main() -> None:
  """The `wavefield-sample` command."""
  from absl import flags

  from wavefield_jax import cli

  cli.define_workdir_flags("load")
  flags.DEFINE_string("prompt", "\n", "Text to continue.")
  flags.DEFINE_integer("max_new_tokens", 300, "Tokens to sample after the prompt.")
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 is greedy.")
  flags.DEFINE_integer("top_k", None, "Sample among the k most likely tokens only.")
  flags.DEFINE_float("top_p", None, "Sample from the smallest set of tokens whose probability reaches p.")
  flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives the same text.")
  flags.DEFINE_integer("num_samples", 1, "Independent samples of the same prompt.")

  def body(f) -> None:
    options = dict(temperature=f.temperature, top_k=f.top_k, top_p=f.top_p, seed=f.seed)
    texts, step = sample_text(f.workdir, f.prompt, f.max_new_tokens, **options, num_samples=f.num_samples, step=f.step)
    for i, text in enumerate(texts):
      print(f"--- sample {i + 1} of {len(texts)} (step {step}, seed {f.seed}) ---")
      print(text)

  cli.run(body, doc=__doc__)


if __name__ == "__main__":
  main()
