// Routed experts for few tokens, per (token, slot) pair, as specified in ops.h.
#include <cmath>

#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "core/dtype.h"

namespace dsv::ops::cpu {

void moe_experts(const MoeExpertsParams& p) {
  const int64_t pairs = p.T * p.K;
  const bool bf16 = p.gate_bf16 != nullptr;
  // Element i of weight matrix `table` of expert e, widened to fp32.
  auto weight = [&](const float* const* f32, const uint16_t* const* b16, int32_t e, int64_t i) {
    return bf16 ? bf16_to_f32(b16[e][i]) : f32[e][i];
  };
  float* h = p.scratch;                 // [pairs, F]
  float* y = p.scratch + pairs * p.F;   // [pairs, D]
  std::vector<float> x(static_cast<size_t>(p.D)), hq(static_cast<size_t>(p.F));
  for (int64_t q = 0; q < pairs; ++q) {
    const int32_t e = p.indices[q];
    for (int64_t d = 0; d < p.D; ++d) {
      const float v = p.x[(q / p.K) * p.D + d];
      x[d] = bf16 ? round_to_bf16(v) : v;
    }
    for (int64_t f = 0; f < p.F; ++f) {
      float gs = 0.0f, us = 0.0f;
      for (int64_t d = 0; d < p.D; ++d) {
        gs += x[d] * weight(p.gate, p.gate_bf16, e, f * p.D + d);
        us += x[d] * weight(p.up, p.up_bf16, e, f * p.D + d);
      }
      h[q * p.F + f] = (gs / (1.0f + std::exp(-gs))) * us;
      hq[f] = bf16 ? round_to_bf16(h[q * p.F + f]) : h[q * p.F + f];
    }
    for (int64_t d = 0; d < p.D; ++d) {
      float acc = 0.0f;
      for (int64_t f = 0; f < p.F; ++f) acc += hq[f] * weight(p.down, p.down_bf16, e, d * p.F + f);
      y[q * p.D + d] = acc;
    }
  }
  for (int64_t t = 0; t < p.T; ++t)
    for (int64_t d = 0; d < p.D; ++d) {
      float acc = 0.0f;
      for (int64_t k = 0; k < p.K; ++k) acc += p.weights[t * p.K + k] * y[(t * p.K + k) * p.D + d];
      p.out[t * p.D + d] = acc;
    }
}

}  // namespace dsv::ops::cpu
