// Greedy choice per row on the device (twin of backends/cpu/argmax.cpp): one block per row, each
// thread keeps its best (value, index) over a strided slice, then a shared-memory tree keeps the larger
// value and, on ties, the lower index; NaNs never enter.
#include "backends/cuda/cuda_ops.h"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 256;

// Whether candidate (v, i) beats (bv, bi); an index < 0 is "nothing yet".
__device__ __forceinline__ bool better(float v, int64_t i, float bv, int64_t bi) {
  return i >= 0 && (bi < 0 || v > bv || (v == bv && i < bi));
}

__global__ void argmax_rows_kernel(ArgmaxParams p) {
  __shared__ float values[kThreads];
  __shared__ int64_t indices[kThreads];
  const float* x = p.x + static_cast<int64_t>(blockIdx.x) * p.n;
  float bv = 0.0f;
  int64_t bi = -1;
  for (int64_t i = threadIdx.x; i < p.n; i += kThreads) {
    const float v = x[i];
    if (!isnan(v) && better(v, i, bv, bi)) bv = v, bi = i;
  }
  values[threadIdx.x] = bv;
  indices[threadIdx.x] = bi;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      const int o = threadIdx.x + stride;
      if (better(values[o], indices[o], values[threadIdx.x], indices[threadIdx.x])) {
        values[threadIdx.x] = values[o];
        indices[threadIdx.x] = indices[o];
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) p.out[blockIdx.x] = static_cast<int32_t>(indices[0] < 0 ? 0 : indices[0]);
}

}  // namespace

cudaError_t argmax_rows(const ArgmaxParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  argmax_rows_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
