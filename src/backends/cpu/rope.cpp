#include <cmath>

#include "backends/cpu/cpu_ops.h"

namespace dsv::ops::cpu {

void rope(const RopeParams& p) {
  const int64_t half = p.rope_dim / 2;
  for (int64_t t = 0; t < p.tokens; ++t) {
    const float* c = p.cos + t * half;
    const float* s = p.sin + t * half;
    for (int64_t h = 0; h < p.heads; ++h) {
      float* x = p.x + t * p.token_stride + h * p.head_stride + p.offset;
      float* y = p.y ? p.y + t * p.y_token_stride + h * p.y_head_stride + p.y_offset : x;
      for (int64_t i = 0; i < half; ++i) {
        // Interleaved: pair (2i, 2i+1), as DeepSeek's complex multiply. HalfSplit: pair (i, i+R/2).
        const int64_t a = p.layout == RopeLayout::Interleaved ? 2 * i : i;
        const int64_t b = p.layout == RopeLayout::Interleaved ? 2 * i + 1 : i + half;
        const float x0 = x[a], x1 = x[b];
        y[a] = x0 * c[i] - x1 * s[i];
        y[b] = x1 * c[i] + x0 * s[i];
      }
    }
  }
}

void rope_table(const RopeTableParams& p) {
  for (int64_t t = 0; t < p.T; ++t)
    for (int64_t i = 0; i < p.half; ++i) {
      const float angle = p.inv_freq[i] * static_cast<float>(p.first + t);
      p.cos[t * p.half + i] = std::cos(angle) * p.factor;
      p.sin[t * p.half + i] = (p.negate_sin ? -std::sin(angle) : std::sin(angle)) * p.factor;
    }
}

}  // namespace dsv::ops::cpu
