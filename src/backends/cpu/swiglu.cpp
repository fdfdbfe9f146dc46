#include <cmath>
#include <vector>

#include "backends/cpu/cpu_ops.h"

namespace dsv::ops::cpu {

void swiglu(const SwigluParams& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    const float g = p.gate[i];
    p.out[i] = (g / (1.0f + std::exp(-g))) * p.up[i];
  }
}

// The gate product into y, the up product beside it, then the SwiGLU in place: the unfused ops.
void gated_linear(const GatedLinearParams& p) {
  std::vector<float> up(static_cast<size_t>(p.M * p.N));
  linear({.x = p.x, .w = p.gate, .w_bf16 = p.gate_bf16, .bias = p.gate_bias, .y = p.y, .M = p.M, .N = p.N, .K = p.K});
  linear({.x = p.x, .w = p.up, .w_bf16 = p.up_bf16, .bias = p.up_bias, .y = up.data(), .M = p.M, .N = p.N, .K = p.K});
  swiglu({.gate = p.y, .up = up.data(), .out = p.y, .n = p.M * p.N});
}

}  // namespace dsv::ops::cpu
