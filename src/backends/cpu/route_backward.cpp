// Gradient of route()'s combine weights with respect to the router logits (see ops.h). The
// selection (top-k, groups, correction bias) is piecewise constant: only the weights carry gradient.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "core/error.h"

namespace dsv::ops::cpu {

void route_backward(const RouteBackwardParams& p) {
  const int64_t E = p.E, K = p.K;
  const float scale = p.routed_scaling_factor;
  // Indices are data: check them all before any row of dlogits is touched.
  for (int64_t t = 0; t < p.T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      const int32_t e = p.indices[t * K + k];
      DSV_CHECK(e >= 0 && e < E, "route_backward: token {} slot {} has expert {}, outside 0..{}", t, k, e, E - 1);
    }
  std::vector<float> probs(static_cast<size_t>(E)), g(static_cast<size_t>(E)), sel(static_cast<size_t>(K));
  for (int64_t t = 0; t < p.T; ++t) {
    const float* logits = p.logits + t * E;
    const int32_t* idx = p.indices + t * K;
    const float* dw = p.dweights + t * K;
    float* dl = p.dlogits + t * E;
    if (!p.accumulate) std::fill(dl, dl + E, 0.0f);

    if (p.kind == RouterKind::SigmoidNoauxGroups) {
      // w_k = scale * s_k / D, D = sum_j s_j + 1e-20 (norm_topk_prob) or 1:
      // dL/ds_j = scale * (dw_j / D - sum_k dw_k s_k / D^2); ds/dlogit = s (1 - s).
      float sum = 0.0f;  // fp32 as in route()
      double dw_dot_s = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        sum += (sel[k] = 1.0f / (1.0f + std::exp(-logits[idx[k]])));
        dw_dot_s += static_cast<double>(dw[k]) * sel[k];
      }
      const double denom = p.norm_topk_prob ? static_cast<double>(sum + 1e-20f) : 1.0;
      for (int64_t k = 0; k < K; ++k) {
        double ds = dw[k] / denom;
        if (p.norm_topk_prob) ds -= dw_dot_s / (denom * denom);
        const float s = sel[k];
        dl[idx[k]] += static_cast<float>(scale * ds) * s * (1.0f - s);  // += : repeated indices add up
      }
      continue;
    }

    // Softmax kinds: the weights are scale * softmax(all E logits)[e_k] (route() never renormalizes
    // them, whatever norm_topk_prob says; group masking only steers the choice).
    float max_logit = -std::numeric_limits<float>::infinity();
    for (int64_t e = 0; e < E; ++e) max_logit = std::max(max_logit, logits[e]);
    double denom = 0.0;
    for (int64_t e = 0; e < E; ++e) denom += (probs[e] = std::exp(logits[e] - max_logit));
    for (int64_t e = 0; e < E; ++e) probs[e] = static_cast<float>(probs[e] / denom);
    std::fill(g.begin(), g.end(), 0.0f);
    for (int64_t k = 0; k < K; ++k) g[idx[k]] += scale * dw[k];
    double pg = 0.0;
    for (int64_t k = 0; k < K; ++k) pg += static_cast<double>(probs[idx[k]]) * (scale * dw[k]);
    const float pgf = static_cast<float>(pg);
    for (int64_t e = 0; e < E; ++e) dl[e] += probs[e] * (g[e] - pgf);
  }
}

}  // namespace dsv::ops::cpu
