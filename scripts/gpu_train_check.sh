#!/usr/bin/env bash
# GPU host batch for training (issue 5): build the cuda preset, run every GPU test (training ops and
# the CUDA trainer against the PyTorch fixtures included), then `dsv bench train` on bench-16b-l4.
# Logs go to $OUT.
set -uo pipefail
source .deps/env.sh
OUT=${OUT:-/tmp/dsv_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
cmake --preset cuda -DDSV_BLAS=OFF > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build/cuda -j16 --target dsv dsv_gpu_tests > "$OUT/build.log" 2>&1 || { grep -E "error" -A5 "$OUT/build.log" | head -60; exit 1; }
echo "== GPU tests"
timeout 240 ./build/cuda/tests/dsv_gpu_tests 2>&1 > "$OUT/gpu_tests.log"
grep -E "FAILED|PASSED|cuda train|Failure" "$OUT/gpu_tests.log" | head -40
CONFIG=.deps/shared/configs/bench/${BENCH_CONFIG:-bench-16b-l4}.json
echo "== dsv bench train $CONFIG ${BENCH_ARGS:-}"
timeout ${BENCH_TIMEOUT:-200} ./build/cuda/tools/dsv/dsv bench train --config "$CONFIG" ${BENCH_ARGS:---batch 2 --seq 4096 --steps 3 --warmup 1} \
  --json "$OUT/bench_train.json" 2>&1 | tee "$OUT/bench_train.log" | tail -12
