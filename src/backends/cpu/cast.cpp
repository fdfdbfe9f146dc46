// fp32 <-> bf16 conversions (ops::cast), with the rounding of core/dtype.h (torch's .to(bfloat16)).
#include "backends/cpu/cpu_ops.h"
#include "core/dtype.h"

namespace dsv::ops::cpu {

void cast(const CastParams& p) {
  if (p.to_bf16) {
    const float* x = static_cast<const float*>(p.x);
    uint16_t* y = static_cast<uint16_t*>(p.y);
    for (int64_t i = 0; i < p.n; ++i) y[i] = f32_to_bf16(x[i]);
  } else {
    const uint16_t* x = static_cast<const uint16_t*>(p.x);
    float* y = static_cast<float*>(p.y);
    for (int64_t i = 0; i < p.n; ++i) y[i] = bf16_to_f32(x[i]);
  }
}

}  // namespace dsv::ops::cpu
