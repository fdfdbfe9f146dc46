#include <cmath>

#include "model/layers/layers.h"

namespace dsv::layers {

RopeTable make_rope_table(const ops::Context& ctx, const ModelConfig& c, int64_t first_position, int64_t T,
                          int64_t sequences, bool negate_sin) {
  // Built by an op on the backend: on a device, a 4096-token prompt's tables (131k cos/sin pairs)
  // took the host ~2.7 ms while the device waited at the start of the prefill.
  const int64_t half = c.qk_rope_head_dim / 2, rows = sequences * T;
  const std::vector<float> inv_freq = c.rope_inv_freq();
  const ops::Buffer<float> inv(ctx, inv_freq.data(), inv_freq.size());
  RopeTable table{.tokens = rows, .half = half, .cos = ops::Buffer<float>(ctx.backend, rows * half),
                  .sin = ops::Buffer<float>(ctx.backend, rows * half)};
  for (int64_t s = 0; s < sequences; ++s)
    ops::rope_table(ctx, {.inv_freq = inv.data(), .cos = table.cos.data() + s * T * half,
                          .sin = table.sin.data() + s * T * half, .first = first_position, .T = T, .half = half,
                          .factor = static_cast<float>(c.rope_attention_factor()), .negate_sin = negate_sin});
  return table;
}

void rope_angles(const ModelConfig& c, const std::vector<int64_t>& positions, float* cos, float* sin,
                 bool negate_sin) {
  const int64_t half = c.qk_rope_head_dim / 2, T = static_cast<int64_t>(positions.size());
  const std::vector<float> inv_freq = c.rope_inv_freq();
  const float attention_factor = static_cast<float>(c.rope_attention_factor());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      // fp32 angle as transformers computes it (inv_freq @ position_ids in float32).
      const float angle = inv_freq[i] * static_cast<float>(positions[t]);
      cos[t * half + i] = std::cos(angle) * attention_factor;
      sin[t * half + i] = (negate_sin ? -std::sin(angle) : std::sin(angle)) * attention_factor;
    }
}

}  // namespace dsv::layers
