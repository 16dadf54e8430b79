"""The pod plan: the 125M train step compiled ahead of time on 8 simulated devices, per mesh and length.

Every case builds configs/wikitext103_125m.py (D=768, 12 layers, bf16 compute, GPT-2 vocabulary) with
one sequence per data shard, shards the train state over `data` (fsdp) and compiles the step with
`jax.jit(...).lower(...).compile()` for a (data, seq) mesh of 8 host devices: nothing runs, so 64k and
128k contexts compile on a laptop. From the compiled program (one device's share of the SPMD program):

  memory   memory_analysis(): arguments (the state and batch), outputs, temporaries, aliased (donated)
  cost     cost_analysis(): flops and bytes accessed per device per step

and from those a roofline step time on three accelerators, t = max(flops / peak, bytes / bandwidth)
(the spec-sheet peaks in ACCELERATORS; a compute-bound kernel at its dense bf16 peak, a memory-bound
one at full HBM bandwidth: a lower bound that real kernels reach within a small factor). The memory
column is checked against one real step on this CPU (`--check`, the smallest case).

Models (the kinds of configs/wikitext103_125m.py): wave (the matmul form, the default), wave_fft,
transformer (XLA attention: its temporaries hold the L x L scores that cuDNN's flash attention avoids on
a GPU), hybrid (every fourth layer global attention) and hybrid_local (every other layer sliding-window
attention of 512 positions).

  python -m benchmarks.pod_plan [--lengths 1024,...,131072] [--models wave,...] [--meshes 8x1,4x2,2x4,1x8]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
from pathlib import Path

from benchmarks import common
from wavefield_jax import plots

MODULE = "benchmarks.pod_plan"
REPO = Path(__file__).resolve().parent.parent
DEVICES = 8
# Model name: (the config's kind, model overrides).
# "+remat": every block rematerialised (model.remat="full") and the head and loss over tiles of LOSS_TILE
# positions (model.loss_chunk_size): what a long context needs.
LOSS_TILE = 2048
LONG_CONTEXT = {"remat": "full", "loss_chunk_size": LOSS_TILE}
MODELS = {
  "wave": ("wave", {"wave_method": "matmul"}),
  "wave_fft": ("wave", {"wave_method": "fft"}),
  "transformer": ("transformer", {}),
  "hybrid": ("hybrid", {}),
  "hybrid_local": ("hybrid_local", {}),
  "wave+remat": ("wave", {"wave_method": "matmul"} | LONG_CONTEXT),
  "transformer+remat": ("transformer", LONG_CONTEXT),
  "hybrid+remat": ("hybrid", LONG_CONTEXT),
  "hybrid_local+remat": ("hybrid_local", LONG_CONTEXT),
}
# Dense bf16 peak FLOP/s, HBM bytes/s and memory of one device, from the vendors' spec sheets:
# H100 SXM and H200 (NVIDIA: 989 TFLOP/s dense bf16; 3.35 and 4.8 TB/s; 80 and 141 GB) and
# TPU v5e (Google Cloud: 197 TFLOP/s bf16, 819 GB/s, 16 GB).
ACCELERATORS = {
  "H100": {"flops": 989e12, "bandwidth": 3.35e12, "memory": 80e9},
  "H200": {"flops": 989e12, "bandwidth": 4.8e12, "memory": 141e9},
  "TPU v5e": {"flops": 197e12, "bandwidth": 819e9, "memory": 16e9},
}
DEVICE_MEMORY = {"16 GB": 16e9, "80 GB": 80e9, "141 GB": 141e9}


def load_pod_config(kind: str):
  """configs/wikitext103_125m.py:<kind>, as `--config=configs/wikitext103_125m.py:<kind>` loads it."""
  spec = importlib.util.spec_from_file_location("pod_config", REPO / "configs" / "wikitext103_125m.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(kind)


def pod_config(model: str, data: int, seq: int, length: int):
  """The pod config for one case: `model`'s mixers, one window of `length` per data shard."""
  kind, overrides = MODELS[model]
  config = load_pod_config(kind)
  config.model.update(overrides)
  config.model.max_len = length
  config.data.seq_len = length
  config.train.batch_size = data
  config.mesh.update({"seq": seq, "fsdp": True})
  return config


