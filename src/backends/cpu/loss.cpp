// Cross-entropy over rows of logits, in place or into a bf16 gradient (see ops.h): row t becomes
// grad_scale * (softmax(logits[t]) - onehot(targets[t])), loss[t] = logsumexp - logits[t, target].
#include <algorithm>
#include <cmath>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "core/dtype.h"
#include "core/error.h"

namespace dsv::ops::cpu {

void cross_entropy(const CrossEntropyParams& p) {
  const int64_t V = p.V;
  // Targets are data: check them all before any row is overwritten.
  for (int64_t t = 0; t < p.T; ++t)
    DSV_CHECK(p.targets[t] < V, "cross_entropy: row {} has target id {}, but the vocabulary has {} entries", t,
              p.targets[t], V);
  std::vector<float> grad(p.dlogits_bf16 ? static_cast<size_t>(V) : 0);
  for (int64_t t = 0; t < p.T; ++t) {
    // The gradient goes over the logits, or into `grad` first when it is to be stored as bf16.
    float* row = p.logits + t * V;
    float* out = p.dlogits_bf16 ? grad.data() : row;
    const int32_t target = p.targets[t];
    if (target < 0) {  // ignored
      p.loss[t] = 0.0f;
      std::fill(out, out + V, 0.0f);
    } else {
      const float picked = row[target];
      const float max_logit = *std::max_element(row, row + V);  // max-subtracted: exp never overflows
      double sum = 0.0;
      for (int64_t v = 0; v < V; ++v) sum += (out[v] = std::exp(row[v] - max_logit));
      // loss = log(sum) + max - picked, with the small difference (max - picked) taken first.
      p.loss[t] = static_cast<float>(std::log(sum) + (static_cast<double>(max_logit) - picked));
      const float inv = static_cast<float>(p.grad_scale / sum);
      for (int64_t v = 0; v < V; ++v) out[v] *= inv;
      out[target] -= p.grad_scale;
    }
    if (p.dlogits_bf16)
      for (int64_t v = 0; v < V; ++v) p.dlogits_bf16[t * V + v] = f32_to_bf16(out[v]);
  }
}

}  // namespace dsv::ops::cpu
