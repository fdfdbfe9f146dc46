// MLA's new latent cache rows finished and stored in one kernel (twin of cpu::store_latent_rows):
// the latent's RMSNorm, the shared key's rope and the store, which were three small kernels on the
// decode step's critical path. One block per row; the norm's arithmetic is rmsnorm.cu's (same thread
// layout and block_sum), the rope's rotary.cuh's as in rope.cu, so the bits match those ops in turn.
#include <cuda_bf16.h>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/rotary.cuh"
#include "backends/cuda/warp_reduce.cuh"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 256, kGroup = 8;  // as rmsnorm.cu: C <= kGroup * kThreads stays in registers

__device__ __forceinline__ void store_value(const LatentRowsParams& p, int64_t at, float v) {
  if (p.y) p.y[at] = v;
  else p.y_bf16[at] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

// Any C and R (a longer latent takes a second pass over x, as rmsnorm.cu's long rows). In place is
// safe: a thread reads every value it writes before writing it, and the norm's and the rope's spans
// are disjoint.
__global__ void latent_rows_kernel(LatentRowsParams p) {
  allow_dependents();
  const int C = static_cast<int>(p.C), half = static_cast<int>(p.R / 2);
  const bool in_registers = C <= kGroup * kThreads;
  float w[kGroup];
  if (in_registers) {
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {  // norm weights are constant: loaded before the wait
      const int i = threadIdx.x + u * kThreads;
      w[u] = i < C ? p.weight[i] : 0.0f;
    }
  }
  grid_dependency_wait();
  const int64_t r = blockIdx.x;
  const float* x = p.x + r * p.x_stride;
  const int64_t dest = (p.rows ? static_cast<int64_t>(p.rows[r]) : p.first + r) * p.y_stride;
  // The first rope pair of this thread, loaded with the latent values.
  const bool interleaved = p.layout == RopeLayout::Interleaved;
  const int i0 = threadIdx.x;
  float x0 = 0.0f, x1 = 0.0f, c = 0.0f, s = 0.0f;
  if (i0 < half) {
    x0 = x[C + (interleaved ? 2 * i0 : i0)], x1 = x[C + (interleaved ? 2 * i0 + 1 : i0 + half)];
    c = p.cos[r * half + i0], s = p.sin[r * half + i0];
  }
  float sum = 0.0f, v[kGroup];
  for (int base = threadIdx.x; base < C; base += kGroup * kThreads) {
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int k = base + u * kThreads;
      v[u] = k < C ? x[k] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kGroup; ++u) sum += v[u] * v[u];
  }
  __shared__ float scratch[kThreads / 32 + 1];
  const float inv = rsqrtf(block_sum<kThreads>(sum, scratch) / static_cast<float>(C) + p.eps);
  if (in_registers) {
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int k = threadIdx.x + u * kThreads;
      if (k < C) store_value(p, dest + k, w[u] * (v[u] * inv));
    }
  } else {
    for (int k = threadIdx.x; k < C; k += kThreads) store_value(p, dest + k, p.weight[k] * (x[k] * inv));
  }
  for (int i = i0; i < half; i += kThreads) {
    if (i != i0) {
      x0 = x[C + (interleaved ? 2 * i : i)], x1 = x[C + (interleaved ? 2 * i + 1 : i + half)];
      c = p.cos[r * half + i], s = p.sin[r * half + i];
    }
    float y0, y1;
    rotate_pair(x0, x1, c, s, y0, y1);
    store_value(p, dest + C + (interleaved ? 2 * i : i), y0);
    store_value(p, dest + C + (interleaved ? 2 * i + 1 : i + half), y1);
  }
}

}  // namespace

cudaError_t store_latent_rows(const LatentRowsParams& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  if (p.n > 0x7fffffff) return cudaErrorInvalidValue;
  return launch_dependent(latent_rows_kernel, static_cast<unsigned>(p.n), kThreads, 0, stream, p);
}

}  // namespace dsv::ops::cuda
