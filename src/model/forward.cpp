// Whole-model forward: embed -> decoder layers -> final norm -> LM head, on the model's backend.
#include <algorithm>
#include <vector>

#include "core/error.h"
#include "model/layers/layers.h"
#include "model/model.h"
#include "ops/ops.h"

namespace dsv {

KvCache::KvCache(ops::Backend backend, int64_t layers_, int64_t width_, int64_t capacity_, bool bf16_,
                 int64_t sequences_)
    : layers(layers_), width(width_), capacity(capacity_), sequences(sequences_),
      lengths(static_cast<size_t>(sequences_), 0), bf16(bf16_) {
  DSV_CHECK(sequences >= 1 && capacity >= 1, "KV cache: {} sequences of capacity {} (expected >= 1 each)", sequences,
            capacity);
  const size_t n = static_cast<size_t>(sequences * capacity * width);
  for (int64_t l = 0; l < layers; ++l) {
    if (bf16) rows_bf16.emplace_back(backend, n);
    else rows.emplace_back(backend, n);
  }
}

KvCache make_kv_cache(const Model& m, int64_t capacity, int64_t sequences) {
  return KvCache(m.backend, m.config.num_hidden_layers, m.config.kv_lora_rank + m.config.qk_rope_head_dim, capacity,
                 has_bf16_weights(m), sequences);
}

void forward(const Model& m, const int32_t* ids, int64_t T, KvCache& cache, const ForwardOptions& opt) {
  const ModelConfig& c = m.config;
  const Weights& w = m.weights;
  const ops::Context ctx = m.context();
  const int64_t D = c.hidden_size, V = c.vocab_size;
  DSV_CHECK(T > 0, "forward: no tokens");
  DSV_CHECK(cache.layers == c.num_hidden_layers, "forward: cache has {} layers, model {}", cache.layers,
            c.num_hidden_layers);
  for (int64_t t = 0; t < T; ++t)
    DSV_CHECK(ids[t] >= 0 && ids[t] < V, "token id {} at index {} is outside the vocabulary [0, {})", ids[t], t, V);

  const ops::Buffer<int32_t> token_ids(ctx, ids, static_cast<size_t>(T));
  ops::Buffer<float> x(ctx.backend, T * D);
  ops::embed(ctx, {.ids = token_ids.data(), .table = w.embed_tokens.data, .out = x.data(), .T = T, .D = D});
  layers::emit(ctx, opt.tap, "embed", -1, x.data(), {T, D});

  DSV_CHECK(opt.sequence >= 0 && opt.sequence < cache.sequences, "forward: sequence {} of a cache of {}",
            opt.sequence, cache.sequences);
  int64_t& length = cache.lengths[opt.sequence];
  const layers::RopeTable rope = layers::make_rope_table(ctx, c, length, T);
  const layers::TokenSlots slots{.cos = rope.cos.data(), .sin = rope.sin.data(), .sequence = opt.sequence,
                                 .first = length};
  // Without taps, each layer leaves its FFN output in `carry` for the next norm to add (one pass over
  // the residual stream fewer per layer); taps see every layer's output, so they keep the plain adds.
  const bool defer_adds = !opt.tap && c.num_hidden_layers > 0;
  ops::Buffer<float> carry(ctx.backend, defer_adds ? T * D : 0);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    layers::decoder_layer(ctx, c, w.layers[l], x.data(), T, cache, l, slots, opt.mla_mode, opt.tap, l,
                          defer_adds && l > 0 ? carry.data() : nullptr, defer_adds ? carry.data() : nullptr);
  length += T;

  // The final norm (adding the last carry), into `carry` when there is one.
  float* hidden = defer_adds ? carry.data() : x.data();
  if (defer_adds)
    ops::add_rmsnorm(ctx, {.x = x.data(), .delta = carry.data(), .weight = w.norm.data, .y = hidden, .rows = T, .dim = D,
                           .eps = static_cast<float>(c.rms_norm_eps)});
  else
    layers::rmsnorm_rows(ctx, x.data(), w.norm, T, c.rms_norm_eps, hidden);
  layers::emit(ctx, opt.tap, "final_norm", -1, hidden, {T, D});
  if (opt.final_hidden) ops::copy_to_host(ctx, opt.final_hidden, hidden, static_cast<size_t>(T * D) * sizeof(float));
  if (!opt.logits) return;
  const int64_t first = opt.all_logits ? 0 : T - 1, rows = T - first;
  ops::Buffer<float> logits(ctx.backend, rows * V);
  ops::linear(ctx, {.x = hidden + first * D, .w = w.lm_head.data, .w_bf16 = w.lm_head.bf16, .y = logits.data(), .M = rows, .N = V, .K = D});
  layers::emit(ctx, opt.tap, "logits", -1, logits.data(), {rows, V});
  ops::copy_to_host(ctx, opt.logits, logits.data(), static_cast<size_t>(rows * V) * sizeof(float));
}

}  // namespace dsv
