// y[m, n] += bias[n] (the epilogue of linear when a bias is given).
#include "backends/cuda/cuda_ops.h"

namespace dsv::ops::cuda {
namespace {

__global__ void add_bias_kernel(float* y, const float* bias, int64_t M, int64_t N, int64_t ys) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < M * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[(i / N) * ys + i % N] += bias[i % N];
}

}  // namespace

cudaError_t add_bias(const LinearParams& p, cudaStream_t stream) {
  const int64_t ys = p.y_stride ? p.y_stride : p.N, total = p.M * p.N;
  const int64_t blocks = (total + 255) / 256;
  add_bias_kernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), 256, 0, stream>>>(p.y, p.bias, p.M, p.N,
                                                                                              ys);
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
