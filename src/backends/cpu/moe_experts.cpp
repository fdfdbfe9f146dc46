// Routed experts for few tokens, per (token, slot) pair, as specified in ops.h.
#include <cmath>

#include "backends/cpu/cpu_ops.h"

namespace dsv::ops::cpu {

void moe_experts(const MoeExpertsParams& p) {
  const int64_t pairs = p.T * p.K;
  float* h = p.scratch;                 // [pairs, F]
  float* y = p.scratch + pairs * p.F;   // [pairs, D]
  for (int64_t q = 0; q < pairs; ++q) {
    const int32_t e = p.indices[q];
    const float* x = p.x + (q / p.K) * p.D;
    for (int64_t f = 0; f < p.F; ++f) {
      const float* g = p.gate[e] + f * p.D;
      const float* u = p.up[e] + f * p.D;
      float gs = 0.0f, us = 0.0f;
      for (int64_t d = 0; d < p.D; ++d) {
        gs += x[d] * g[d];
        us += x[d] * u[d];
      }
      h[q * p.F + f] = (gs / (1.0f + std::exp(-gs))) * us;
    }
    for (int64_t d = 0; d < p.D; ++d) {
      const float* w = p.down[e] + d * p.F;
      float acc = 0.0f;
      for (int64_t f = 0; f < p.F; ++f) acc += h[q * p.F + f] * w[f];
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
