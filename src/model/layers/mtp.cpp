// Multi-token prediction (DeepSeek-V3 s2.2), evaluated as transformers 5.17's MtpLayer does:
//   h_k[i] = shared_head.norm(block_k(eh_proj([enorm(embed(ids[i + k])); hnorm(h_{k-1}[i])])))
//   logits_k[i] = lm_head(h_k[i])          (predicts ids[i + k + 1])
// with h_0 the main model's hidden state after its final norm, the main model's embedding and head
// shared, and RoPE positions i + k (the position of the input token).
#include <vector>

#include "core/error.h"
#include "model/layers/layers.h"
#include "model/model.h"
#include "ops/ops.h"

namespace dsv {

std::vector<std::vector<float>> mtp_logits(const Model& m, const int32_t* ids, int64_t T, const float* final_hidden,
                                           const TapFn& tap) {
  const ModelConfig& c = m.config;
  const Weights& w = m.weights;
  const ops::Context ctx = m.context();
  const ops::Backend be = ctx.backend;
  const int64_t D = c.hidden_size, V = c.vocab_size;
  DSV_CHECK(!w.mtp.empty(), "this checkpoint has no MTP modules");
  for (int64_t t = 0; t < T; ++t)
    DSV_CHECK(ids[t] >= 0 && ids[t] < V, "token id {} at index {} is outside the vocabulary [0, {})", ids[t], t, V);
  std::vector<std::vector<float>> out;
  ops::Buffer<float> previous(ctx, final_hidden, static_cast<size_t>(T * D));
  for (size_t k1 = 0; k1 < w.mtp.size(); ++k1) {
    const int64_t k = static_cast<int64_t>(k1) + 1, n = T - k;  // positions with a known next token
    if (n <= 0) break;
    const MtpWeights& mw = w.mtp[k1];
    const int64_t layer = c.num_hidden_layers + static_cast<int64_t>(k1);
    const ops::Buffer<int32_t> next_ids(ctx, ids + k, static_cast<size_t>(n));
    ops::Buffer<float> emb(be, n * D), cat(be, n * 2 * D), x(be, n * D);
    ops::embed(ctx, {.ids = next_ids.data(), .table = w.embed_tokens.data, .out = emb.data(), .T = n, .D = D});
    layers::rmsnorm_rows(ctx, emb.data(), mw.enorm, n, c.rms_norm_eps, cat.data(), 2 * D);
    layers::rmsnorm_rows(ctx, previous.data(), mw.hnorm, n, c.rms_norm_eps, cat.data() + D, 2 * D);
    ops::linear(ctx, {.x = cat.data(), .w = mw.eh_proj.data, .w_bf16 = mw.eh_proj.bf16, .y = x.data(), .M = n, .N = D, .K = 2 * D});
    KvCache cache(be, 1, c.kv_lora_rank + c.qk_rope_head_dim, n);
    const layers::RopeTable rope = layers::make_rope_table(ctx, c, k, n);
    layers::decoder_layer(ctx, c, mw.block, x.data(), n, cache, 0, {.cos = rope.cos.data(), .sin = rope.sin.data()},
                          MlaMode::Auto, tap, layer);
    layers::rmsnorm_rows(ctx, x.data(), mw.shared_head_norm, n, c.rms_norm_eps, x.data());
    ops::Buffer<float> logits(be, n * V);
    ops::linear(ctx, {.x = x.data(), .w = w.lm_head.data, .w_bf16 = w.lm_head.bf16, .y = logits.data(), .M = n, .N = V, .K = D});
    layers::emit(ctx, tap, "mtp_logits", layer, logits.data(), {n, V});
    out.push_back(logits.to_host(ctx));
    previous = std::move(x);
  }
  return out;
}

}  // namespace dsv
