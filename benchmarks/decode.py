"""Per-token decode latency and peak memory against context length: the wave model, the same-size
Transformer, and the bounded-memory hybrid (wave layers with sliding-window attention, window 64).

Each (model, context) runs in a fresh process. The cache is filled directly with random contents of
the right size (the Transformer's KV cache holds `context` positions; the local layers' cache holds the
last 64 whatever the context; the wave model's state is [B, H, K] complex per layer; every index set to
`context`), then one jitted decode step is timed: what every generated token costs once the context is
that long.

With --generation it times whole generations instead (prompt of 64 tokens, 256 new, batch 1, greedy):
`generate`, one compiled loop for every token, against the same decode step called once per token from
Python, for each model; written to decode_generation.{json,md}.

  python -m benchmarks.decode [--contexts 1024,8192,65536] [--repeats 30] [--generation]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from wavefield_jax import plots

MODULE = "benchmarks.decode"
MODELS = {
  "wave": ("wave",) * 4,
  "transformer": ("attention",) * 4,
  "hybrid_local64": ("wave", "local", "wave", "local"),
}
COLOURS = {"wave": "tab:blue", "transformer": "tab:red", "hybrid_local64": "tab:green"}


GENERATION_PROMPT = 64
GENERATION_TOKENS = 256


def measure_generation(case: dict) -> dict:
  """Tokens per second of a whole generation: the compiled loop and the per-token Python loop."""
  from flax import nnx

  from wavefield_jax.config import model_config
  from wavefield_jax.generate import generate, make_decoder
  from wavefield_jax.model import WaveFieldLM

  model = WaveFieldLM(model_config(mixers=MODELS[case["model"]], window=64), rngs=nnx.Rngs(0))
  prompt = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, GENERATION_PROMPT)), jnp.int32)
  prefill, step = make_decoder(model)

  def python_loop():
    cache = model.init_cache(1, GENERATION_PROMPT + GENERATION_TOKENS)
    logits, cache = prefill(prompt, cache)
    token = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
    for _ in range(GENERATION_TOKENS - 1):
      logits, cache = step(token, cache)
      token = jnp.argmax(logits, -1).astype(jnp.int32)
    token.block_until_ready()

  def compiled():
    generate(model, prompt, GENERATION_TOKENS, temperature=0.0, rng=jax.random.key(0)).block_until_ready()

  looped = common.time_call(python_loop, repeats=case["repeats"])
  whole = common.time_call(compiled, repeats=case["repeats"])
  return {
    "python_loop_tokens_per_s": GENERATION_TOKENS / looped["median_s"],
    "generate_tokens_per_s": GENERATION_TOKENS / whole["median_s"],
  }


def measure(case: dict) -> dict:
  if case.get("kind") == "generation":
    return measure_generation(case)
  from flax import nnx

  from wavefield_jax.config import model_config
  from wavefield_jax.generate import make_decoder
  from wavefield_jax.model import WaveFieldLM

  config = model_config(mixers=MODELS[case["model"]], window=64)
  model = WaveFieldLM(config, rngs=nnx.Rngs(0))
  context = case["context"]
  cache = model.init_cache(1, context + 1)
  rng = np.random.default_rng(0)

  def fill(leaf):
    if leaf.ndim == 0:  # an attention cache's index: the context is full
      return jnp.asarray(context, leaf.dtype)
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    return jnp.asarray(noise + 1j * noise if jnp.iscomplexobj(leaf) else noise, leaf.dtype)

  cache = jax.tree.map(fill, cache)
  cache_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(cache))
  _, step = make_decoder(model)
  token = jnp.asarray([7], jnp.int32)
  state = {"cache": cache}

  def one_token():
    logits, state["cache"] = step(token, state["cache"])
    logits.block_until_ready()
    # The step donates its cache: put back a cache of the same context for the next call.
    state["cache"] = jax.tree.map(lambda a: a.at[()].set(context) if a.ndim == 0 else a, state["cache"])

  timing = common.time_call(one_token, repeats=case["repeats"], warmup=3)
  return {
    "latency_ms": 1e3 * timing["median_s"],
    "cache_mib": cache_bytes / 2**20,
    "peak_rss_mib": common.peak_rss_mib(),
    "dim": config.dim,
    "layers": config.num_layers,
    "heads": config.num_heads,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--contexts", default="1024,8192,65536")
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--generation", action="store_true", help="time whole generations instead")
  args = parser.parse_args()
  if args.generation:
    rows = [common.run_case(MODULE, {"kind": "generation", "model": m, "repeats": 5}) for m in MODELS]
    write_generation(rows)
    return
  contexts = [int(c) for c in args.contexts.split(",")]
  rows = []
  for context in contexts:
    for model in MODELS:
      result = common.run_case(MODULE, {"model": model, "context": context, "repeats": args.repeats})
      print(result, flush=True)
      rows.append(result)
  write(rows, contexts)


def write_generation(rows: list[dict]) -> None:
  table = common.markdown_table(
    [
      [
        r["model"],
        f"{r['python_loop_tokens_per_s']:.0f}",
        f"{r['generate_tokens_per_s']:.0f}",
        f"{r['generate_tokens_per_s'] / r['python_loop_tokens_per_s']:.2f}x",
      ]
      for r in rows
    ],
    ["model", "per-token Python loop tokens/s", "generate tokens/s", "generate / loop"],
  )
  table += (
    f"\n\nWhole generations: a prompt of {GENERATION_PROMPT} tokens and {GENERATION_TOKENS} new ones, batch 1,"
    " greedy, default model size, median of 5 after 2 warm-up calls (compilation excluded). The loop calls the"
    " jitted decode step once per token; `generate` draws every token inside one compiled `lax.while_loop`."
  )
  common.write_results("decode_generation", {"machine": common.machine(), "rows": rows}, table)


def write(rows: list[dict], contexts: list[int]) -> None:
  plt = plots.pyplot()

  by = {(r["model"], r["context"]): r for r in rows}
  get = lambda model, context, key: by[(model, context)].get(key, float("nan"))  # noqa: E731
  table_rows = []
  for context in contexts:
    cells = [f"{context:,}"]
    cells += [f"{get(m, context, 'latency_ms'):.2f}" for m in MODELS]
    cells += [f"{get('transformer', context, 'latency_ms') / get('wave', context, 'latency_ms'):.1f}x"]
    cells += [f"{get(m, context, 'peak_rss_mib'):.0f}" for m in MODELS]
    cells += [f"{get(m, context, 'cache_mib'):.3f}" for m in MODELS]
    table_rows.append(cells)
  header = ["context"] + [f"{m} ms/token" for m in MODELS] + ["transformer / wave"]
  header += [f"{m} peak RSS MiB" for m in MODELS] + [f"{m} cache MiB" for m in MODELS]
  table = common.markdown_table(table_rows, header)
  flat = {m: get(m, contexts[-1], "latency_ms") / get(m, contexts[0], "latency_ms") for m in MODELS}
  table += (
    f"\n\nLatency at {contexts[-1]:,} / at {contexts[0]:,}: "
    + ", ".join(f"{m} {v:.2f}x" for m, v in flat.items())
    + f". Default model size (D={rows[0]['dim']}, {rows[0]['layers']} layers, {rows[0]['heads']} heads; the hybrid "
    "alternates wave and local layers, window 64), batch 1, float32, median of the timed steps; caches filled "
    "directly (not by prefill)."
  )
  common.write_results("decode", {"machine": common.machine(), "rows": rows}, table)
  fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
  for model, colour in COLOURS.items():
    xs = [c for c in contexts if "latency_ms" in by[(model, c)]]
    ax_time.plot(xs, [by[(model, c)]["latency_ms"] for c in xs], "o-", color=colour, label=model)
    ax_mem.plot(xs, [by[(model, c)]["peak_rss_mib"] for c in xs], "o-", color=colour, label=model)
  for ax, label in ((ax_time, "ms per token"), (ax_mem, "process peak RSS (MiB)")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle("Decoding one token with a full context (CPU)")
  plots.save(fig, common.RESULTS / "decode.png", dpi=120)


if __name__ == "__main__":
  if not common.case_main(measure):
    main()
