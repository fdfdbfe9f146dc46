#include <cmath>

#include "backends/cpu/cpu_ops.h"

namespace dsv::ops::cpu {

void swiglu(const SwigluParams& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    const float g = p.gate[i];
    p.out[i] = (g / (1.0f + std::exp(-g))) * p.up[i];
  }
}

}  // namespace dsv::ops::cpu
