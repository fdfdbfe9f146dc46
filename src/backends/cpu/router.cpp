// MoE routing, written to reproduce transformers 5.17's DeepseekV2TopkRouter / DeepseekV3TopkRouter.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "backends/cpu/cpu_ops.h"

namespace dsv::ops::cpu {
namespace {

// Indices of the k largest values (ties: lower index first). Selection only; order is irrelevant.
void top_k(const float* values, int64_t n, int64_t k, int32_t* out) {
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return values[a] > values[b] || (values[a] == values[b] && a < b);
  });
  std::copy(order.begin(), order.begin() + k, out);
}

}  // namespace

void route(const RouterParams& p) {
  const int64_t E = p.E, K = p.K, G = p.n_group, per_group = E / std::max<int64_t>(G, 1);
  std::vector<float> scores(E), choice(E), group_scores(G);
  std::vector<int32_t> groups(static_cast<size_t>(p.topk_group));
  for (int64_t t = 0; t < p.T; ++t) {
    const float* logits = p.logits + t * E;
    int32_t* idx = p.indices + t * K;
    float* w = p.weights + t * K;

    if (p.kind == RouterKind::SigmoidNoauxGroups) {
      for (int64_t e = 0; e < E; ++e) {
        scores[e] = 1.0f / (1.0f + std::exp(-logits[e]));
        choice[e] = scores[e] + p.correction_bias[e];  // the bias steers choice only, not the weights
      }
      for (int64_t g = 0; g < G; ++g) {  // a group's score: sum of its two best choice scores
        const float* c = choice.data() + g * per_group;
        float best = -std::numeric_limits<float>::infinity(), second = best;
        for (int64_t i = 0; i < per_group; ++i) {
          if (c[i] > best) { second = best; best = c[i]; }
          else if (c[i] > second) second = c[i];
        }
        group_scores[g] = best + second;
      }
      top_k(group_scores.data(), G, p.topk_group, groups.data());
      std::vector<float> masked(E, -std::numeric_limits<float>::infinity());
      for (int32_t g : groups)
        for (int64_t i = 0; i < per_group; ++i) masked[g * per_group + i] = choice[g * per_group + i];
      top_k(masked.data(), E, K, idx);
      float sum = 0.0f;
      for (int64_t k = 0; k < K; ++k) sum += (w[k] = scores[idx[k]]);
      for (int64_t k = 0; k < K; ++k) {
        if (p.norm_topk_prob) w[k] /= (sum + 1e-20f);
        w[k] *= p.routed_scaling_factor;
      }
      continue;
    }

    // Softmax over all experts, fp32.
    float max_logit = -std::numeric_limits<float>::infinity();
    for (int64_t e = 0; e < E; ++e) max_logit = std::max(max_logit, logits[e]);
    double denom = 0.0;
    for (int64_t e = 0; e < E; ++e) denom += (scores[e] = std::exp(logits[e] - max_logit));
    for (int64_t e = 0; e < E; ++e) scores[e] = static_cast<float>(scores[e] / denom);

    if (p.kind == RouterKind::SoftmaxGroupLimited) {
      for (int64_t g = 0; g < G; ++g)  // a group's score: its best expert
        group_scores[g] = *std::max_element(scores.begin() + g * per_group, scores.begin() + (g + 1) * per_group);
      top_k(group_scores.data(), G, p.topk_group, groups.data());
      std::vector<bool> keep(E, false);
      for (int32_t g : groups)
        for (int64_t i = 0; i < per_group; ++i) keep[g * per_group + i] = true;
      for (int64_t e = 0; e < E; ++e)
        if (!keep[e]) scores[e] = 0.0f;  // transformers masks with 0.0 here, not -inf
    }
    top_k(scores.data(), E, K, idx);
    // transformers 5.17's V2 router scales and never renormalizes (norm_topk_prob is unused there).
    for (int64_t k = 0; k < K; ++k) w[k] = scores[idx[k]] * p.routed_scaling_factor;
  }
}

}  // namespace dsv::ops::cpu
