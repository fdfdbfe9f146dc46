#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "core/dtype.h"
#include "core/error.h"

namespace dsv::ops::cpu {
namespace {
float widen(float v) { return v; }
float widen(uint16_t v) { return bf16_to_f32(v); }

// One problem: T queries over S keys.
template <typename KV>
void attention_impl(const AttentionParams& p, const KV* keys, const KV* values) {
  const int64_t past = p.S - p.T, Hkv = p.Hkv ? p.Hkv : p.H;
  const int64_t ks = p.k_stride ? p.k_stride : Hkv * p.Dqk, vs = p.v_stride ? p.v_stride : Hkv * p.Dv;
  std::vector<float> scores(static_cast<size_t>(p.S));
  for (int64_t t = 0; t < p.T; ++t) {
    const int64_t visible = past + t + 1;  // causal: keys 0 .. past + t
    for (int64_t h = 0; h < p.H; ++h) {
      const float* q = p.q + (t * p.H + h) * p.Dqk;
      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < visible; ++s) {
        const KV* k = keys + s * ks + (h % Hkv) * p.Dqk;
        float dot = 0.0f;
        for (int64_t d = 0; d < p.Dqk; ++d) dot += q[d] * widen(k[d]);
        scores[s] = dot * p.scale;
        max_score = std::max(max_score, scores[s]);
      }
      double denom = 0.0;
      for (int64_t s = 0; s < visible; ++s) {
        scores[s] = std::exp(scores[s] - max_score);
        denom += scores[s];
      }
      const float inv = static_cast<float>(1.0 / denom);
      if (p.lse) p.lse[t * p.H + h] = max_score + static_cast<float>(std::log(denom));
      float* out = p.out + (t * p.H + h) * p.Dv;
      for (int64_t d = 0; d < p.Dv; ++d) out[d] = 0.0f;
      for (int64_t s = 0; s < visible; ++s) {
        const float w = scores[s] * inv;
        const KV* v = values + s * vs + (h % Hkv) * p.Dv;
        for (int64_t d = 0; d < p.Dv; ++d) out[d] += w * widen(v[d]);
      }
    }
  }
}

template <typename KV>
void attention_batched(const AttentionParams& p, const KV* keys, const KV* values) {
  for (int64_t b = 0; b < p.batch; ++b) {
    AttentionParams one = p;
    one.q = p.q + b * p.T * p.H * p.Dqk;
    one.out = p.out + b * p.T * p.H * p.Dv;
    if (p.lse) one.lse = p.lse + b * p.T * p.H;
    if (p.kv_lengths) {
      one.S = p.kv_lengths[b];
      DSV_CHECK(one.S >= p.T && one.S <= p.S, "attention: problem {} has {} keys; expected {} .. {}", b, one.S, p.T,
                p.S);
    }
    attention_impl(one, keys + b * p.k_batch_stride, values + b * p.v_batch_stride);
  }
}
}  // namespace

void attention(const AttentionParams& p) {
  if (p.k_bf16) return attention_batched(p, p.k_bf16, p.v_bf16);
  attention_batched(p, p.k, p.v);
}

}  // namespace dsv::ops::cpu
