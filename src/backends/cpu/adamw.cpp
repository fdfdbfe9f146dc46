// One AdamW step in torch.optim.AdamW's single-tensor order: decay, moments, bias-corrected update.
// Scalars (bias corrections, step size) in double as torch computes them in Python; the per-element
// arithmetic in fp32 as torch does on fp32 tensors.
#include <cmath>

#include "backends/cpu/cpu_ops.h"
#include "core/dtype.h"
#include "ops/counter_rng.h"

namespace dsv::ops::cpu {

void adamw(const AdamWParams& p) {
  const double step = static_cast<double>(p.step);
  const float decay = static_cast<float>(1.0 - static_cast<double>(p.lr) * p.weight_decay);
  const float step_size = static_cast<float>(p.lr / (1.0 - std::pow(static_cast<double>(p.beta1), step)));
  const float bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(p.beta2), step)));
  const float b1 = p.beta1, b2 = p.beta2, one_b1 = 1.0f - b1, one_b2 = 1.0f - b2;
  const bool bf16_moments = p.m_bf16 != nullptr;
  for (int64_t i = 0; i < p.n; ++i) {
    const float g = p.grad[i] * p.grad_scale;
    const float m_old = bf16_moments ? bf16_to_f32(p.m_bf16[i]) : p.m[i];
    const float v_old = bf16_moments ? bf16_to_f32(p.v_bf16[i]) : p.v[i];
    const float m = b1 * m_old + one_b1 * g;
    const float v = b2 * v_old + one_b2 * g * g;
    if (bf16_moments) {  // this step's update uses the fp32 moments; only their storage is rounded
      const uint32_t noise = moment_noise(p.step, p.offset + i);
      p.m_bf16[i] = stochastic_round_bf16(m, noise);
      p.v_bf16[i] = stochastic_round_bf16(v, noise >> 16);
    } else {
      p.m[i] = m;
      p.v[i] = v;
    }
    const float denom = std::sqrt(v) / bc2_sqrt + p.eps;
    p.param[i] = p.param[i] * decay - step_size * m / denom;
    if (p.param_bf16) p.param_bf16[i] = f32_to_bf16(p.param[i]);
  }
}

}  // namespace dsv::ops::cpu