def compile_step(config, data: int, seq: int):
  """The sharded train step compiled for abstract inputs; returns it with the mesh and state shardings."""
  import jax
  import jax.numpy as jnp

  from wavefield_jax import sharding
  from wavefield_jax.train_lib import init_state, make_train_step

  mesh = sharding.make_mesh(data=data, seq=seq)
  built = {}

  def state_only():  # traced once for shapes: the graph definition and optimizer are kept on the side
    built["graphdef"], state, built["optimizer"] = init_state(config, config.seed, mesh)
    return state

  shapes = jax.eval_shape(state_only)
  state_sharding = sharding.state_shardings(mesh, shapes, fsdp=config.mesh.fsdp)
  shardings = (state_sharding, sharding.batch_sharding(mesh))
  step = make_train_step(built["graphdef"], built["optimizer"], False, shardings)
  batch = jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len + 1), jnp.int32)
  return step.lower(shapes, batch, None, None).compile(), mesh, state_sharding


def measure(case: dict) -> dict:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  config = pod_config(case["model"], case["data"], case["seq"], case["length"])
  start = time.perf_counter()
  compiled, mesh, state_sharding = compile_step(config, case["data"], case["seq"])
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  result = {
    "compile_s": seconds,
    "argument_bytes": memory.argument_size_in_bytes,
    "output_bytes": memory.output_size_in_bytes,
    "temp_bytes": memory.temp_size_in_bytes,
    "alias_bytes": memory.alias_size_in_bytes,
    "flops": cost.get("flops", 0.0),
    "bytes_accessed": cost.get("bytes accessed", 0.0),
  }
  result["device_bytes"] = per_device_bytes(result)
  if case.get("check"):
    result["measured_bytes"] = run_one_step(compiled, config, mesh, state_sharding)
  return result


def per_device_bytes(row: dict) -> int:
  """What one device holds at the step's peak: its state and batch, the temporaries and the outputs that
  do not reuse a donated input's buffer."""
  return row["argument_bytes"] + row["temp_bytes"] + row["output_bytes"] - row["alias_bytes"]


def _rss_bytes(field: str) -> int:
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1]) * 1024
  raise RuntimeError(f"/proc/self/status has no {field}")


def run_one_step(compiled, config, mesh, state_sharding) -> int:
  """The process's resident memory at one real step's peak above what it held before the state existed,
  divided over the devices (all 8 live in this process)."""
  import jax
  import numpy as np

  from wavefield_jax import sharding
  from wavefield_jax.train_lib import init_state

  before = _rss_bytes("VmRSS")
  state = jax.jit(lambda: init_state(config, config.seed, mesh)[1], out_shardings=state_sharding)()
  batch = np.random.default_rng(0).integers(
    0, config.model.vocab_size, (config.train.batch_size, config.data.seq_len + 1)
  )
  batch = jax.device_put(batch.astype(np.int32), sharding.batch_sharding(mesh))
  jax.block_until_ready((state, batch))
  Path("/proc/self/clear_refs").write_text("5")  # the peak counter restarts here: state creation left out
  state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  if not bool(metrics["finite"]):
    raise RuntimeError("the checked step's loss is not finite")
  return (_rss_bytes("VmHWM") - before) // DEVICES


def roofline(row: dict) -> dict:
  """Predicted step time and global tokens/s on each accelerator from one device's flops and bytes, and
  which of the two bounds the step."""
  tokens = row["data"] * row["length"]
  out = {}
  for name, spec in ACCELERATORS.items():
    compute, memory = row["flops"] / spec["flops"], row["bytes_accessed"] / spec["bandwidth"]
    seconds = max(compute, memory)
    out[name] = {
      "step_s": seconds,
      "tokens_per_s": tokens / seconds,
      "bound": "memory" if memory > compute else "compute",
      "flops_only_tokens_per_s": tokens / compute,  # a kernel that never waits on memory (flash attention)
    }
  return out


