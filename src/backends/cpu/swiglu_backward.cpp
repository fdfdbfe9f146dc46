// Backward of out = silu(gate) * up, elementwise. Every input element is read before the outputs
// at that index are written, so dgate/dup may alias gate/up.
#include <cmath>

#include "backends/cpu/cpu_ops.h"

namespace dsv::ops::cpu {

void swiglu_backward(const SwigluBackwardParams& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    const float g = p.gate[i], u = p.up[i], d = p.dout[i];
    const float sig = 1.0f / (1.0f + std::exp(-g));  // exp overflow gives sig = 0: the right limit
    // silu'(g) = sig + g * sig * (1 - sig)
    const float dsilu = sig * (1.0f + g * (1.0f - sig));
    p.dgate[i] = d * u * dsilu;
    p.dup[i] = d * (g * sig);
  }
}

}  // namespace dsv::ops::cpu
