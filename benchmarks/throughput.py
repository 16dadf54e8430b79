"""Training throughput: tokens per second of one full jitted train step (forward, backward, AdamW).

The default model size (D=128, 4 layers) as wave (its wave convolution by one FFT over the window,
and by "auto"), Transformer, hybrid, and the selective and retention forms (4 layers of each), at several
window lengths with the same 8192 tokens per step (batch = 8192 / L), float32, each case in a fresh process.

  python -m benchmarks.throughput [--lengths 256,1024,4096,8192] [--repeats 5]
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks import common
from wavefield_jax import plots

MODULE = "benchmarks.throughput"
# model name -> (mixers, wave method)
MODELS = {
  "wave_fft": (("wave",) * 4, "fft"),
  "wave": (("wave",) * 4, "auto"),
  "transformer": (("attention",) * 4, "auto"),
  "hybrid": (("wave", "wave", "attention", "wave"), "auto"),
  "selective": (("selective",) * 4, "auto"),
  "retention": (("retention",) * 4, "auto"),
}
TOKENS_PER_STEP = 8192


def measure(case: dict) -> dict:
  import jax
  import jax.numpy as jnp

  from wavefield_jax.config import base_config
  from wavefield_jax.train_lib import init_state, make_train_step

  config = base_config()
  config.model.mixers, config.model.wave_method = MODELS[case["model"]]
  config.model.max_len = case["length"]
  graphdef, state, optimizer = init_state(config, seed=0)
  step = make_train_step(graphdef, optimizer, skip_nonfinite=False)
  batch_size = max(1, TOKENS_PER_STEP // case["length"])
  batch = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch_size, case["length"] + 1)), jnp.int32)
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = step(holder["state"], batch)
    jax.block_until_ready(metrics["loss"])

  timing = common.time_call(one_step, repeats=case["repeats"], warmup=2)
  return {"tokens_per_s": batch_size * case["length"] / timing["median_s"], "step_ms": 1e3 * timing["median_s"]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lengths", default="256,1024,4096,8192")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--models", default=",".join(MODELS), help=f"any of {','.join(MODELS)}")
  args = parser.parse_args()
  lengths = [int(v) for v in args.lengths.split(",")]
  rows = []
  for length in lengths:
    for model in args.models.split(","):
      result = common.run_case(MODULE, {"model": model, "length": length, "repeats": args.repeats})
      print(result, flush=True)
      rows.append(result)
  write(rows, lengths)


def write(rows: list[dict], lengths: list[int]) -> None:
  plt = plots.pyplot()

  by = {(r["model"], r["length"]): r for r in rows}
  nan = float("nan")
  table_rows = []
  for length in lengths:
    rate = {m: by.get((m, length), {}).get("tokens_per_s", nan) for m in MODELS}
    table_rows.append(
      [
        f"{length:,}",
        *(f"{rate[m]:,.0f}" for m in MODELS),
        f"{rate['wave'] / rate['wave_fft']:.2f}x",
        f"{rate['wave'] / rate['transformer']:.2f}x",
        f"{rate['hybrid'] / rate['transformer']:.2f}x",
        f"{rate['wave'] / rate['selective']:.2f}x",
        f"{rate['wave'] / rate['retention']:.2f}x",
      ]
    )
  header = ["L", *(f"{m} tok/s" for m in MODELS), "wave / wave_fft", "wave / transformer", "hybrid / transformer"]
  header += ["selective step / wave step", "retention step / wave step"]
  table = common.markdown_table(table_rows, header)
  table += f"\n\nDefault size (D=128, 4 layers), {TOKENS_PER_STEP} tokens per step, float32, median step time."
  common.write_results("throughput", {"machine": common.machine(), "rows": rows}, table)
  fig, ax = plt.subplots(figsize=(6.5, 4))
  colours = ("tab:cyan", "tab:blue", "tab:red", "tab:purple", "tab:green", "tab:orange")
  for model, colour in zip(MODELS, colours, strict=True):
    xs = [n for n in lengths if "tokens_per_s" in by.get((model, n), {})]
    ax.plot(xs, [by[(model, n)]["tokens_per_s"] for n in xs], "o-", color=colour, label=model)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("window length L")
  ax.set_ylabel("training tokens / s")
  ax.grid(alpha=0.3)
  ax.legend()
  plots.save(fig, common.RESULTS / "throughput.png", dpi=120)


if __name__ == "__main__":
  if not common.case_main(measure):
    main()
