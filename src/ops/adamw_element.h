// One AdamW element update (ops::adamw's formula, ops.h), shared by the CPU op and its CUDA twin so
// that both run the same fp32 arithmetic; the per-step scalars come from the host in double, as
// torch computes them in Python.
#pragma once
#include <cmath>
#include <cstdint>

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

DSV_HOST_DEVICE inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
#if defined(__CUDA_ARCH__)
  f = __uint_as_float(bits);
#else
  __builtin_memcpy(&f, &bits, 4);
#endif
  return f;
}

// Round to nearest even, NaN stays NaN (core/dtype.h f32_to_bf16, usable on the device).
DSV_HOST_DEVICE inline uint16_t float_to_bf16_bits(float f) {
  uint32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(f);
#else
  __builtin_memcpy(&bits, &f, 4);
#endif
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// Element i of p: moments (fp32, or bf16 stored with stochastic rounding while this step's update
// uses the fp32 values), then the decayed, bias-corrected parameter update and its optional bf16 copy.
DSV_HOST_DEVICE inline void adamw_element(const AdamWParams& p, const AdamWScalars& s, int64_t i) {
  const bool bf16_moments = p.m_bf16 != nullptr;
  const float g = p.grad[i] * p.grad_scale;
  const float m_old = bf16_moments ? bf16_bits_to_float(p.m_bf16[i]) : p.m[i];
  const float v_old = bf16_moments ? bf16_bits_to_float(p.v_bf16[i]) : p.v[i];
  const float m = p.beta1 * m_old + (1.0f - p.beta1) * g;
  const float v = p.beta2 * v_old + (1.0f - p.beta2) * g * g;
  if (bf16_moments) {
    const uint32_t noise = moment_noise(p.step, p.offset + i);
    p.m_bf16[i] = stochastic_round_bf16(m, noise);
    p.v_bf16[i] = stochastic_round_bf16(v, noise >> 16);
  } else {
    p.m[i] = m;
    p.v[i] = v;
  }
  const float w = p.param[i] * s.decay - s.step_size * m / (sqrtf(v) / s.bc2_sqrt + p.eps);
  p.param[i] = w;
  if (p.param_bf16) p.param_bf16[i] = float_to_bf16_bits(w);
}

}  // namespace dsv::ops
