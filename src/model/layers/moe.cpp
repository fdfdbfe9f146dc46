// DeepSeekMoE: routed experts (top-K per token, weighted) plus always-on shared experts.
#include <vector>

#include "model/layers/layers.h"
#include "ops/ops.h"

namespace dsv::layers {

void moe(const ModelConfig& c, const MoeWeights& w, const float* x, int64_t T, float* out, const TapFn& tap,
         int64_t layer) {
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const ops::Context ctx;

  std::vector<float> logits(static_cast<size_t>(T * E));  // router in fp32
  ops::linear(ctx, {.x = x, .w = w.router.data, .y = logits.data(), .M = T, .N = E, .K = D});
  std::vector<int32_t> indices(static_cast<size_t>(T * K));
  std::vector<float> weights(static_cast<size_t>(T * K));
  ops::route(ctx, {.logits = logits.data(), .correction_bias = w.score_correction_bias.data,
                   .indices = indices.data(), .weights = weights.data(), .T = T, .E = E, .K = K,
                   .n_group = c.n_group, .topk_group = c.topk_group, .kind = c.router,
                   .norm_topk_prob = c.norm_topk_prob,
                   .routed_scaling_factor = static_cast<float>(c.routed_scaling_factor)});
  emit(tap, "router_logits", layer, logits.data(), {T, E});

  // Group the (token, slot) pairs by expert so each expert runs one matrix product over its tokens.
  std::vector<std::vector<int64_t>> assigned(static_cast<size_t>(E));
  for (int64_t i = 0; i < T * K; ++i) assigned[indices[i]].push_back(i);
  for (int64_t t = 0; t < T * D; ++t) out[t] = 0.0f;
  std::vector<float> xe, ye;
  for (int64_t e = 0; e < E; ++e) {
    const auto& pairs = assigned[e];
    if (pairs.empty()) continue;
    const int64_t n = static_cast<int64_t>(pairs.size());
    xe.resize(static_cast<size_t>(n * D));
    ye.resize(static_cast<size_t>(n * D));
    for (int64_t r = 0; r < n; ++r) std::copy(x + (pairs[r] / K) * D, x + (pairs[r] / K + 1) * D, xe.data() + r * D);
    mlp(c, w.experts[e], xe.data(), n, ye.data(), false);
    for (int64_t r = 0; r < n; ++r) {
      const float g = weights[pairs[r]];
      float* o = out + (pairs[r] / K) * D;
      for (int64_t d = 0; d < D; ++d) o[d] += g * ye[r * D + d];
    }
  }
  emit(tap, "moe_routed", layer, out, {T, D});
  if (!w.shared.gate_proj.empty() && w.shared.gate_proj.dim(0) > 0) mlp(c, w.shared, x, T, out, /*accumulate=*/true);
}

}  // namespace dsv::layers
