// MoE routing, twin of backends/cpu/router.cpp: one block of kThreads per token. The expert scores
// (softmax: one warp takes the max and a double denominator; sigmoid: every thread), each group's best
// two (a warp per group), the kept groups and the top-K are chosen by rank: an element's rank is the
// number of elements that beat it (a larger value, or an equal value at a lower index, the CPU op's
// order), and the K of rank below K are the top-K in order. Every thread ranks its own elements against
// all of them at once, where K argmax passes of one warp were K dependent rounds of shuffles (3.7 of a
// 16b-l4 decode route's ~6 us).
#include <cfloat>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"

namespace dsv::ops::cuda {
namespace {

constexpr int kMaxExperts = 1024, kThreads = 256, kWarps = kThreads / 32;
constexpr unsigned kAll = 0xffffffffu;

// How many of values[0 .. n) come before values[i] in (larger value, then lower index) order.
__device__ __forceinline__ int rank_of(const float* values, int n, int i) {
  const float v = values[i];
  int rank = 0;
  for (int j = 0; j < n; ++j) {
    const float u = values[j];
    rank += (u > v || (u == v && j < i)) ? 1 : 0;
  }
  return rank;
}

__global__ void __launch_bounds__(kThreads) route_kernel(RouterParams p) {
  dependent_start();
  __shared__ float logits[kMaxExperts], bias[kMaxExperts], scores[kMaxExperts], choice[kMaxExperts];
  __shared__ float group_scores[kMaxExperts];
  __shared__ bool group_kept[kMaxExperts];
  __shared__ int chosen[kMaxExperts];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int E = static_cast<int>(p.E), K = static_cast<int>(p.K), G = static_cast<int>(p.n_group);
  const int per_group = E / (G > 0 ? G : 1);
  const bool sigmoid = p.kind == RouterKind::SigmoidNoauxGroups;
  {  // the token's logits (and correction bias) into shared memory, every load issued at once
    const float* row = p.logits + static_cast<int64_t>(blockIdx.x) * E;
    constexpr int kPer = kMaxExperts / kThreads;
    float lv[kPer], bv[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int e = tid + kThreads * j;
      lv[j] = e < E ? row[e] : 0.0f;
      bv[j] = sigmoid && e < E ? p.correction_bias[e] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int e = tid + kThreads * j;
      if (e < E) logits[e] = lv[j], bias[e] = bv[j];
    }
  }
  __syncthreads();
  if (sigmoid) {
    for (int e = tid; e < E; e += kThreads) {
      scores[e] = 1.0f / (1.0f + expf(-logits[e]));
      choice[e] = scores[e] + bias[e];
    }
  } else if (warp == 0) {  // softmax in fp32 with a double denominator, as the CPU op
    float max_logit = -FLT_MAX;
    for (int e = lane; e < E; e += 32) max_logit = fmaxf(max_logit, logits[e]);
    for (int o = 16; o > 0; o >>= 1) max_logit = fmaxf(max_logit, __shfl_xor_sync(kAll, max_logit, o));
    double denom = 0.0;
    for (int e = lane; e < E; e += 32) denom += (scores[e] = expf(logits[e] - max_logit));
    for (int o = 16; o > 0; o >>= 1) denom += __shfl_xor_sync(kAll, denom, o);
    for (int e = lane; e < E; e += 32) choice[e] = scores[e] = static_cast<float>(scores[e] / denom);
  }
  __syncthreads();
  if (p.kind != RouterKind::SoftmaxGreedy) {
    for (int g = warp; g < G; g += kWarps) {  // best two of the group (as a multiset), merged across lanes
      const float* c = choice + g * per_group;
      float best = -FLT_MAX, second = -FLT_MAX;
      for (int i = lane; i < per_group; i += 32) {
        if (c[i] > best) { second = best; best = c[i]; }
        else if (c[i] > second) second = c[i];
      }
      for (int o = 16; o > 0; o >>= 1) {
        const float ob = __shfl_xor_sync(kAll, best, o), os = __shfl_xor_sync(kAll, second, o);
        const float hi = fmaxf(best, ob);
        second = fmaxf(fminf(best, ob), fmaxf(second, os));
        best = hi;
      }
      if (lane == 0) group_scores[g] = sigmoid ? best + second : best;  // V3: top-2 sum; V2: group max
    }
    __syncthreads();
    for (int g = tid; g < G; g += kThreads) group_kept[g] = rank_of(group_scores, G, g) < p.topk_group;
    __syncthreads();
    for (int e = tid; e < E; e += kThreads)
      if (!group_kept[e / per_group]) choice[e] = sigmoid ? -FLT_MAX : 0.0f;  // V3 -inf, V2 0.0
    __syncthreads();
  }
  for (int k = tid; k < K; k += kThreads) chosen[k] = k;  // a valid expert even if NaNs tie the ranks
  __syncthreads();
  for (int e = tid; e < E; e += kThreads) {
    const int rank = rank_of(choice, E, e);
    if (rank < K) chosen[rank] = e;
  }
  __syncthreads();
  if (tid != 0) return;
  // Weights in k order (the sum of the normalization accumulates in that order, as on the CPU).
  int32_t* idx = p.indices + static_cast<int64_t>(blockIdx.x) * K;
  float* w = p.weights + static_cast<int64_t>(blockIdx.x) * K;
  float sum = 0.0f;
  for (int k = 0; k < K; ++k) sum += sigmoid ? scores[chosen[k]] : choice[chosen[k]];
  for (int k = 0; k < K; ++k) {
    float v = sigmoid ? scores[chosen[k]] : choice[chosen[k]];
    if (sigmoid && p.norm_topk_prob) v /= (sum + 1e-20f);
    idx[k] = chosen[k];
    w[k] = v * p.routed_scaling_factor;
  }
}

}  // namespace

cudaError_t route(const RouterParams& p, cudaStream_t stream) {
  if (p.E > kMaxExperts || p.n_group > kMaxExperts) return cudaErrorInvalidValue;
  if (p.T == 0) return cudaSuccess;
  return launch_dependent(route_kernel, static_cast<unsigned>(p.T), kThreads, 0, stream, p);
}

}  // namespace dsv::ops::cuda