def longest_fit(rows: list[dict], capacity: float) -> str:
  """The longest context whose per-device bytes fit `capacity`, on the log-log line through the two
  compiled lengths around it (beyond the longest: through the two longest), marked ~."""
  points = sorted((r["length"], r["device_bytes"]) for r in rows if "error" not in r)
  if not points:
    return "-"  # not compiled on this mesh
  if points[0][1] > capacity:
    return f"<{points[0][0] // 1024}k"
  if len(points) == 1:
    return f">={points[0][0] // 1024}k"
  pairs = list(zip(points, points[1:], strict=False))
  (l0, b0), (l1, b1) = next(((a, b) for a, b in pairs if b[1] > capacity), pairs[-1])
  slope = math.log(b1 / b0) / math.log(l1 / l0)
  if slope <= 0:
    return f">{points[-1][0] // 1024}k"
  return f"~{l0 * (capacity / b0) ** (1 / slope) / 1024:.0f}k"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lengths", default="1024,4096,16384,65536,131072")
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--meshes", default="8x1,4x2,2x4,1x8")
  parser.add_argument("--timeout", type=float, default=900, help="seconds per compile")
  parser.add_argument("--no-check", action="store_true", help="skip the real step that checks the memory column")
  parser.add_argument("--tables-only", action="store_true", help="rewrite the tables and plot from pod_plan.json")
  args = parser.parse_args()
  lengths = [int(v) for v in args.lengths.split(",")]
  meshes = [tuple(int(v) for v in m.split("x")) for m in args.meshes.split(",")]
  if args.tables_only:
    saved = json.loads((common.RESULTS / "pod_plan.json").read_text())
    models = list(dict.fromkeys(r["model"] for r in saved["rows"]))
    write(saved["rows"], saved["check"], sorted({r["length"] for r in saved["rows"]}), meshes, models)
    return
  # Cases of other models, meshes or lengths are kept from the last results: runs add to one table.
  path = common.RESULTS / "pod_plan.json"
  saved = json.loads(path.read_text()) if path.exists() else {"rows": [], "check": None}
  rows = []
  for model in args.models.split(","):
    for data, seq in meshes:
      failed = False
      for length in lengths:
        case = {"model": model, "data": data, "seq": seq, "length": length}
        if failed:
          rows.append(case | {"error": "skipped (a shorter context failed)"})
          continue
        result = common.run_case(MODULE, case, timeout=args.timeout)
        print(json.dumps(result), flush=True)
        rows.append(result)
        failed = "error" in result
  measured = {case_key(r) for r in rows}
  rows = [r for r in saved["rows"] if case_key(r) not in measured] + rows
  check = saved["check"]
  if not args.no_check:
    smallest = {"model": "wave", "data": DEVICES, "seq": 1, "length": min(lengths), "check": True}
    check = common.run_case(MODULE, smallest, timeout=args.timeout)
    print(json.dumps(check), flush=True)
  every_model = list(dict.fromkeys(r["model"] for r in rows))
  every_mesh = sorted({(r["data"], r["seq"]) for r in rows}, reverse=True)
  write(rows, check, sorted({r["length"] for r in rows}), every_mesh, every_model)


def case_key(row: dict) -> tuple:
  return row["model"], row["data"], row["seq"], row["length"]


