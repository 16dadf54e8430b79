"""Mixer scaling: time and memory of the wave mixer, causal softmax attention and the bare FFT floor.

At each L (B=1, D=512, 8 heads, float32), in a fresh process per case, the median of several runs of
  wave_conv     the wave convolution alone (wf.wave_conv on [B, L, H, K]);
  fft_floor     rfft + irfft of the same [B, H, K, L] data at the same FFT size: what any FFT conv pays;
  wave_mixer    the whole WaveFieldMixer (projections, short conv, wave conv, gate);
  attention     the whole Attention mixer of the same width (XLA causal softmax attention);
  attention_cudnn  the same with cuDNN's fused attention in bf16 (--gpu only);
forward, and forward + backward (the gradient of the summed output with respect to the input).
Peak memory is the process's peak RSS above its RSS before the first call.

  python -m benchmarks.scaling [--lengths 1024,...,65536] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from benchmarks import common

MODULE = "benchmarks.scaling"
KINDS = ("wave_conv", "fft_floor", "wave_mixer", "attention")


def rss_mib() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def measure(case: dict) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  import wavefield_jax as wf
  from wavefield_jax import layers, physics

  length, kind, pass_ = case["length"], case["kind"], case["pass"]
  dim, heads = 512, 8
  rng = np.random.default_rng(0)
  if kind in ("wave_conv", "fft_floor"):
    x = jnp.asarray(rng.standard_normal((1, length, heads, dim // heads)), jnp.float32)
    speed, damping, phase = (
      jnp.asarray(a, jnp.float32) for a in layers.initial_constants(heads, length, jax.random.key(0))
    )
    if kind == "wave_conv":
      fn = lambda x: wf.wave_conv(x, speed, damping, phase)  # noqa: E731
    else:
      n = physics.fft_length(length)
      x = jnp.transpose(x, (0, 2, 3, 1))  # [B, H, K, L]: the layout the FFT wants, for free
      fn = lambda x: jnp.fft.irfft(jnp.fft.rfft(x, n=n, axis=-1), n=n, axis=-1)[..., :length]  # noqa: E731
  else:
    x = jnp.asarray(rng.standard_normal((1, length, dim)), jnp.float32)
    if kind == "wave_mixer":
      module = layers.WaveFieldMixer(dim, heads, max_len=length, rngs=nnx.Rngs(0))
    elif kind == "attention":
      module = layers.Attention(dim, heads, implementation="xla", rngs=nnx.Rngs(0))
    else:  # cuDNN's fused attention takes bf16 / fp16 only
      module = layers.Attention(dim, heads, implementation="cudnn", dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
      x = x.astype(jnp.bfloat16)
    graphdef, state = nnx.split(module)
    fn = lambda x: nnx.merge(graphdef, state)(x)  # noqa: E731
  if pass_ == "forward":
    run = jax.jit(fn)
  else:
    run = jax.jit(jax.grad(lambda x: jnp.sum(fn(x))))
  before = rss_mib()
  timing = common.time_call(lambda: run(x).block_until_ready(), repeats=case["repeats"], warmup=1)
  return {"median_ms": 1e3 * timing["median_s"], "peak_mib": common.peak_rss_mib() - before}


def slope(xs, ys) -> float:
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768,65536")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--attention-max", type=int, default=16384, help="longest L to try attention at")
  parser.add_argument("--timeout", type=float, default=600)
  parser.add_argument("--gpu", action="store_true", help="also time cuDNN attention")
  args = parser.parse_args()
  lengths = [int(v) for v in args.lengths.split(",")]
  kinds = KINDS + ("attention_cudnn",) if args.gpu else KINDS
  rows = []
  for pass_ in ("forward", "forward+backward"):
    for kind in kinds:
      failed = False
      for length in lengths:
        if failed or (kind.startswith("attention") and length > args.attention_max):
          rows.append({"kind": kind, "pass": pass_, "length": length, "error": "skipped (longer than what ran)"})
          continue
        case = {"kind": kind, "pass": pass_, "length": length, "repeats": args.repeats}
        result = common.run_case(MODULE, case, timeout=args.timeout)
        print(result, flush=True)
        rows.append(result)
        failed = "error" in result
  write(rows, lengths, kinds)


def write(rows: list[dict], lengths: list[int], kinds: tuple[str, ...] = KINDS) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  by = {(r["kind"], r["pass"], r["length"]): r for r in rows}
  sections, summary = [], {}
  for pass_ in ("forward", "forward+backward"):
    table_rows = []
    for length in lengths:
      get = lambda kind, key, p=pass_, n=length: by[(kind, p, n)].get(key, math.nan)  # noqa: E731
      cells = [f"{length:,}"]
      for kind in kinds:
        ms, mib = get(kind, "median_ms"), get(kind, "peak_mib")
        cells.append("—" if math.isnan(ms) else f"{ms:,.1f} ms / {mib:,.0f} MiB")
      cells.append(f"{get('wave_conv', 'median_ms') / get('fft_floor', 'median_ms'):.2f}")
      ratio = get("attention", "median_ms") / get("wave_mixer", "median_ms")
      cells.append("—" if math.isnan(ratio) else f"{ratio:,.1f}x")
      memory = get("attention", "peak_mib") / max(get("wave_mixer", "peak_mib"), 1.0)
      cells.append("—" if math.isnan(memory) else f"{memory:,.1f}x")
      table_rows.append(cells)
    header = ["L", *kinds, "wave_conv / floor", "attention / wave_mixer time", "attention / wave_mixer memory"]
    slopes = {}
    for kind in kinds:
      xs = [n for n in lengths if "median_ms" in by[(kind, pass_, n)]]
      if len(xs) >= 2:
        slopes[kind] = slope(xs, [by[(kind, pass_, n)]["median_ms"] for n in xs])
    summary[pass_] = slopes
    slope_text = ", ".join(f"{k} {v:.2f}" for k, v in slopes.items())
    sections.append(f"### {pass_}\n\n" + common.markdown_table(header, table_rows) + f"\n\nlog-log slope: {slope_text}")
  table = "\n\n".join(sections) + "\n\nB=1, D=512, 8 heads, float32; median of runs, each case in a fresh process."
  common.write_results("scaling", {"machine": common.machine(), "rows": rows, "slopes": summary}, table)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  colours = {"wave_conv": "tab:blue", "fft_floor": "tab:gray", "wave_mixer": "tab:green", "attention": "tab:red"}
  colours["attention_cudnn"] = "tab:orange"
  for ax, pass_ in zip(axes, ("forward", "forward+backward"), strict=True):
    for kind in kinds:
      xs = [n for n in lengths if "median_ms" in by[(kind, pass_, n)]]
      ax.plot(xs, [by[(kind, pass_, n)]["median_ms"] for n in xs], "o-", color=colours[kind], label=kind)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("ms (median)")
    ax.set_title(pass_)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
  fig.tight_layout()
  fig.savefig(common.RESULTS / "scaling.png", dpi=120)


if __name__ == "__main__":
  if not common.case_main(measure):
    main()
