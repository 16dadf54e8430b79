"""Mixer scaling: the wave convolution by each method beside its floors and attention, and the matmul chunk sweep.

At each L (B=1, D=512, 8 heads of K=64, float32), in a fresh process per case, the median of several runs of
  fft           wf.wave_conv(method="fft") on [B, L, H, K];
  matmul        wf.wave_conv(method="matmul"), chunks of 32 positions (the default);
  fft_floor     rfft + irfft of the same [B, H, K, L] data at the same FFT size: what any FFT conv pays;
  memory_floor  u * 2: one read and one write of u, what any method pays on any hardware (forward only; at
                L <= 8k u fits in this machine's caches and the "floor" is a cache pass);
  wave_mixer    the whole WaveFieldMixer (projections, short conv, wave conv by "auto", gate);
  attention     the whole Attention mixer of the same width (XLA causal softmax attention);
  attention_cudnn  the same with cuDNN's fused attention in bf16 (--gpu only);
forward, and forward + backward (the gradient of the summed output with respect to the input and, for the
convolutions, the three constants). XLA's cost analysis of each compiled program gives flops and bytes per
element of u, and the achieved GFLOP/s. Peak memory is the process's peak RSS above its RSS before the first
call (the device's peak on a GPU). The sweep times the matmul method at chunk sizes 16 to 256.

  python -m benchmarks.scaling [--lengths 1024,...,65536] [--repeats 5] [--sweep-lengths 4096,32768]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from benchmarks import common
from wavefield_jax import plots

MODULE = "benchmarks.scaling"
KINDS = ("fft", "matmul", "fft_floor", "memory_floor", "wave_mixer", "attention")
CONVOLUTIONS = ("fft", "matmul")
CHUNK_SIZES = (16, 32, 64, 128, 256)
PASSES = ("forward", "forward+backward")
DIM, HEADS = 512, 8


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
  from wavefield_jax import attention, head_constants, layers, physics

  length, kind, pass_ = case["length"], case["kind"], case["pass"]
  rng = np.random.default_rng(0)
  constants = ()
  if kind in CONVOLUTIONS + ("fft_floor", "memory_floor"):
    x = jnp.asarray(rng.standard_normal((1, length, HEADS, DIM // HEADS)), jnp.float32)
    if kind in CONVOLUTIONS:
      constants = tuple(jnp.asarray(a) for a in head_constants.initial_constants(HEADS, length, jax.random.key(0)))
      chunk = case.get("chunk_size")
      fn = lambda x, *c: wf.wave_conv(x, *c, method=kind, chunk_size=chunk)  # noqa: E731
    elif kind == "fft_floor":
      n = physics.fft_length(length)
      x = jnp.transpose(x, (0, 2, 3, 1))  # [B, H, K, L]: the layout the FFT wants, for free
      fn = lambda x: jnp.fft.irfft(jnp.fft.rfft(x, n=n, axis=-1), n=n, axis=-1)[..., :length]  # noqa: E731
    else:
      fn = lambda x: x * 2  # noqa: E731
  else:
    x = jnp.asarray(rng.standard_normal((1, length, DIM)), jnp.float32)
    if kind == "wave_mixer":
      module = layers.WaveFieldMixer(DIM, HEADS, max_len=length, rngs=nnx.Rngs(0))
    elif kind == "attention":
      module = attention.Attention(DIM, HEADS, implementation="xla", rngs=nnx.Rngs(0))
    else:  # cuDNN's fused attention takes bf16 / fp16 only
      module = attention.Attention(DIM, HEADS, implementation="cudnn", dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
      x = x.astype(jnp.bfloat16)
    graphdef, state = nnx.split(module)
    fn = lambda x: nnx.merge(graphdef, state)(x)  # noqa: E731
  if pass_ == "forward":
    run = jax.jit(fn)
  else:  # the gradient in u and, for the convolutions, in the three constants: what training needs
    run = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(1 + len(constants)))))
  args = (x, *constants)
  cost = run.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost  # older JAX returns one dict per device
  before = rss_mib()
  timing = common.time_call(lambda: jax.block_until_ready(run(*args)), repeats=case["repeats"], warmup=1)
  elements = x.size
  return {
    "median_ms": 1e3 * timing["median_s"],
    "peak_mib": common.peak_rss_mib() - before,
    "flops_per_element": float(cost.get("flops", math.nan)) / elements,
    "bytes_per_element": float(cost.get("bytes accessed", math.nan)) / elements,
    "gflops_per_s": float(cost.get("flops", math.nan)) / timing["median_s"] / 1e9,
  }


def slope(xs, ys) -> float:
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768,65536")
  parser.add_argument("--sweep-lengths", default="4096,32768", help="lengths of the chunk-size sweep ('' skips it)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--attention-max", type=int, default=16384, help="longest L to try attention at")
  parser.add_argument("--timeout", type=float, default=600)
  parser.add_argument("--gpu", action="store_true", help="also time cuDNN attention")
  args = parser.parse_args()
  lengths = [int(v) for v in args.lengths.split(",")]
  kinds = KINDS + ("attention_cudnn",) if args.gpu else KINDS
  rows = []
  for pass_ in PASSES:
    for kind in kinds:
      failed = False
      for length in lengths:
        if failed or (kind.startswith("attention") and length > args.attention_max):
          rows.append({"kind": kind, "pass": pass_, "length": length, "error": "skipped (longer than what ran)"})
          continue
        if kind == "memory_floor" and pass_ != "forward":  # the gradient of u * 2 is a constant XLA folds away
          rows.append({"kind": kind, "pass": pass_, "length": length, "error": "a floor of the forward pass only"})
          continue
        case = {"kind": kind, "pass": pass_, "length": length, "repeats": args.repeats}
        result = common.run_case(MODULE, case, timeout=args.timeout)
        print(result, flush=True)
        rows.append(result)
        failed = "error" in result
  sweep_lengths = [int(v) for v in args.sweep_lengths.split(",") if v]
  sweep = []
  for length in sweep_lengths:
    for pass_ in PASSES:
      for chunk_size in CHUNK_SIZES:
        case = {"kind": "matmul", "pass": pass_, "length": length, "chunk_size": chunk_size, "repeats": args.repeats}
        result = common.run_case(MODULE, case, timeout=args.timeout)
        print(result, flush=True)
        sweep.append(result)
  write(rows, lengths, kinds, sweep, sweep_lengths)


def _cell(row: dict, key: str, fmt: str) -> str:
  return "—" if key not in row else format(row[key], fmt)


def _ratio(a: float, b: float, fmt: str = ".2f") -> str:
  return "—" if math.isnan(a) or math.isnan(b) else format(a / b, fmt)


def write(
  rows: list[dict], lengths: list[int], kinds: tuple[str, ...], sweep: list[dict], sweep_lengths: list[int]
) -> None:
  plt = plots.pyplot()

  by = {(r["kind"], r["pass"], r["length"]): r for r in rows}
  ms = lambda kind, p, n: by[(kind, p, n)].get("median_ms", math.nan)  # noqa: E731
  sections, summary = [], {}
  for pass_ in PASSES:
    table_rows = []
    for length in lengths:
      cells = [f"{length:,}"]
      for kind in kinds:
        row = by[(kind, pass_, length)]
        cells.append("—" if "median_ms" not in row else f"{row['median_ms']:,.1f} ms / {row['peak_mib']:,.0f} MiB")
      cells += [
        _ratio(ms("matmul", pass_, length), ms("fft", pass_, length)),
        _ratio(ms("fft", pass_, length), ms("fft_floor", pass_, length)),
        _ratio(ms("matmul", pass_, length), ms("memory_floor", "forward", length), ".1f"),
        _ratio(ms("attention", pass_, length), ms("wave_mixer", pass_, length), ",.1f"),
      ]
      table_rows.append(cells)
    header = ["L", *kinds, "matmul / fft", "fft / fft_floor", "matmul / forward memory_floor", "attention / wave_mixer"]
    slopes = {}
    for kind in kinds:
      xs = [n for n in lengths if "median_ms" in by[(kind, pass_, n)]]
      if len(xs) >= 2:
        slopes[kind] = slope(xs, [ms(kind, pass_, n) for n in xs])
    summary[pass_] = slopes
    slope_text = ", ".join(f"{k} {v:.2f}" for k, v in slopes.items())
    sections.append(f"### {pass_}\n\n" + common.markdown_table(table_rows, header) + f"\n\nlog-log slope: {slope_text}")

  cost_rows = []
  for pass_ in PASSES:
    for kind in ("fft", "matmul", "fft_floor", "memory_floor"):
      for length in (lengths[len(lengths) // 2], lengths[-1]):
        row = by[(kind, pass_, length)]
        cost_rows.append(
          [
            pass_,
            kind,
            f"{length:,}",
            _cell(row, "flops_per_element", ",.0f"),
            _cell(row, "bytes_per_element", ",.0f"),
            _cell(row, "gflops_per_s", ",.1f"),
          ]
        )
  sections.append(
    "### flops and bytes per element of u (XLA cost analysis), achieved GFLOP/s\n\n"
    + common.markdown_table(cost_rows, ["pass", "method", "L", "flops / element", "bytes / element", "GFLOP/s"])
  )

  if sweep:
    swept = {(r["pass"], r["length"], r["chunk_size"]): r for r in sweep}
    sweep_rows = []
    for chunk_size in CHUNK_SIZES:
      cells = [str(chunk_size)]
      for length in sweep_lengths:
        for pass_ in PASSES:
          cells.append(_cell(swept[(pass_, length, chunk_size)], "median_ms", ",.1f"))
      sweep_rows.append(cells)
    header = ["T"] + [f"{n:,} {p} (ms)" for n in sweep_lengths for p in PASSES]
    sections.append("### matmul chunk size T\n\n" + common.markdown_table(sweep_rows, header))

  table = "\n\n".join(sections) + (
    "\n\nB=1, D=512, 8 heads of K=64, float32; median of runs, each case in a fresh process; "
    "time / peak memory above the process's start."
  )
  payload = {"machine": common.machine(), "rows": rows, "slopes": summary, "chunk_sweep": sweep}
  common.write_results("scaling", payload, table)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  colours = {
    "fft": "tab:blue",
    "matmul": "tab:cyan",
    "fft_floor": "tab:gray",
    "memory_floor": "black",
    "wave_mixer": "tab:green",
    "attention": "tab:red",
    "attention_cudnn": "tab:orange",
  }
  for ax, pass_ in zip(axes, PASSES, strict=True):
    for kind in kinds:
      xs = [n for n in lengths if "median_ms" in by[(kind, pass_, n)]]
      style = "o--" if kind.endswith("floor") else "o-"
      ax.plot(xs, [ms(kind, pass_, n) for n in xs], style, color=colours[kind], label=kind)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("ms (median)")
    ax.set_title(pass_)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  plots.save(fig, common.RESULTS / "scaling.png", dpi=120)


if __name__ == "__main__":
  if not common.case_main(measure):
    main()
