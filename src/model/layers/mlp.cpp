// SwiGLU MLP: down(silu(gate x) * up x). Dense layers, experts and shared experts all use it.
#include "model/layers/layers.h"
#include "ops/ops.h"

namespace dsv::layers {

void mlp(const ops::Context& ctx, const ModelConfig& c, const MlpWeights& w, const float* x, int64_t T, float* out) {
  const int64_t D = c.hidden_size, F = w.gate_proj.dim(0);
  ops::Buffer<float> gate(ctx.backend, T * F);
  ops::gated_linear(ctx, {.x = x, .gate = w.gate_proj.data, .up = w.up_proj.data, .gate_bf16 = w.gate_proj.bf16,
                          .up_bf16 = w.up_proj.bf16, .gate_bias = w.gate_bias.data, .up_bias = w.up_bias.data,
                          .y = gate.data(), .M = T, .N = F, .K = D});
  ops::linear(ctx, {.x = gate.data(), .w = w.down_proj.data, .w_bf16 = w.down_proj.bf16, .bias = w.down_bias.data, .y = out, .M = T, .N = D,
                    .K = F});
}

}  // namespace dsv::layers
