// Training forward/backward of one decoder layer: x += attn(norm1 x); x += ffn(norm2 x).
#include "ops/ops.h"
#include "train/param_store.h"
#include "train/train_layers.h"

namespace dsv::train {
void copy_values(const ops::Context& ctx, const float* src, float* dst, int64_t n) {
  ops::copy2d(ctx, {.src = src, .dst = dst, .rows = 1, .cols = n, .src_stride = n, .dst_stride = n});
}

void layer_forward(const ops::Context& ctx, const ModelConfig& c, const LayerWeights& w, float* x, Batch batch,
                   const Ropes& ropes, const AuxSpec& aux, LayerSaved& s, MoeStats& stats) {
  const int64_t T = batch.tokens(), D = c.hidden_size;
  const ops::Backend be = ctx.backend;
  const float eps = static_cast<float>(c.rms_norm_eps);
  s.x_in = Buffer<float>(be, T * D);
  s.xn1 = Buffer<float>(be, T * D);
  s.x_mid = Buffer<float>(be, T * D);
  s.xn2 = Buffer<float>(be, T * D);
  Buffer<float> delta(be, T * D);
  copy_values(ctx, x, s.x_in.data(), T * D);
  ops::rmsnorm(ctx, {.x = x, .weight = w.input_layernorm.data, .y = s.xn1.data(), .rows = T, .dim = D, .eps = eps});
  mla_forward(ctx, c, w.attn, s.xn1.data(), batch, ropes, delta.data(), s.attn);
  ops::add(ctx, {.x = delta.data(), .y = x, .n = T * D});
  copy_values(ctx, x, s.x_mid.data(), T * D);
  ops::rmsnorm(ctx, {.x = x, .weight = w.post_attention_layernorm.data, .y = s.xn2.data(), .rows = T, .dim = D,
                     .eps = eps});
  stats = MoeStats{};
  if (w.is_moe) moe_forward(ctx, c, w.moe, s.xn2.data(), batch, aux, delta.data(), s.moe, stats);
  else mlp_forward(ctx, w.mlp, s.xn2.data(), T, D, delta.data(), false, s.mlp);
  ops::add(ctx, {.x = delta.data(), .y = x, .n = T * D});
}

void drop_recomputable(LayerSaved& s) {
  s.xn1 = Buffer<float>();
  s.xn2 = Buffer<float>();
  s.attn.q_latent = Buffer<float>();
  s.attn.q = Buffer<float>();
  s.attn.latent = Buffer<float>();
  s.attn.k = Buffer<float>();
  s.attn.v = Buffer<float>();
}

void recompute_dropped(const ops::Context& ctx, const ModelConfig& c, const LayerWeights& w, Batch batch,
                       const Ropes& ropes, LayerSaved& s) {
  const int64_t T = batch.tokens(), D = c.hidden_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  s.xn1 = Buffer<float>(ctx.backend, T * D);
  s.xn2 = Buffer<float>(ctx.backend, T * D);
  ops::rmsnorm(ctx, {.x = s.x_in.data(), .weight = w.input_layernorm.data, .y = s.xn1.data(), .rows = T, .dim = D,
                     .eps = eps});
  ops::rmsnorm(ctx, {.x = s.x_mid.data(), .weight = w.post_attention_layernorm.data, .y = s.xn2.data(), .rows = T,
                     .dim = D, .eps = eps});
  mla_make_queries(ctx, c, w.attn, s.xn1.data(), batch, ropes, s.attn);
  mla_make_keys_values(ctx, c, w.attn, batch, ropes, s.attn);
}

void layer_backward(const ops::Context& ctx, const ModelConfig& c, const LayerWeights& w, const LayerWeights& g,
                    Batch batch, const Ropes& ropes, const LayerSaved& s, float* dx, bool overwrite_expert_grads) {
  const int64_t T = batch.tokens(), D = c.hidden_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  Buffer<float> dn(ctx.backend, T * D);
  // ffn branch: dx (wrt the output) also flows straight through the residual.
  if (w.is_moe) moe_backward(ctx, c, w.moe, g.moe, s.xn2.data(), batch, s.moe, dx, dn.data(), overwrite_expert_grads);
  else mlp_backward(ctx, w.mlp, g.mlp, s.xn2.data(), T, D, s.mlp, dx, dn.data(), false);
  ops::rmsnorm_backward(ctx, {.x = s.x_mid.data(), .weight = w.post_attention_layernorm.data, .dy = dn.data(),
                              .dx = dx, .dweight = mut(g.post_attention_layernorm), .rows = T, .dim = D, .eps = eps,
                              .accumulate_dx = true});
  // attention branch
  mla_backward(ctx, c, w.attn, g.attn, s.xn1.data(), batch, ropes, s.attn, dx, dn.data());
  ops::rmsnorm_backward(ctx, {.x = s.x_in.data(), .weight = w.input_layernorm.data, .dy = dn.data(), .dx = dx,
                              .dweight = mut(g.input_layernorm), .rows = T, .dim = D, .eps = eps,
                              .accumulate_dx = true});
}

}  // namespace dsv::train
