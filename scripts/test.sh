#!/usr/bin/env bash
# Builds and runs every test that needs no GPU: the CPU build, the CUDA build (compiled when nvcc is
# there; its GPU tests run only on the GPU host), and the loader/tokenizer tests under
# AddressSanitizer + UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
jobs=$(nproc)
echo "== cpu build"
cmake --preset cpu > /dev/null
cmake --build --preset cpu -j"$jobs"
echo "== cpu tests"
ctest --preset cpu -j"$jobs"
if command -v nvcc > /dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "== cuda build (compile only here; scripts/gpu_host_check.sh runs the GPU tests on the GPU host)"
  cmake --preset cuda > /dev/null
  cmake --build --preset cuda -j"$jobs"
else
  echo "== cuda build skipped: no nvcc on this machine"
fi
echo "== asan build + loader/tokenizer tests under AddressSanitizer"
cmake --preset asan > /dev/null
cmake --build --preset asan -j"$jobs" --target dsv_tests
ctest --preset asan
