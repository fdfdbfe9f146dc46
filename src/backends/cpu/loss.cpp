// Cross-entropy over rows of logits, in place (see ops.h): row t becomes
// grad_scale * (softmax(logits[t]) - onehot(targets[t])), loss[t] = logsumexp - logits[t, target].
#include <algorithm>
#include <cmath>

#include "backends/cpu/cpu_ops.h"
#include "core/error.h"

namespace dsv::ops::cpu {

void cross_entropy(const CrossEntropyParams& p) {
  const int64_t V = p.V;
  // Targets are data: check them all before any row is overwritten.
  for (int64_t t = 0; t < p.T; ++t)
    DSV_CHECK(p.targets[t] < V, "cross_entropy: row {} has target id {}, but the vocabulary has {} entries", t,
              p.targets[t], V);
  for (int64_t t = 0; t < p.T; ++t) {
    float* row = p.logits + t * V;
    const int32_t target = p.targets[t];
    if (target < 0) {  // ignored
      p.loss[t] = 0.0f;
      std::fill(row, row + V, 0.0f);
      continue;
    }
    const float picked = row[target];
    const float max_logit = *std::max_element(row, row + V);  // max-subtracted: exp never overflows
    double sum = 0.0;
    for (int64_t v = 0; v < V; ++v) sum += (row[v] = std::exp(row[v] - max_logit));
    // loss = log(sum) + max - picked, with the small difference (max - picked) taken first.
    p.loss[t] = static_cast<float>(std::log(sum) + (static_cast<double>(max_logit) - picked));
    const float inv = static_cast<float>(p.grad_scale / sum);
    for (int64_t v = 0; v < V; ++v) row[v] *= inv;
    row[target] -= p.grad_scale;
  }
}

}  // namespace dsv::ops::cpu
