// Routed experts for few tokens (decode): GEMV-shaped kernels reading each selected expert's weights
// once per (token, slot) pair through device pointer tables, so the routing never leaves the GPU.
// Memory-bound: each warp streams one weight row with 16-byte loads when rows are 4-aligned (fp32)
// or 8-aligned (bf16 tables, through lane_dots_bf16).
#include "backends/cuda/bf16_dot.cuh"
#include "backends/cuda/cuda_ops.h"

namespace dsv::ops::cuda {
namespace {

constexpr int kWarps = 8;

// dot(a, b) over n by one warp; vectorized when both are 16-byte aligned and n % 4 == 0.
__device__ float warp_dot(const float* a, const float* b, int64_t n) {
  const int lane = threadIdx.x % 32;
  float acc = 0.0f;
  if (n % 4 == 0 && (reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b)) % 16 == 0) {
    const float4* a4 = reinterpret_cast<const float4*>(a);
    const float4* b4 = reinterpret_cast<const float4*>(b);
    for (int64_t i = lane; i < n / 4; i += 32) {
      const float4 x = a4[i], y = __ldg(b4 + i);
      acc += x.x * y.x + x.y * y.y + x.z * y.z + x.w * y.w;
    }
  } else {
    for (int64_t i = lane; i < n; i += 32) acc += a[i] * b[i];
  }
  return warp_sum(acc);
}

// h[pair, f] = silu(x . gate[e][f]) * (x . up[e][f]); one warp per (pair, f).
__global__ void experts_up_kernel(MoeExpertsParams p) {
  const int64_t pair = blockIdx.y;
  const int64_t f = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (f >= p.F) return;
  const int32_t e = p.indices[pair];
  const float* x = p.x + (pair / p.K) * p.D;
  const float g = warp_dot(x, p.gate[e] + f * p.D, p.D);
  const float u = warp_dot(x, p.up[e] + f * p.D, p.D);
  if (threadIdx.x % 32 == 0) p.scratch[pair * p.F + f] = (g / (1.0f + __expf(-g))) * u;
}

// y[pair, d] = h[pair] . down[e][d]; one warp per (pair, d).
__global__ void experts_down_kernel(MoeExpertsParams p) {
  const int64_t pair = blockIdx.y;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (d >= p.D) return;
  const int32_t e = p.indices[pair];
  const float* h = p.scratch + pair * p.F;
  const float v = warp_dot(h, p.down[e] + d * p.F, p.F);
  if (threadIdx.x % 32 == 0) p.scratch[p.T * p.K * p.F + pair * p.D + d] = v;
}

// The same two products with bf16 weights: x and h rounded to bf16 before the products.
__global__ void experts_up_bf16_kernel(MoeExpertsParams p) {
  const int64_t pair = blockIdx.y;
  const int64_t f = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (f >= p.F) return;
  const int32_t e = p.indices[pair];
  const float* x = p.x + (pair / p.K) * p.D;
  const uint16_t* rows[2] = {p.gate_bf16[e] + f * p.D, p.up_bf16[e] + f * p.D};
  float acc[1][2] = {};
  lane_dots_bf16<1, 2>(x, p.D, rows, p.D, acc);
  const float gs = warp_sum(acc[0][0]), us = warp_sum(acc[0][1]);
  if (threadIdx.x % 32 == 0) p.scratch[pair * p.F + f] = (gs / (1.0f + __expf(-gs))) * us;
}

__global__ void experts_down_bf16_kernel(MoeExpertsParams p) {
  const int64_t pair = blockIdx.y;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (d >= p.D) return;
  const int32_t e = p.indices[pair];
  const uint16_t* rows[1] = {p.down_bf16[e] + d * p.F};
  float acc[1][1] = {};
  lane_dots_bf16<1, 1>(p.scratch + pair * p.F, p.F, rows, p.F, acc);
  const float v = warp_sum(acc[0][0]);
  if (threadIdx.x % 32 == 0) p.scratch[p.T * p.K * p.F + pair * p.D + d] = v;
}

// out[t, d] = sum_k weights[t, k] * y[t*K + k, d], k ascending (deterministic, no atomics).
__global__ void experts_combine_kernel(MoeExpertsParams p) {
  const float* y = p.scratch + p.T * p.K * p.F;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.T * p.D;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / p.D, d = i % p.D;
    float acc = 0.0f;
    for (int64_t k = 0; k < p.K; ++k) acc += p.weights[t * p.K + k] * y[(t * p.K + k) * p.D + d];
    p.out[i] = acc;
  }
}

}  // namespace

cudaError_t moe_experts(const MoeExpertsParams& p, cudaStream_t s) {
  const unsigned pairs = static_cast<unsigned>(p.T * p.K);
  const dim3 up_grid(static_cast<unsigned>((p.F + kWarps - 1) / kWarps), pairs);
  const dim3 down_grid(static_cast<unsigned>((p.D + kWarps - 1) / kWarps), pairs);
  if (p.gate_bf16) {
    experts_up_bf16_kernel<<<up_grid, kWarps * 32, 0, s>>>(p);
    experts_down_bf16_kernel<<<down_grid, kWarps * 32, 0, s>>>(p);
  } else {
    experts_up_kernel<<<up_grid, kWarps * 32, 0, s>>>(p);
    experts_down_kernel<<<down_grid, kWarps * 32, 0, s>>>(p);
  }
  const int64_t n = p.T * p.D, blocks = (n + 255) / 256;
  experts_combine_kernel<<<static_cast<unsigned>(blocks < 4096 ? blocks : 4096), 256, 0, s>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
