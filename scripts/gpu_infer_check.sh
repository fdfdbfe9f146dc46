#!/usr/bin/env bash
# Issue 4 on the GPU host: build, the GPU op/model tests, then dsv bench infer on the bench configs
# (bf16 and fp32 weights; batch 1 replayed as a CUDA graph and eager, batch 64; prompt 512 and 4096)
# with a decode op profile. Logs go to $OUT.
set -uo pipefail
source .deps/env.sh
OUT=${OUT:-/tmp/dsv_out}; mkdir -p "$OUT"
B=.deps/shared/configs/bench
cmake --preset cuda -DDSV_BLAS=OFF > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build/cuda -j16 --target dsv dsv_gpu_tests > "$OUT/build.log" 2>&1 || { grep -E "error" -A5 "$OUT/build.log" | head -60; exit 1; }
echo "== GPU tests"
./build/cuda/tests/dsv_gpu_tests --gtest_filter="${GPU_FILTER:-*}" > "$OUT/gpu_tests.log" 2>&1
grep -E "FAILED|PASSED|bf16 .*error|Failure|Expected|Which is|actual" "$OUT/gpu_tests.log" | head -60
DSV=./build/cuda/tools/dsv/dsv
for cfg in bench-16b-l4 bench-671b-l2; do
  for w in ${WEIGHTS:-bf16 fp32}; do
    echo "== $cfg $w prompt 512"
    $DSV bench infer --config $B/$cfg.json --weights $w --prompt-len 512 --gen-len 128 --json $OUT/$cfg-$w-512.json 2>&1 | grep -E "prefill|decode|kv cache|error"
  done
  echo "== $cfg bf16 prompt 512, eager decode steps"
  $DSV bench infer --config $B/$cfg.json --eager --prompt-len 512 --gen-len 128 --json $OUT/$cfg-bf16-512-eager.json 2>&1 | grep -E "^decode|error"
  echo "== $cfg bf16 prompt 512, batch 64"
  $DSV bench infer --config $B/$cfg.json --batch 64 --prompt-len 512 --gen-len 64 --json $OUT/$cfg-bf16-512-b64.json 2>&1 | grep -E "prefill|decode|error"
  echo "== $cfg bf16 prompt 4096 tf32"
  $DSV bench infer --config $B/$cfg.json --weights bf16 --tf32 --prompt-len 4096 --gen-len 32 --json $OUT/$cfg-bf16-4096.json 2>&1 | grep -E "prefill|decode|error"
done
echo "== profile 16b-l4 bf16 prefill and decode"
DSV_OP_PROFILE=1 $DSV bench infer --config $B/bench-16b-l4.json --weights bf16 --prompt-len 512 --gen-len 32 2>&1 | grep -v "^config\|^kv\|^decode bandwidth" | head -50
