#include <cmath>

#include "model/layers/layers.h"

namespace dsv::layers {

RopeTable make_rope_table(const ModelConfig& c, int64_t first_position, int64_t T) {
  RopeTable r;
  r.tokens = T;
  r.half = c.qk_rope_head_dim / 2;
  const std::vector<float> inv_freq = c.rope_inv_freq();
  const float attention_factor = static_cast<float>(c.rope_attention_factor());
  r.cos.resize(static_cast<size_t>(T * r.half));
  r.sin.resize(static_cast<size_t>(T * r.half));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < r.half; ++i) {
      // fp32 angle as transformers computes it (inv_freq @ position_ids in float32).
      const float angle = inv_freq[i] * static_cast<float>(first_position + t);
      r.cos[t * r.half + i] = std::cos(angle) * attention_factor;
      r.sin[t * r.half + i] = std::sin(angle) * attention_factor;
    }
  return r;
}

}  // namespace dsv::layers
