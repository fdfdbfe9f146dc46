// RMSNorm, fp32: one block per row; the sum of squares is reduced through warp shuffles.
#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 256;

// dim < 2^31. Loops unrolled so that a thread's loads are in flight together (decode rows are short:
// latency, not bandwidth, sets the time).
__global__ void rmsnorm_kernel(const float* __restrict__ x, const float* __restrict__ weight, float* y, int dim,
                               int64_t x_stride, int64_t y_stride, float eps) {
  dependent_start();
  const float* xr = x + blockIdx.x * x_stride;
  float* yr = y + blockIdx.x * y_stride;
  float sum = 0.0f;
#pragma unroll 8
  for (int i = threadIdx.x; i < dim; i += kThreads) sum += xr[i] * xr[i];
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  __shared__ float partial[kThreads / 32];
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    sum = threadIdx.x < kThreads / 32 ? partial[threadIdx.x] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (threadIdx.x == 0) partial[0] = sum;
  }
  __syncthreads();
  const float inv = rsqrtf(partial[0] / static_cast<float>(dim) + eps);
#pragma unroll 8
  for (int i = threadIdx.x; i < dim; i += kThreads) yr[i] = weight[i] * (xr[i] * inv);
}

}  // namespace

cudaError_t rmsnorm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const int64_t xs = p.x_stride ? p.x_stride : p.dim, ys = p.y_stride ? p.y_stride : p.dim;
  if (p.dim > INT32_MAX) return cudaErrorInvalidValue;
  return launch_dependent(rmsnorm_kernel, static_cast<unsigned>(p.rows), kThreads, 0, stream, p.x, p.weight, p.y,
                          static_cast<int>(p.dim), xs, ys, p.eps);
}

}  // namespace dsv::ops::cuda