def write(rows: list[dict], check: dict | None, lengths: list[int], meshes: list, models: list[str]) -> None:
  plt = plots.pyplot()

  def gib(value: float) -> str:
    return f"{value / 2**30:.2f}"

  for r in rows:
    if "error" not in r:
      r["roofline"] = roofline(r)

  def cells(r: dict) -> list[str]:
    mesh = f"{r['data']}x{r['seq']}"
    if "error" in r:
      return [r["model"], mesh, f"{r['length']:,}", r["error"][:60], "", "", "", *([""] * (len(ACCELERATORS) + 1))]
    speed = r["roofline"]
    return [
      r["model"],
      mesh,
      f"{r['length']:,}",
      gib(r["argument_bytes"]),
      gib(r["temp_bytes"]),
      gib(r["device_bytes"]),
      f"{r['flops'] / 1e12:.2f}",
      *(f"{speed[name]['tokens_per_s']:,.0f} {speed[name]['bound'][0]}" for name in ACCELERATORS),
      f"{speed['H100']['flops_only_tokens_per_s']:,.0f}",
    ]

  header = ["model", "data x seq", "L", "state+batch GiB", "temporaries GiB", "total GiB", "TFLOP / step"]
  header += [f"{name} tok/s" for name in ACCELERATORS] + ["H100 tok/s, flops only"]
  summary_length = max(r["length"] for r in rows if "error" not in r and r["length"] <= 65536)
  table = common.markdown_table([cells(r) for r in rows if r["length"] == summary_length], header)
  everything = common.markdown_table([cells(r) for r in rows], header)

  fits = []
  for model in models:
    cells_by_mesh = []
    for data, seq in meshes:
      group = [r for r in rows if r["model"] == model and (r["data"], r["seq"]) == (data, seq)]
      cells_by_mesh.append(" / ".join(longest_fit(group, cap) for cap in DEVICE_MEMORY.values()))
    fits.append([model, *cells_by_mesh])
  table += f"\n\nLongest context that fits a device of {' / '.join(DEVICE_MEMORY)} (per-device total, log-log "
  table += "interpolated between compiled lengths, ~):\n\n"
  table += common.markdown_table(fits, ["model", *(f"{d}x{s}" for d, s in meshes)])

  falls = []
  for length in (n for n in lengths if n >= 65536):
    for model in models:
      by_seq = {
        r["seq"]: r["temp_bytes"] for r in rows if (r["model"], r["length"]) == (model, length) and "error" not in r
      }
      if 1 in by_seq and DEVICES in by_seq:
        falls.append(f"{model} {by_seq[1] / by_seq[DEVICES]:.1f}x at {length // 1024}k")
  notes = [
    f"Per device, per step, one sequence of L tokens per data shard; state sharded over data (fsdp). "
    f"Per-device temporaries from seq = 1 to seq = {DEVICES} fall: " + ", ".join(falls) + ".",
    "Roofline tokens/s: global tokens per step / max(flops / peak, bytes / bandwidth) with "
    + "; ".join(
      f"{n} {s['flops'] / 1e12:.0f} TFLOP/s, {s['bandwidth'] / 1e12:.2f} TB/s" for n, s in ACCELERATORS.items()
    )
    + " (dense bf16 peaks; flops and bytes from XLA's CPU compile); m: memory-bound, c: compute-bound. Flops only: "
    "the step at peak arithmetic with no wait on memory, the bound for fused kernels such as flash attention.",
  ]
  if any(model.endswith("+remat") for model in models):
    notes.append(
      "+remat: model.remat='full' (each residual branch recomputed in the backward pass) and the head and loss over "
      f"tiles of {LOSS_TILE} positions. XLA's cost analysis leaves out the flops inside the conditional that holds "
      "each branch's recomputed backward pass, so their TFLOP and roofline columns omit the recompute (about a "
      "third of a step's flops): read them as an upper bound on speed."
    )
  if check and "error" not in check:
    ratio = check["measured_bytes"] / check["device_bytes"]
    notes.append(
      f"Check: one real step of {check['model']} at L = {check['length']:,} on mesh {check['data']}x{check['seq']} "
      f"held {gib(check['measured_bytes'])} GiB per device at its peak against {gib(check['device_bytes'])} GiB "
      f"planned ({ratio:.2f}x)."
    )
  table += "\n\n" + "\n".join(notes) + "\n\nEvery case:\n\n" + everything
  payload = {
    "machine": common.machine(),
    "accelerators": ACCELERATORS,
    "rows": rows,
    "check": check,
  }
  common.write_results("pod_plan", payload, table)

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for colour, model in enumerate(models):
    for style, (data, seq) in zip(("o-", "s--", "^-.", "d:"), meshes, strict=False):
      group = sorted(
        (r for r in rows if r["model"] == model and (r["data"], r["seq"]) == (data, seq) and "error" not in r),
        key=lambda r: r["length"],
      )
      if not group:
        continue
      xs = [r["length"] for r in group]
      label = f"{model} {data}x{seq}"
      axes[0].plot(xs, [r["device_bytes"] / 2**30 for r in group], style, color=f"C{colour}", label=label)
      axes[1].plot(xs, [r["roofline"]["H100"]["tokens_per_s"] for r in group], style, color=f"C{colour}")
  for capacity, name in zip(DEVICE_MEMORY.values(), DEVICE_MEMORY, strict=True):
    axes[0].axhline(capacity / 2**30, color="grey", lw=0.8, ls=":")
    axes[0].text(min(lengths), capacity / 2**30 * 1.1, name, fontsize=7, color="grey")
  axes[0].set_ylabel("per-device bytes at the step's peak (GiB)")
  axes[1].set_ylabel("H100 roofline tokens/s (global)")
  for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length L")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=6, ncol=2)
  fig.suptitle("125M train step compiled for 8 devices (data x seq)")
  plots.save(fig, common.RESULTS / "pod_plan.png", dpi=120)


if __name__ == "__main__":
  if not common.case_main(measure):
    main()
