#!/usr/bin/env bash
# The GPU set, prepared for a lent GPU with JAX, flax, optax, orbax and chex already installed:
# scaling (both wave convolution methods, the matmul chunk sweep, cuDNN attention beside XLA), training
# throughput (the wave model by FFT and by "auto") and decoding, within about 8 minutes.
# Results go to $OUT (or benchmarks/results/gpu) and name the card.
#   bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
pip install --quiet --no-deps -e . 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/card.csv" || true
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # peak memory per case is then meaningful
export WAVEFIELD_RESULTS="$out"
timeout 300 python -m benchmarks.scaling --repeats 5 --attention-max 65536 --timeout 60 --gpu | tail -n 40 || true
timeout 120 python -m benchmarks.throughput --lengths 256,1024,4096,8192 --repeats 5 | tail -n 10 || true
timeout 90 python -m benchmarks.decode --contexts 1024,8192,65536 --repeats 50 | tail -n 8 || true
ls -la "$out"
