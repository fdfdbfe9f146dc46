// One AdamW element update (ops::adamw's formula, ops.h), shared by the CPU op and its CUDA twin so
// that both run the same fp32 arithmetic; the per-step scalars come from the host in double, as
// torch computes them in Python.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/dtype.h"
#include "ops/counter_rng.h"
#include "ops/ops.h"

namespace dsv::ops {

// decay = 1 - lr * weight_decay, step_size = lr / (1 - b1^step), bc2_sqrt = sqrt(1 - b2^step).
struct AdamWScalars {
  float decay = 1.0f, step_size = 0.0f, bc2_sqrt = 1.0f;
};
inline AdamWScalars adamw_scalars(const AdamWParams& p) {
  const double step = static_cast<double>(p.step);
  return {static_cast<float>(1.0 - static_cast<double>(p.lr) * static_cast<double>(p.weight_decay)),
          static_cast<float>(static_cast<double>(p.lr) / (1.0 - std::pow(static_cast<double>(p.beta1), step))),
          static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(p.beta2), step)))};
}

// The fp32 arithmetic of one element: new moments and new parameter from the old values (moments
// already widened to fp32). Storing the moments (fp32, or bf16 with stochastic rounding) is the
// caller's part, so that a vectorized kernel can load and store several elements at once.
struct AdamWUpdate {
  float param, m, v;
};
DSV_HOST_DEVICE inline AdamWUpdate adamw_update(const AdamWParams& p, const AdamWScalars& s, float param,
                                                float grad, float m_old, float v_old) {
  const float g = grad * p.grad_scale;
  const float m = p.beta1 * m_old + (1.0f - p.beta1) * g;
  const float v = p.beta2 * v_old + (1.0f - p.beta2) * g * g;
  return {param * s.decay - s.step_size * m / (sqrtf(v) / s.bc2_sqrt + p.eps), m, v};
}

// The stored bf16 moments of element `index` (the caller's flat position, p.offset + i): stochastic
// rounding, the low 16 noise bits for m and the high 16 for v.
DSV_HOST_DEVICE inline void round_moments_bf16(const AdamWParams& p, int64_t index, float m, float v,
                                               uint16_t& m_out, uint16_t& v_out) {
  const uint32_t noise = moment_noise(p.step, index);
  m_out = stochastic_round_bf16(m, noise);
  v_out = stochastic_round_bf16(v, noise >> 16);
}

// Element i of p: moments (fp32, or bf16 stored with stochastic rounding while this step's update
// uses the fp32 values), then the decayed, bias-corrected parameter update and its optional bf16 copy.
DSV_HOST_DEVICE inline void adamw_element(const AdamWParams& p, const AdamWScalars& s, int64_t i) {
  const bool bf16_moments = p.m_bf16 != nullptr;
  const float m_old = bf16_moments ? bf16_to_f32(p.m_bf16[i]) : p.m[i];
  const float v_old = bf16_moments ? bf16_to_f32(p.v_bf16[i]) : p.v[i];
  const AdamWUpdate u = adamw_update(p, s, p.param[i], p.grad[i], m_old, v_old);
  if (bf16_moments) {
    round_moments_bf16(p, p.offset + i, u.m, u.v, p.m_bf16[i], p.v_bf16[i]);
  } else {
    p.m[i] = u.m;
    p.v[i] = u.v;
  }
  p.param[i] = u.param;
  if (p.param_bf16) p.param_bf16[i] = f32_to_bf16(u.param);
}

}  // namespace dsv::ops
