// out = silu(gate) * up, fp32, grid-stride.
#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"

namespace dsv::ops::cuda {
namespace {

__global__ void swiglu_kernel(const float* __restrict__ gate, const float* __restrict__ up, float* out, int64_t n) {
  dependent_start();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = (g / (1.0f + __expf(-g))) * up[i];
  }
}

}  // namespace

cudaError_t swiglu(const SwigluParams& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  const int threads = 256;
  const int64_t blocks = (p.n + threads - 1) / threads;
  return launch_dependent(swiglu_kernel, static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16), threads, 0,
                          stream, p.gate, p.up, p.out, p.n);
}

}  // namespace dsv::ops::cuda
