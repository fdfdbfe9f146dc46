#include "core/error.h"
#include "model/layers/layers.h"
#include "ops/ops.h"

namespace dsv::layers {

void decoder_layer(const ops::Context& ctx, const ModelConfig& c, const LayerWeights& w, float* x, int64_t T,
                   KvCache& cache, int64_t cache_layer, const TokenSlots& slots, MlaMode mode, const TapFn& tap,
                   int64_t layer, const float* pending, float* ffn_out) {
  DSV_CHECK(!tap || (!pending && !ffn_out), "decoder_layer: deferred residual adds hide layer_out from taps");
  const int64_t D = c.hidden_size;
  ops::Buffer<float> normed(ctx.backend, T * D), delta(ctx.backend, T * D);
  if (pending)
    ops::add_rmsnorm(ctx, {.x = x, .delta = pending, .weight = w.input_layernorm.data, .y = normed.data(), .rows = T,
                           .dim = D, .eps = static_cast<float>(c.rms_norm_eps)});
  else
    rmsnorm_rows(ctx, x, w.input_layernorm, T, c.rms_norm_eps, normed.data());
  mla(ctx, c, w.attn, normed.data(), T, cache, cache_layer, slots, mode, delta.data(), tap, layer);
  emit(ctx, tap, "attn_out", layer, delta.data(), {T, D});
  ops::add_rmsnorm(ctx, {.x = x, .delta = delta.data(), .weight = w.post_attention_layernorm.data, .y = normed.data(),
                         .rows = T, .dim = D, .eps = static_cast<float>(c.rms_norm_eps)});
  float* ffn = ffn_out ? ffn_out : delta.data();
  if (w.is_moe) moe(ctx, c, w.moe, normed.data(), T, ffn, tap, layer);
  else mlp(ctx, c, w.mlp, normed.data(), T, ffn);
  emit(ctx, tap, "ffn_out", layer, ffn, {T, D});
  if (ffn_out) return;  // the next norm adds it
  ops::add(ctx, {.x = delta.data(), .y = x, .n = T * D});
  emit(ctx, tap, "layer_out", layer, x, {T, D});
}

}  // namespace dsv::layers
