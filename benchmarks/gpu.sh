#!/usr/bin/env bash
# The GPU set, for a lent GPU that has JAX, flax, optax, orbax and chex but no network: scaling (both
# wave convolution methods, the matmul chunk sweep, cuDNN attention beside XLA), training throughput
# (the wave model by FFT and by "auto") and decoding, within about 8 minutes, each step under a time cap.
# Results go to $OUT (or benchmarks/results/gpu) and name the card.
#
#   bash benchmarks/gpu.sh             # on the GPU machine
#   bash benchmarks/gpu.sh --dry-run   # tiny sizes on this CPU: the same steps, in about a minute
#
# The benchmarks import nothing of the data pipeline (grain, TFDS, array_record). The one package they
# need that the GPU image lacks, ml_collections, is installed from the wheel `make` downloads into
# benchmarks/wheels (carry that folder to the GPU machine), without the network and only if missing.
set -uo pipefail
cd "$(dirname "$0")/.."
dry_run=false
[[ "${1:-}" == "--dry-run" ]] && dry_run=true
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"

if ! python -c "import ml_collections" 2>/dev/null; then
  wheel=$(ls benchmarks/wheels/ml_collections-*.whl 2>/dev/null | head -n 1)
  if [[ -z "$wheel" ]]; then
    echo "ml_collections is not installed and benchmarks/wheels holds no wheel of it:" \
      "run make on a machine with the package index, then carry benchmarks/wheels" >&2
    exit 2
  fi
  deps=$(mktemp -d)
  python -m pip install --quiet --no-index --no-deps --target "$deps" "$wheel" || exit 2
  export PYTHONPATH="$deps${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed $(basename "$wheel") into $deps (no index)"
fi

export WAVEFIELD_RESULTS="$out"
if $dry_run; then
  export JAX_PLATFORMS=cpu
  # The chunk sweep runs the rows' own measurement at other chunk sizes: left out of the dry run.
  scaling=(--lengths 256 --sweep-lengths '' --repeats 1 --attention-max 256 --timeout 60)
  throughput=(--lengths 128 --repeats 1 --models wave_fft,hybrid) # FFT, "auto" and attention: every path
  decode=(--contexts 256 --repeats 2)
  limits=(240 180 120) # a CPU shared with other work compiles slowly; the GPU run keeps its own caps
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/card.csv" || true
  export XLA_PYTHON_CLIENT_PREALLOCATE=false # peak memory per case is then meaningful
  scaling=(--repeats 5 --attention-max 65536 --timeout 60 --gpu)
  throughput=(--lengths 256,1024,4096,8192 --repeats 5)
  decode=(--contexts 1024,8192,65536 --repeats 50)
  limits=(300 120 90)
fi

failed=()
step() { # step SECONDS MODULE ARGS...: one benchmark under a time cap; a failure is reported, not fatal
  local limit=$1 module=$2
  shift 2
  echo "== $module (at most $limit s)"
  timeout "$limit" python -m "$module" "$@" | tail -n 40
  local status=${PIPESTATUS[0]}
  ((status == 0)) || failed+=("$module (exit $status$( ((status == 124)) && echo ", over $limit s"))")
}
step "${limits[0]}" benchmarks.scaling "${scaling[@]}"
step "${limits[1]}" benchmarks.throughput "${throughput[@]}"
step "${limits[2]}" benchmarks.decode "${decode[@]}"
ls -la "$out"
if ((${#failed[@]})); then
  printf 'failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
