"""Print text sampled from a trained run: the prompt, then what the model writes after it.

  python -m wavefield_jax.sample --workdir runs/default --prompt "ROMEO:" [--max_new_tokens 300]
      [--temperature 0.8] [--top_k 40] [--top_p 0.95] [--seed 0] [--num_samples 1] [--step N]

The prompt goes through the model in one parallel prefill; each new token is one step of the
recurrence (O(1) per token for wave layers, whatever the length of the prompt).
"""

from __future__ import annotations


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
    from wavefield_jax.generate import sample_text  # JAX loads after the flags parse: --help answers at once

    options = dict(temperature=f.temperature, top_k=f.top_k, top_p=f.top_p, seed=f.seed)
    texts, step = sample_text(f.workdir, f.prompt, f.max_new_tokens, **options, num_samples=f.num_samples, step=f.step)
    for i, text in enumerate(texts):
      print(f"--- sample {i + 1} of {len(texts)} (step {step}, seed {f.seed}) ---")
      print(text)

  cli.run(body, doc=__doc__)


if __name__ == "__main__":
  main()
