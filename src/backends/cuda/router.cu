// MoE routing, twin of backends/cpu/router.cpp: one warp per token. Lanes compute the expert scores
// (softmax: a warp max, then a double denominator), each group's best two by a warp merge, and the
// top-K by K warp-wide argmax passes that pick the largest value and, among equals, the lowest index,
// as the CPU op does. Groups are ranked by lane 0 (n_group is small).
#include <cfloat>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"

namespace dsv::ops::cuda {
namespace {

constexpr int kMaxExperts = 1024, kPerLane = kMaxExperts / 32;
constexpr unsigned kAll = 0xffffffffu;

// (value, index) of the warp's best: larger value, then lower index; index < 0 means none.
__device__ __forceinline__ void warp_best(float& v, int& i) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kAll, v, o);
    const int oi = __shfl_xor_sync(kAll, i, o);
    if (oi >= 0 && (i < 0 || ov > v || (ov == v && oi < i))) v = ov, i = oi;
  }
}

__global__ void route_kernel(RouterParams p) {
  dependent_start();
  __shared__ float scores[kMaxExperts], choice[kMaxExperts], group_scores[kMaxExperts];
  __shared__ bool taken[kMaxExperts], group_kept[kMaxExperts];
  __shared__ int chosen[kMaxExperts];
  __shared__ float chosen_w[kMaxExperts];
  const int lane = threadIdx.x;
  const int E = static_cast<int>(p.E), K = static_cast<int>(p.K), G = static_cast<int>(p.n_group);
  const int per_group = E / (G > 0 ? G : 1);
  const bool sigmoid = p.kind == RouterKind::SigmoidNoauxGroups;
  // The token's logits (and the correction bias) staged in shared memory with every load issued at
  // once: read in the loops below, each trip's loads waited for the trip before (E / 32 dependent
  // round trips, the better part of a decode step's route).
  __shared__ float logits[kMaxExperts], bias[kMaxExperts];
  {
    const float* row = p.logits + static_cast<int64_t>(blockIdx.x) * E;
    float lv[kPerLane], bv[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      lv[j] = e < E ? row[e] : 0.0f;
      bv[j] = sigmoid && e < E ? p.correction_bias[e] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      if (e < E) logits[e] = lv[j], bias[e] = bv[j];
    }
    __syncwarp();
  }
  if (sigmoid) {
    for (int e = lane; e < E; e += 32) {
      scores[e] = 1.0f / (1.0f + expf(-logits[e]));
      choice[e] = scores[e] + bias[e];
    }
  } else {  // softmax in fp32 with a double denominator, as the CPU op
    float max_logit = -FLT_MAX;
    for (int e = lane; e < E; e += 32) max_logit = fmaxf(max_logit, logits[e]);
    for (int o = 16; o > 0; o >>= 1) max_logit = fmaxf(max_logit, __shfl_xor_sync(kAll, max_logit, o));
    double denom = 0.0;
    for (int e = lane; e < E; e += 32) denom += (scores[e] = expf(logits[e] - max_logit));
    for (int o = 16; o > 0; o >>= 1) denom += __shfl_xor_sync(kAll, denom, o);
    for (int e = lane; e < E; e += 32) choice[e] = scores[e] = static_cast<float>(scores[e] / denom);
  }
  for (int e = lane; e < E; e += 32) taken[e] = false;
  __syncwarp();
  if (p.kind != RouterKind::SoftmaxGreedy) {
    for (int g = 0; g < G; ++g) {  // best two of the group (as a multiset), merged across lanes
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
      if (lane == 0) {
        group_scores[g] = sigmoid ? best + second : best;  // V3: top-2 sum; V2: group max
        group_kept[g] = false;
      }
    }
    if (lane == 0)
      for (int k = 0; k < p.topk_group; ++k) {
        int best = -1;
        for (int g = 0; g < G; ++g)
          if (!group_kept[g] && (best < 0 || group_scores[g] > group_scores[best])) best = g;
        group_kept[best] = true;
      }
    __syncwarp();
    for (int e = lane; e < E; e += 32)
      if (!group_kept[e / per_group]) choice[e] = sigmoid ? -FLT_MAX : 0.0f;  // V3 -inf, V2 0.0
    __syncwarp();
  }
  // Choices and weights stay in shared memory until the end (global read-backs are slow round trips).
  float sum = 0.0f;
  for (int k = 0; k < K; ++k) {
    float v = 0.0f;
    int best = -1;
    for (int e = lane; e < E; e += 32)
      if (!taken[e] && (best < 0 || choice[e] > v)) v = choice[e], best = e;
    warp_best(v, best);
    if (lane == 0) {
      taken[best] = true;
      chosen[k] = best;
      chosen_w[k] = sigmoid ? scores[best] : choice[best];
      sum += chosen_w[k];
    }
    __syncwarp();
  }
  sum = __shfl_sync(kAll, sum, 0);
  int32_t* idx = p.indices + static_cast<int64_t>(blockIdx.x) * K;
  float* w = p.weights + static_cast<int64_t>(blockIdx.x) * K;
  for (int k = lane; k < K; k += 32) {
    float v = chosen_w[k];
    if (sigmoid && p.norm_topk_prob) v /= (sum + 1e-20f);
    idx[k] = chosen[k];
    w[k] = v * p.routed_scaling_factor;
  }
}

}  // namespace

cudaError_t route(const RouterParams& p, cudaStream_t stream) {
  if (p.E > kMaxExperts || p.n_group > kMaxExperts) return cudaErrorInvalidValue;
  if (p.T == 0) return cudaSuccess;
  return launch_dependent(route_kernel, static_cast<unsigned>(p.T), 32, 0, stream, p);
}

}  // namespace dsv::ops::cuda
