// Backward of RMSNorm, fp32. With r = 1/sqrt(mean(x^2) + eps) per row:
//   dx = r * (w*dy - x * r^2 * mean(w*dy*x))   (one block per row)
//   dweight += sum_rows dy * x * r             (column_sum: deterministic, chunked over rows)
// dx may alias dy, so when dweight is wanted, 1/rms goes to a scratch row first and the weight
// gradient is summed before dx is written.
#include "backends/cuda/cuda_ops.h"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 256;

// Block-wide sum of two values per thread (kThreads threads); every thread gets the result.
__device__ float2 block_sum2(float a, float b) {
  __shared__ float2 partial[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
  }
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = make_float2(a, b);
  __syncthreads();
  float2 s = make_float2(0.0f, 0.0f);
  for (int i = 0; i < kThreads / 32; ++i) {  // same order in every thread
    s.x += partial[i].x;
    s.y += partial[i].y;
  }
  __syncthreads();
  return s;
}

__global__ void rstd_kernel(const float* __restrict__ x, float* rstd, int64_t dim, int64_t xs, float eps) {
  const float* xr = x + blockIdx.x * xs;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) ss += xr[i] * xr[i];
  const float2 s = block_sum2(ss, 0.0f);
  if (threadIdx.x == 0) rstd[blockIdx.x] = rsqrtf(s.x / static_cast<float>(dim) + eps);
}

__global__ void rmsnorm_dx_kernel(RmsNormBackwardParams p, int64_t xs, int64_t dys, int64_t dxs) {
  const int64_t row = blockIdx.x;
  const float* xr = p.x + row * xs;
  const float* dyr = p.dy + row * dys;
  float* dxr = p.dx + row * dxs;
  float ss = 0.0f, dot = 0.0f;
  for (int64_t i = threadIdx.x; i < p.dim; i += kThreads) {
    const float xv = xr[i];
    ss += xv * xv;
    dot += p.weight[i] * dyr[i] * xv;
  }
  const float2 s = block_sum2(ss, dot);
  const float r = rsqrtf(s.x / static_cast<float>(p.dim) + p.eps);
  const float c = r * r * (s.y / static_cast<float>(p.dim));
  // Each element of dy is read by the thread that writes the same element of dx (aliasing is fine).
  for (int64_t i = threadIdx.x; i < p.dim; i += kThreads) {
    const float g = r * (p.weight[i] * dyr[i] - xr[i] * c);
    dxr[i] = p.accumulate_dx ? dxr[i] + g : g;
  }
}

}  // namespace

cudaError_t rmsnorm_backward(const RmsNormBackwardParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.dim == 0) return cudaSuccess;
  const int64_t xs = p.x_stride ? p.x_stride : p.dim, dys = p.dy_stride ? p.dy_stride : p.dim,
                dxs = p.dx_stride ? p.dx_stride : p.dim;
  cudaError_t e = cudaSuccess;
  if (p.dweight) {
    float* rstd = static_cast<float*>(cached_allocate(static_cast<size_t>(p.rows) * sizeof(float)));
    if (!rstd) return cudaErrorMemoryAllocation;
    rstd_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p.x, rstd, p.dim, xs, p.eps);
    e = cudaGetLastError();
    if (e == cudaSuccess) e = column_sum(p.dy, dys, p.x, xs, rstd, p.dweight, p.rows, p.dim, true, stream);
    cached_release(rstd);
    if (e != cudaSuccess) return e;
  }
  rmsnorm_dx_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p, xs, dys, dxs);
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
