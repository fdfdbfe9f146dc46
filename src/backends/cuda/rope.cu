// RoPE on the rope span of each head, in place or into y; one thread per rotary pair.
#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/rotary.cuh"

namespace dsv::ops::cuda {
namespace {

__global__ void rope_kernel(RopeParams p) {
  dependent_start();
  const int64_t half = p.rope_dim / 2;
  const int64_t total = p.tokens * p.heads * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half, h = (idx / half) % p.heads, t = idx / (half * p.heads);
    float* x = p.x + t * p.token_stride + h * p.head_stride + p.offset;
    float* y = p.y ? p.y + t * p.y_token_stride + h * p.y_head_stride + p.y_offset : x;
    const int64_t a = p.layout == RopeLayout::Interleaved ? 2 * i : i;
    const int64_t b = p.layout == RopeLayout::Interleaved ? 2 * i + 1 : i + half;
    const float c = p.cos[t * half + i], s = p.sin[t * half + i];
    float y0, y1;
    rotate_pair(x[a], x[b], c, s, y0, y1);
    y[a] = y0;
    y[b] = y1;
  }
}

// One thread per (position, pair); cosf / sinf are the accurate device functions (no fast math).
__global__ void rope_table_kernel(RopeTableParams p) {
  dependent_start();
  const int64_t total = p.T * p.half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / p.half, i = idx % p.half;
    const float angle = p.inv_freq[i] * static_cast<float>(p.first + t);
    float s, c;
    sincosf(angle, &s, &c);
    p.cos[idx] = c * p.factor;
    p.sin[idx] = (p.negate_sin ? -s : s) * p.factor;
  }
}

}  // namespace

cudaError_t rope_table(const RopeTableParams& p, cudaStream_t stream) {
  const int64_t total = p.T * p.half;
  if (total == 0) return cudaSuccess;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  return launch_dependent(rope_table_kernel, static_cast<unsigned>(blocks < 65535 ? blocks : 65535), threads, 0,
                          stream, p);
}

cudaError_t rope(const RopeParams& p, cudaStream_t stream) {
  const int64_t total = p.tokens * p.heads * (p.rope_dim / 2);
  if (total == 0) return cudaSuccess;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  return launch_dependent(rope_kernel, static_cast<unsigned>(blocks < 65535 ? blocks : 65535), threads, 0, stream, p);
}

}  // namespace dsv::ops::cuda
