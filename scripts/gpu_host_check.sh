#!/usr/bin/env bash
# One batch for the GPU host (see DEVELOPERS.md / ../shared/gpu-host): build the cuda preset, run the
# GPU op tests, regenerate the transformers fixtures with the host's torch + transformers 5.17 and
# check the engine against them, then a random-config sweep. Logs go to $OUT.
set -uo pipefail
source .deps/env.sh
OUT=${OUT:-/tmp/dsv_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
cmake --preset cuda -DDSV_BLAS=OFF > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build/cuda -j16 > "$OUT/build.log" 2>&1 || { grep -E "error" -A5 "$OUT/build.log" | head -60; exit 1; }
echo "== GPU op tests"; ./build/cuda/tests/dsv_gpu_tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
echo "== fixtures with $(python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
python3 tests/ref/make_fixtures.py --out tests/fixtures/models > "$OUT/fixtures.log" 2>&1 || tail -30 "$OUT/fixtures.log"
grep -E "^v[23]_" "$OUT/fixtures.log"
tar czf "$OUT/fixtures.tgz" tests/fixtures/models
./build/cuda/tests/dsv_tests --gtest_filter='Fixture*' 2>&1 | tail -3
echo "== random configurations"
python3 tests/ref/check_random_configs.py --dsv build/cuda/tools/dsv/dsv --count ${RANDOM_CONFIGS:-30} --seed 11 > "$OUT/random_configs.log" 2>&1
grep -E "FAIL|worst" "$OUT/random_configs.log"
