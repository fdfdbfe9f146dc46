// MoE routing, twin of backends/cpu/router.cpp: one block per token. Threads compute the expert
// scores; thread 0 then ranks groups and selects the top-K serially (E <= 1024, K small), picking
// the largest value and, among equals, the lowest index, as the CPU op does.
#include <cfloat>

#include "backends/cuda/cuda_ops.h"

namespace dsv::ops::cuda {
namespace {

constexpr int kMaxExperts = 1024;

__device__ int64_t argmax_unmasked(const float* v, const bool* taken, int64_t n) {
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i)
    if (!taken[i] && (best < 0 || v[i] > v[best])) best = i;
  return best;
}

__global__ void route_kernel(RouterParams p) {
  __shared__ float scores[kMaxExperts], choice[kMaxExperts];
  __shared__ bool taken[kMaxExperts], group_kept[kMaxExperts];
  __shared__ float group_scores[kMaxExperts];
  const int64_t t = blockIdx.x, E = p.E, K = p.K, G = p.n_group, per_group = E / (G > 0 ? G : 1);
  const float* logits = p.logits + t * E;
  const bool sigmoid = p.kind == RouterKind::SigmoidNoauxGroups;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    if (sigmoid) {
      scores[e] = 1.0f / (1.0f + expf(-logits[e]));
      choice[e] = scores[e] + p.correction_bias[e];
    }
    taken[e] = false;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  if (!sigmoid) {  // softmax in fp32 with a double denominator, as the CPU op
    float max_logit = -FLT_MAX;
    for (int64_t e = 0; e < E; ++e) max_logit = fmaxf(max_logit, logits[e]);
    double denom = 0.0;
    for (int64_t e = 0; e < E; ++e) denom += (scores[e] = expf(logits[e] - max_logit));
    for (int64_t e = 0; e < E; ++e) choice[e] = scores[e] = static_cast<float>(scores[e] / denom);
  }
  if (p.kind != RouterKind::SoftmaxGreedy) {
    for (int64_t g = 0; g < G; ++g) {
      const float* c = choice + g * per_group;
      float best = -FLT_MAX, second = -FLT_MAX;
      for (int64_t i = 0; i < per_group; ++i) {
        if (c[i] > best) { second = best; best = c[i]; }
        else if (c[i] > second) second = c[i];
      }
      group_scores[g] = sigmoid ? best + second : best;  // V3: top-2 sum; V2: group max
      group_kept[g] = false;
    }
    for (int64_t k = 0; k < p.topk_group; ++k) {
      int64_t best = -1;
      for (int64_t g = 0; g < G; ++g)
        if (!group_kept[g] && (best < 0 || group_scores[g] > group_scores[best])) best = g;
      group_kept[best] = true;
    }
    for (int64_t e = 0; e < E; ++e)
      if (!group_kept[e / per_group]) choice[e] = sigmoid ? -FLT_MAX : 0.0f;  // V3 -inf, V2 0.0
  }
  int32_t* idx = p.indices + t * K;
  float* w = p.weights + t * K;
  float sum = 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t e = argmax_unmasked(choice, taken, E);
    taken[e] = true;
    idx[k] = static_cast<int32_t>(e);
    w[k] = sigmoid ? scores[e] : choice[e];
    sum += w[k];
  }
  for (int64_t k = 0; k < K; ++k) {
    if (sigmoid && p.norm_topk_prob) w[k] /= (sum + 1e-20f);
    w[k] *= p.routed_scaling_factor;
  }
}

}  // namespace

cudaError_t route(const RouterParams& p, cudaStream_t stream) {
  if (p.E > kMaxExperts || p.n_group > kMaxExperts) return cudaErrorInvalidValue;
  if (p.T == 0) return cudaSuccess;
  route_kernel<<<static_cast<unsigned>(p.T), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
