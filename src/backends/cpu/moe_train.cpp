// Routed experts of a training step on bf16 products, forward and backward, as specified in ops.h:
// the CPU twin of moe_train_experts.cu, in plain loops (tests use small shapes).
#include <cmath>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "core/dtype.h"

namespace dsv::ops::cpu {
namespace {

// The expert of padded row r: the e with offsets[e] <= r < offsets[e + 1].
std::vector<int32_t> expert_of_rows(const MoeTrainParams& p) {
  std::vector<int32_t> expert(static_cast<size_t>(p.rows), 0);
  for (int64_t e = 0; e < p.E; ++e)
    for (int64_t r = p.offsets[e]; r < p.offsets[e + 1]; ++r) expert[static_cast<size_t>(r)] = static_cast<int32_t>(e);
  return expert;
}

float bf(uint16_t v) { return bf16_to_f32(v); }

}  // namespace

void moe_train_forward(const MoeTrainParams& p) {
  const int64_t D = p.D, F = p.F;
  const std::vector<int32_t> expert = expert_of_rows(p);
  for (int64_t r = 0; r < p.rows; ++r) {
    const int32_t q = p.row_pair[r];
    const int32_t e = expert[static_cast<size_t>(r)];
    uint16_t* xs = p.xs + r * D;
    for (int64_t d = 0; d < D; ++d) xs[d] = q < 0 ? 0 : f32_to_bf16(p.x[(q / p.K) * D + d]);
    float* gu = p.gu + r * 2 * F;
    for (int64_t f = 0; f < F; ++f) {
      float g = 0.0f, u = 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        g += bf(xs[d]) * bf(p.gate[e][f * D + d]);
        u += bf(xs[d]) * bf(p.up[e][f * D + d]);
      }
      gu[f] = g;
      gu[F + f] = u;
      p.h[r * F + f] = f32_to_bf16(g / (1.0f + std::exp(-g)) * u);
    }
    for (int64_t d = 0; d < D; ++d) {
      float acc = 0.0f;
      for (int64_t f = 0; f < F; ++f) acc += bf(p.h[r * F + f]) * bf(p.down[e][d * F + f]);
      p.y[r * D + d] = acc;
    }
  }
  for (int64_t t = 0; t < p.T; ++t)
    for (int64_t d = 0; d < D; ++d) {
      float acc = p.accumulate ? p.out[t * D + d] : 0.0f;
      for (int64_t k = 0; k < p.K; ++k) acc += p.weights[t * p.K + k] * p.y[p.slot_of_pair[t * p.K + k] * D + d];
      p.out[t * D + d] = acc;
    }
}

void moe_train_backward(const MoeTrainBackwardParams& b) {
  const MoeTrainParams& p = b.fwd;
  const int64_t D = p.D, F = p.F, pairs = p.T * p.K;
  const std::vector<int32_t> expert = expert_of_rows(p);
  for (int64_t q = 0; q < pairs; ++q) {
    float acc = 0.0f;
    for (int64_t d = 0; d < D; ++d) acc += b.dout[(q / p.K) * D + d] * p.y[p.slot_of_pair[q] * D + d];
    b.dweights[q] = acc;
  }
  std::vector<uint16_t> dys(static_cast<size_t>(p.rows * D)), dgu(static_cast<size_t>(p.rows * 2 * F));
  std::vector<float> dxs(static_cast<size_t>(p.rows * D));
  for (int64_t r = 0; r < p.rows; ++r) {
    const int32_t q = p.row_pair[r];
    const int32_t e = expert[static_cast<size_t>(r)];
    for (int64_t d = 0; d < D; ++d)
      dys[r * D + d] = q < 0 ? 0 : f32_to_bf16(p.weights[q] * b.dout[(q / p.K) * D + d]);
    for (int64_t f = 0; f < F; ++f) {
      float dh = 0.0f;
      for (int64_t d = 0; d < D; ++d) dh += bf(dys[r * D + d]) * bf(p.down[e][d * F + f]);
      const float g = p.gu[r * 2 * F + f], u = p.gu[r * 2 * F + F + f];
      const float sig = 1.0f / (1.0f + std::exp(-g));
      dgu[r * 2 * F + f] = f32_to_bf16(dh * u * (sig * (1.0f + g * (1.0f - sig))));
      dgu[r * 2 * F + F + f] = f32_to_bf16(dh * (g * sig));
    }
    for (int64_t d = 0; d < D; ++d) {
      float acc = 0.0f;
      for (int64_t f = 0; f < F; ++f) acc += bf(dgu[r * 2 * F + f]) * bf(p.gate[e][f * D + d]);
      for (int64_t f = 0; f < F; ++f) acc += bf(dgu[r * 2 * F + F + f]) * bf(p.up[e][f * D + d]);
      dxs[r * D + d] = acc;
    }
  }
  for (int64_t t = 0; t < p.T; ++t)
    for (int64_t d = 0; d < D; ++d) {
      float acc = b.dx[t * D + d];
      for (int64_t k = 0; k < p.K; ++k) acc += dxs[p.slot_of_pair[t * p.K + k] * D + d];
      b.dx[t * D + d] = acc;
    }
  for (int64_t e = 0; e < p.E; ++e) {
    const int64_t r0 = p.offsets[e], r1 = p.offsets[e + 1];
    for (int64_t f = 0; f < F; ++f)
      for (int64_t d = 0; d < D; ++d) {
        float g = 0.0f, u = 0.0f, w = 0.0f;
        for (int64_t r = r0; r < r1; ++r) {
          g += bf(dgu[r * 2 * F + f]) * bf(p.xs[r * D + d]);
          u += bf(dgu[r * 2 * F + F + f]) * bf(p.xs[r * D + d]);
          w += bf(dys[r * D + d]) * bf(p.h[r * F + f]);
        }
        const bool add = !b.overwrite_dw;
        b.dgate[e][f * D + d] = (add ? b.dgate[e][f * D + d] : 0.0f) + g;
        b.dup[e][f * D + d] = (add ? b.dup[e][f * D + d] : 0.0f) + u;
        b.ddown[e][d * F + f] = (add ? b.ddown[e][d * F + f] : 0.0f) + w;
      }
  }
}

}  // namespace dsv::ops::cpu
