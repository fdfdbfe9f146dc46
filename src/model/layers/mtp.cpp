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
  const int64_t D = c.hidden_size, V = c.vocab_size;
  DSV_CHECK(!w.mtp.empty(), "this checkpoint has no MTP modules");
  std::vector<std::vector<float>> out;
  std::vector<float> previous(final_hidden, final_hidden + T * D);
  for (size_t k1 = 0; k1 < w.mtp.size(); ++k1) {
    const int64_t k = static_cast<int64_t>(k1) + 1, n = T - k;  // positions with a known next token
    if (n <= 0) break;
    const MtpWeights& mw = w.mtp[k1];
    const int64_t layer = c.num_hidden_layers + static_cast<int64_t>(k1);
    std::vector<float> cat(static_cast<size_t>(n * 2 * D));
    for (int64_t i = 0; i < n; ++i) {
      const int32_t id = ids[i + k];
      DSV_CHECK(id >= 0 && id < V, "token id {} is outside the vocabulary [0, {})", id, V);
      float* row = cat.data() + i * 2 * D;
      layers::rmsnorm_rows(w.embed_tokens.data + id * D, mw.enorm, 1, c.rms_norm_eps, row);
      layers::rmsnorm_rows(previous.data() + i * D, mw.hnorm, 1, c.rms_norm_eps, row + D);
    }
    std::vector<float> x(static_cast<size_t>(n * D));
    ops::linear({}, {.x = cat.data(), .w = mw.eh_proj.data, .y = x.data(), .M = n, .N = D, .K = 2 * D});
    KvCache cache(1, c.kv_lora_rank + c.qk_rope_head_dim, n);
    const layers::RopeTable rope = layers::make_rope_table(c, k, n);
    layers::decoder_layer(c, mw.block, x.data(), n, cache, 0, rope, MlaMode::Auto, tap, layer);
    layers::rmsnorm_rows(x.data(), mw.shared_head_norm, n, c.rms_norm_eps, x.data());
    std::vector<float> logits(static_cast<size_t>(n * V));
    ops::linear({}, {.x = x.data(), .w = w.lm_head.data, .y = logits.data(), .M = n, .N = V, .K = D});
    emit(tap, "mtp_logits", layer, logits.data(), {n, V});
    out.push_back(std::move(logits));
    previous = std::move(x);
  }
  return out;
}

}  // namespace dsv
