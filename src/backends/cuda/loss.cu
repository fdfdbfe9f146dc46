// cross_entropy (one block per row: max and sum of exp(x - max) in one pass, then the gradient, in place
// or as bf16) and
// sum_squares (a fixed grid of per-block partial sums in double, then one block adds them in order:
// deterministic for a given n).
#include <cmath>

#include "backends/cuda/cuda_ops.h"
#include "core/dtype.h"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 512;

// Block-wide reduction of one value per thread (blockDim.x == BLOCK, a multiple of 32); every thread
// gets the result. `scratch` holds BLOCK / 32 values.
template <int BLOCK, typename T, typename Op>
__device__ T block_reduce(T v, T* scratch, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  T r = scratch[0];
  for (int i = 1; i < BLOCK / 32; ++i) r = op(r, scratch[i]);
  __syncthreads();
  return r;
}

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

// One pass over the row for its statistics (a running max and sum of exp(x - max) per thread,
// merged across the block), a second for the gradient: the row is read twice, not three times.
__global__ void cross_entropy_kernel(CrossEntropyParams p) {
  __shared__ float scratch[kThreads / 32];
  const int64_t t = blockIdx.x, V = p.V;
  float* x = p.logits + t * V;
  uint16_t* g16 = p.dlogits_bf16 ? p.dlogits_bf16 + t * V : nullptr;
  const int64_t target = p.targets[t];
  if (target < 0) {  // ignored row
    for (int64_t i = threadIdx.x; i < V; i += kThreads) {
      if (g16) g16[i] = 0;
      else x[i] = 0.0f;
    }
    if (threadIdx.x == 0) p.loss[t] = 0.0f;
    return;
  }
  const float target_logit = target < V ? x[target] : NAN;  // read before anything is written
  float m = -INFINITY, l = 0.0f;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    const float v = x[i];
    if (v > m) {
      l = l * expf(m - v) + 1.0f;  // expf(-inf) = 0 on a thread's first value
      m = v;
    } else {
      l += expf(v - m);
    }
  }
  const float row_max = block_reduce<kThreads>(m, scratch, MaxOp{});
  const float sum = block_reduce<kThreads>(l == 0.0f ? 0.0f : l * expf(m - row_max), scratch, SumOp{});
  if (threadIdx.x == 0) p.loss[t] = logf(sum) + (row_max - target_logit);  // the small difference first
  const float inv = 1.0f / sum;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    const float prob = expf(x[i] - row_max) * inv;
    const float grad = p.grad_scale * (i == target ? prob - 1.0f : prob);
    if (g16) g16[i] = f32_to_bf16(grad);
    else x[i] = grad;
  }
}

constexpr int kSumThreads = 256, kSumBlocks = 1024;

__global__ void sum_squares_stage1(const float* __restrict__ x, int64_t n, double* partial) {
  __shared__ double scratch[kSumThreads / 32];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kSumThreads) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kSumThreads) {
    const double v = x[i];
    acc += v * v;
  }
  acc = block_reduce<kSumThreads>(acc, scratch, SumOp{});
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_squares_stage2(const double* partial, int blocks, float* out, bool accumulate) {
  __shared__ double scratch[kSumThreads / 32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < blocks; i += kSumThreads) acc += partial[i];
  acc = block_reduce<kSumThreads>(acc, scratch, SumOp{});
  if (threadIdx.x == 0) out[0] = static_cast<float>(accumulate ? static_cast<double>(out[0]) + acc : acc);
}

}  // namespace

cudaError_t cross_entropy(const CrossEntropyParams& p, cudaStream_t stream) {
  if (p.T <= 0) return cudaSuccess;
  cross_entropy_kernel<<<static_cast<unsigned>(p.T), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t sum_squares(const SumSquaresParams& p, cudaStream_t stream) {
  int64_t blocks = (p.n + kSumThreads - 1) / kSumThreads;
  if (blocks > kSumBlocks) blocks = kSumBlocks;
  if (blocks < 1) blocks = 1;
  double* partial = static_cast<double*>(cached_allocate(static_cast<size_t>(blocks) * sizeof(double)));
  if (!partial) return cudaErrorMemoryAllocation;
  sum_squares_stage1<<<static_cast<unsigned>(blocks), kSumThreads, 0, stream>>>(p.x, p.n, partial);
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) {
    sum_squares_stage2<<<1, kSumThreads, 0, stream>>>(partial, static_cast<int>(blocks), p.out, p.accumulate);
    e = cudaGetLastError();
  }
  cached_release(partial);
  return e;
}

}  // namespace dsv::ops::cuda
