// Whole-model forward on the CPU: embed -> decoder layers -> final norm -> LM head.
#include <algorithm>
#include <vector>

#include "core/error.h"
#include "model/layers/layers.h"
#include "model/model.h"
#include "ops/ops.h"

namespace dsv {

KvCache::KvCache(int64_t layers_, int64_t width_, int64_t capacity_)
    : layers(layers_), width(width_), capacity(capacity_), length(0) {
  rows.assign(static_cast<size_t>(layers), std::vector<float>(static_cast<size_t>(capacity * width)));
}

KvCache make_kv_cache(const ModelConfig& c, int64_t capacity) {
  return KvCache(c.num_hidden_layers, c.kv_lora_rank + c.qk_rope_head_dim, capacity);
}

void forward(const Model& m, const int32_t* ids, int64_t T, KvCache& cache, const ForwardOptions& opt) {
  const ModelConfig& c = m.config;
  const Weights& w = m.weights;
  const int64_t D = c.hidden_size, V = c.vocab_size;
  DSV_CHECK(T > 0, "forward: no tokens");
  DSV_CHECK(cache.layers == c.num_hidden_layers, "forward: cache has {} layers, model {}", cache.layers,
            c.num_hidden_layers);
  for (int64_t t = 0; t < T; ++t)
    DSV_CHECK(ids[t] >= 0 && ids[t] < V, "token id {} at index {} is outside the vocabulary [0, {})", ids[t], t, V);

  std::vector<float> x(static_cast<size_t>(T * D));
  for (int64_t t = 0; t < T; ++t)
    std::copy(w.embed_tokens.data + ids[t] * D, w.embed_tokens.data + (ids[t] + 1) * D, x.data() + t * D);
  emit(opt.tap, "embed", -1, x.data(), {T, D});

  const layers::RopeTable rope = layers::make_rope_table(c, cache.length, T);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    layers::decoder_layer(c, w.layers[l], x.data(), T, cache, l, rope, opt.mla_mode, opt.tap, l);
  cache.length += T;

  layers::rmsnorm_rows(x.data(), w.norm, T, c.rms_norm_eps, x.data());
  emit(opt.tap, "final_norm", -1, x.data(), {T, D});
  if (opt.final_hidden) std::copy(x.begin(), x.end(), opt.final_hidden);
  if (!opt.logits) return;
  const int64_t first = opt.all_logits ? 0 : T - 1, rows = T - first;
  ops::linear({}, {.x = x.data() + first * D, .w = w.lm_head.data, .y = opt.logits, .M = rows, .N = V, .K = D});
  emit(opt.tap, "logits", -1, opt.logits, {rows, V});
}

}  // namespace dsv
