// Backward of the router's combine weights to the logits, one block per token. Threads stride over
// the E experts; the K selected (index, weight-gradient) pairs are small and every thread walks them.
//   softmax kinds: p = softmax(logits), g[e_k] = scale * dw_k, dlogits = p * (g - sum_k p[e_k] g[e_k])
//   sigmoid:       s = sigmoid(logits), w_k = scale * s_k / denom (denom = sum_j s_j + 1e-20 when
//                  norm_topk_prob, else 1); dlogits[e_k] = ds_k * s_k (1 - s_k), 0 elsewhere.
#include <cmath>

#include "backends/cuda/cuda_ops.h"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 128;

template <typename Op>
__device__ float block_reduce(float v, float* scratch, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float r = scratch[0];
  for (int i = 1; i < kThreads / 32; ++i) r = op(r, scratch[i]);
  __syncthreads();
  return r;
}
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

__device__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void route_backward_kernel(RouteBackwardParams p) {
  __shared__ float scratch[kThreads / 32];
  const int64_t t = blockIdx.x, E = p.E, K = p.K;
  const float* logits = p.logits + t * E;
  const int32_t* idx = p.indices + t * K;
  const float* dw = p.dweights + t * K;
  float* out = p.dlogits + t * E;
  const float scale = p.routed_scaling_factor;
  if (p.kind == RouterKind::SigmoidNoauxGroups) {
    float denom = 1.0f, ws = 0.0f;  // ws = sum_j dw_j * s_j
    if (p.norm_topk_prob) {
      float sum = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const float s = sigmoid(logits[idx[k]]);
        sum += s;
        ws += dw[k] * s;
      }
      denom = sum + 1e-20f;
    }
    for (int64_t e = threadIdx.x; e < E; e += kThreads) {
      float g = 0.0f;
      bool selected = false;
      const float s = sigmoid(logits[e]);
      for (int64_t k = 0; k < K; ++k) {
        if (idx[k] != e) continue;
        selected = true;
        const float ds = p.norm_topk_prob ? scale * (dw[k] / denom - ws / (denom * denom)) : scale * dw[k];
        g += ds * s * (1.0f - s);
      }
      if (p.accumulate) {
        if (selected) out[e] += g;
      } else {
        out[e] = g;
      }
    }
    return;
  }
  float m = -INFINITY;
  for (int64_t e = threadIdx.x; e < E; e += kThreads) m = fmaxf(m, logits[e]);
  m = block_reduce(m, scratch, MaxOp{});
  float sum = 0.0f;
  for (int64_t e = threadIdx.x; e < E; e += kThreads) sum += expf(logits[e] - m);
  sum = block_reduce(sum, scratch, SumOp{});
  const float inv = 1.0f / sum;
  float pg = 0.0f;  // sum_k p[e_k] * g[e_k]
  for (int64_t k = 0; k < K; ++k) pg += expf(logits[idx[k]] - m) * inv * scale * dw[k];
  for (int64_t e = threadIdx.x; e < E; e += kThreads) {
    float g = 0.0f;
    for (int64_t k = 0; k < K; ++k)
      if (idx[k] == e) g += scale * dw[k];
    const float r = expf(logits[e] - m) * inv * (g - pg);
    out[e] = p.accumulate ? out[e] + r : r;
  }
}

}  // namespace

cudaError_t route_backward(const RouteBackwardParams& p, cudaStream_t stream) {
  if (p.T <= 0 || p.E <= 0) return cudaSuccess;
  route_backward_kernel<<<static_cast<unsigned>(p.T), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
