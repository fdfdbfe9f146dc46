#include <vector>

#include "model/layers/layers.h"

namespace dsv::layers {

void decoder_layer(const ModelConfig& c, const LayerWeights& w, float* x, int64_t T, KvCache& cache,
                   int64_t cache_layer, const RopeTable& rope, MlaMode mode, const TapFn& tap, int64_t layer) {
  const int64_t D = c.hidden_size;
  std::vector<float> normed(static_cast<size_t>(T * D)), delta(static_cast<size_t>(T * D));
  rmsnorm_rows(x, w.input_layernorm, T, c.rms_norm_eps, normed.data());
  mla(c, w.attn, normed.data(), T, cache, cache_layer, rope, mode, delta.data(), tap, layer);
  emit(tap, "attn_out", layer, delta.data(), {T, D});
  for (int64_t i = 0; i < T * D; ++i) x[i] += delta[i];
  rmsnorm_rows(x, w.post_attention_layernorm, T, c.rms_norm_eps, normed.data());
  if (w.is_moe) moe(c, w.moe, normed.data(), T, delta.data(), tap, layer);
  else mlp(c, w.mlp, normed.data(), T, delta.data(), false);
  emit(tap, "ffn_out", layer, delta.data(), {T, D});
  for (int64_t i = 0; i < T * D; ++i) x[i] += delta[i];
  emit(tap, "layer_out", layer, x, {T, D});
}

}  // namespace dsv::layers
