// Warp-level dot products against bf16 weight rows, shared by the decode GEMV (linear_bf16.cu) and
// the routed-expert kernels (moe_experts.cu). Memory-bound: each lane streams 16-byte loads of eight
// bf16 weights through the non-coherent cache; activations are fp32 and rounded to
// bf16 before the product (ops::linear's contract for bf16 weights).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "backends/cuda/warp_reduce.cuh"

namespace dsv::ops::cuda {

__device__ __forceinline__ float round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
// A bf16 bit pattern as the fp32 value it stands for (exact).
__device__ __forceinline__ float widen_bf16(uint32_t bits) { return __uint_as_float(bits << 16); }

// The eight bf16 values of a 16-byte word, widened (exact).
__device__ __forceinline__ void unpack8(const uint4& r, float (&w)[8]) {
  const uint32_t words[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    w[2 * i] = widen_bf16(words[i]);
    w[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

// Whether every x row and weight row starts on a 16-byte boundary (vector loads allowed).
template <int M, int R, typename W>
__device__ __forceinline__ bool rows_aligned16(const float* const (&x)[M], const W* const (&w)[R]) {
  bool aligned = true;
#pragma unroll
  for (int m = 0; m < M; ++m) aligned = aligned && reinterpret_cast<uintptr_t>(x[m]) % 16 == 0;
#pragma unroll
  for (int r = 0; r < R; ++r) aligned = aligned && reinterpret_cast<uintptr_t>(w[r]) % 16 == 0;
  return aligned;
}

// acc[m][r] += sum_k bf16(x[m][k]) * w[r][k] for M rows of x (each its own pointer), R weight rows,
// k < K, accumulated per lane (the caller reduces over the warp). Each x chunk is loaded and rounded
// once for all R weight rows, so activation reads stay well below the weight stream. Vectorized
// (16-byte loads, 2R in flight per lane) when all rows are 16-byte aligned and K % 8 == 0.
template <int M, int R>
__device__ __forceinline__ void lane_dots_bf16_rows(const float* const (&x)[M], const uint16_t* const (&w)[R],
                                                    int64_t K, float (&acc)[M][R]) {
  const int lane = threadIdx.x % 32;
  if (K % 8 != 0 || !rows_aligned16(x, w)) {
    for (int64_t k = lane; k < K; k += 32) {
      float xk[M];
#pragma unroll
      for (int m = 0; m < M; ++m) xk[m] = round_bf16(x[m][k]);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float wk = widen_bf16(w[r][k]);
#pragma unroll
        for (int m = 0; m < M; ++m) acc[m][r] += xk[m] * wk;
      }
    }
    return;
  }
  const int64_t chunks = K / 8;
  auto consume = [&](const uint4 (&raw)[R], int64_t c) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float4* xm = reinterpret_cast<const float4*>(x[m]) + 2 * c;
      const float4 a = __ldg(xm), b = __ldg(xm + 1);
      const float xv[8] = {round_bf16(a.x), round_bf16(a.y), round_bf16(a.z), round_bf16(a.w),
                           round_bf16(b.x), round_bf16(b.y), round_bf16(b.z), round_bf16(b.w)};
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float wf[8];
        unpack8(raw[r], wf);
        float sum = acc[m][r];
#pragma unroll
        for (int i = 0; i < 8; ++i) sum += xv[i] * wf[i];
        acc[m][r] = sum;
      }
    }
  };
  int64_t c = lane;
  for (; c + 32 < chunks; c += 64) {  // two chunks per lane per trip: 2R loads in flight
    uint4 r0[R], r1[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      r0[r] = __ldg(reinterpret_cast<const uint4*>(w[r]) + c);
      r1[r] = __ldg(reinterpret_cast<const uint4*>(w[r]) + c + 32);
    }
    consume(r0, c);
    consume(r1, c + 32);
  }
  if (c < chunks) {
    uint4 r0[R];
#pragma unroll
    for (int r = 0; r < R; ++r) r0[r] = __ldg(reinterpret_cast<const uint4*>(w[r]) + c);
    consume(r0, c);
  }
}

// The same for M rows of x at a fixed stride xs (x[m * xs + k]).
template <int M, int R>
__device__ __forceinline__ void lane_dots_bf16(const float* __restrict__ x, int64_t xs, const uint16_t* const (&w)[R],
                                               int64_t K, float (&acc)[M][R]) {
  const float* rows[M];
#pragma unroll
  for (int m = 0; m < M; ++m) rows[m] = x + m * xs;
  lane_dots_bf16_rows<M, R>(rows, w, K, acc);
}

}  // namespace dsv::ops::cuda
