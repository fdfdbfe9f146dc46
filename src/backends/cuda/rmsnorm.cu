// RMSNorm, fp32: one block per row; the sum of squares is reduced through warp shuffles.
#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/warp_reduce.cuh"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 256;

// dim < 2^31. A thread takes its elements eight at a time, all loads of a group before any store
// (decode rows are short: latency, not bandwidth, sets the time, and a store between two loads that
// may alias would order them). With `delta` (add_rmsnorm) the row is x + delta, written back to
// x_out (= x) first; each thread reads back only what it wrote. Rows of up to kGroup * kThreads
// values (hidden sizes to 2048, the latent) stay in registers between the sum and the scaling, and
// their norm weights are loaded before the dependency wait (weights are constant).
constexpr int kGroup = 8;
__global__ void rmsnorm_kernel(const float* x, const float* __restrict__ weight, float* y, int dim,
                               int64_t x_stride, int64_t y_stride, float eps, const float* delta, float* x_out) {
  allow_dependents();
  const bool in_registers = dim <= kGroup * kThreads;
  float w[kGroup];
  if (in_registers) {
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int i = threadIdx.x + u * kThreads;
      w[u] = i < dim ? weight[i] : 0.0f;
    }
  }
  grid_dependency_wait();
  const float* xr = x + blockIdx.x * x_stride;
  float* yr = y + blockIdx.x * y_stride;
  float sum = 0.0f;
  float v[kGroup];
  for (int base = threadIdx.x; base < dim; base += kGroup * kThreads) {
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int i = base + u * kThreads;
      v[u] = i < dim ? xr[i] + (delta ? delta[blockIdx.x * static_cast<int64_t>(dim) + i] : 0.0f) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      sum += v[u] * v[u];
      const int i = base + u * kThreads;
      if (delta && i < dim) x_out[blockIdx.x * x_stride + i] = v[u];
    }
  }
  __shared__ float scratch[kThreads / 32 + 1];
  const float inv = rsqrtf(block_sum<kThreads>(sum, scratch) / static_cast<float>(dim) + eps);
  if (in_registers) {
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int i = threadIdx.x + u * kThreads;
      if (i < dim) yr[i] = w[u] * (v[u] * inv);
    }
    return;
  }
  for (int base = threadIdx.x; base < dim; base += kGroup * kThreads) {
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int i = base + u * kThreads;
      v[u] = i < dim ? weight[i] * (xr[i] * inv) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int i = base + u * kThreads;
      if (i < dim) yr[i] = v[u];
    }
  }
}

}  // namespace

cudaError_t rmsnorm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const int64_t xs = p.x_stride ? p.x_stride : p.dim, ys = p.y_stride ? p.y_stride : p.dim;
  if (p.dim > INT32_MAX) return cudaErrorInvalidValue;
  return launch_dependent(rmsnorm_kernel, static_cast<unsigned>(p.rows), kThreads, 0, stream, p.x, p.weight, p.y,
                          static_cast<int>(p.dim), xs, ys, p.eps, static_cast<const float*>(nullptr),
                          static_cast<float*>(nullptr));
}

cudaError_t add_rmsnorm(const AddRmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  if (p.dim > INT32_MAX) return cudaErrorInvalidValue;
  return launch_dependent(rmsnorm_kernel, static_cast<unsigned>(p.rows), kThreads, 0, stream,
                          static_cast<const float*>(p.x), p.weight, p.y, static_cast<int>(p.dim), p.dim, p.dim, p.eps,
                          p.delta, p.x);
}

}  // namespace dsv::ops::cuda
