#include "io/hf_names.h"

#include <fmt/format.h>

#include <regex>

namespace dsv {
namespace {

struct TableBuilder {
  std::vector<WeightSlot>& slots;
  void add(std::string name, std::vector<int64_t> shape, Tensor* target) {
    slots.push_back(WeightSlot{std::move(name), std::move(shape), target});
  }
};

void add_mlp(TableBuilder& t, const ModelConfig& c, const std::string& prefix, int64_t F, MlpWeights& m,
             bool with_bias) {
  const int64_t D = c.hidden_size;
  t.add(prefix + "gate_proj.weight", {F, D}, &m.gate_proj);
  t.add(prefix + "up_proj.weight", {F, D}, &m.up_proj);
  t.add(prefix + "down_proj.weight", {D, F}, &m.down_proj);
  if (with_bias) {
    t.add(prefix + "gate_proj.bias", {F}, &m.gate_bias);
    t.add(prefix + "up_proj.bias", {F}, &m.up_bias);
    t.add(prefix + "down_proj.bias", {D}, &m.down_bias);
  }
}

void add_layer(TableBuilder& t, const ModelConfig& c, int64_t index, bool moe, LayerWeights& L) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads, Q = c.q_lora_rank, C = c.kv_lora_rank,
                R = c.qk_rope_head_dim, Dn = c.qk_nope_head_dim, Dv = c.v_head_dim;
  const std::string p = fmt::format("model.layers.{}.", index);
  t.add(p + "input_layernorm.weight", {D}, &L.input_layernorm);
  t.add(p + "post_attention_layernorm.weight", {D}, &L.post_attention_layernorm);
  const std::string a = p + "self_attn.";
  if (Q > 0) {
    t.add(a + "q_a_proj.weight", {Q, D}, &L.attn.q_a_proj);
    if (c.attention_bias) t.add(a + "q_a_proj.bias", {Q}, &L.attn.q_a_proj_bias);
    t.add(a + "q_a_layernorm.weight", {Q}, &L.attn.q_a_layernorm);
    t.add(a + "q_b_proj.weight", {H * (Dn + R), Q}, &L.attn.q_b_proj);
  } else {
    t.add(a + "q_proj.weight", {H * (Dn + R), D}, &L.attn.q_proj);
  }
  t.add(a + "kv_a_proj_with_mqa.weight", {C + R, D}, &L.attn.kv_a_proj);
  if (c.attention_bias) t.add(a + "kv_a_proj_with_mqa.bias", {C + R}, &L.attn.kv_a_proj_bias);
  t.add(a + "kv_a_layernorm.weight", {C}, &L.attn.kv_a_layernorm);
  t.add(a + "kv_b_proj.weight", {H * (Dn + Dv), C}, &L.attn.kv_b_proj);
  t.add(a + "o_proj.weight", {D, H * Dv}, &L.attn.o_proj);
  if (c.attention_bias) t.add(a + "o_proj.bias", {D}, &L.attn.o_proj_bias);

  L.is_moe = moe;
  if (!moe) {
    add_mlp(t, c, p + "mlp.", c.intermediate_size, L.mlp, c.mlp_bias);
    return;
  }
  const int64_t E = c.n_routed_experts;
  t.add(p + "mlp.gate.weight", {E, D}, &L.moe.router);
  if (c.family == ModelFamily::DeepseekV3)
    t.add(p + "mlp.gate.e_score_correction_bias", {E}, &L.moe.score_correction_bias);
  if (L.moe.experts.size() != static_cast<size_t>(E)) L.moe.experts.assign(static_cast<size_t>(E), MlpWeights{});
  for (int64_t e = 0; e < E; ++e)
    // Routed experts never carry biases (transformers' fused expert tensors have none); V2's mlp_bias
    // applies to dense MLPs and shared experts only.
    add_mlp(t, c, fmt::format("{}mlp.experts.{}.", p, e), c.moe_intermediate_size, L.moe.experts[e], false);
  // With n_shared_experts == 0 the shapes are [0, D]: transformers stores such empty tensors, other
  // writers omit them; the loader accepts both (see load.cpp).
  add_mlp(t, c, p + "mlp.shared_experts.", c.moe_intermediate_size * c.n_shared_experts, L.moe.shared, c.mlp_bias);
}

}  // namespace

std::vector<WeightSlot> hf_weight_table(const ModelConfig& c, int64_t mtp_modules, Weights& w) {
  std::vector<WeightSlot> slots;
  TableBuilder t{slots};
  const int64_t V = c.vocab_size, D = c.hidden_size;
  // Sizes the struct when it does not fit; a Weights already shaped for this config keeps its views,
  // so the table can also enumerate the tensors of a loaded model (see to_backend).
  if (w.layers.size() != static_cast<size_t>(c.num_hidden_layers))
    w.layers.assign(static_cast<size_t>(c.num_hidden_layers), LayerWeights{});
  if (w.mtp.size() != static_cast<size_t>(mtp_modules)) w.mtp.assign(static_cast<size_t>(mtp_modules), MtpWeights{});
  t.add("model.embed_tokens.weight", {V, D}, &w.embed_tokens);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) add_layer(t, c, l, c.is_moe_layer(l), w.layers[l]);
  t.add("model.norm.weight", {D}, &w.norm);
  if (!c.tie_word_embeddings) t.add("lm_head.weight", {V, D}, &w.lm_head);
  for (int64_t k = 0; k < mtp_modules; ++k) {
    const int64_t index = c.num_hidden_layers + k;
    const std::string p = fmt::format("model.layers.{}.", index);
    MtpWeights& m = w.mtp[k];
    t.add(p + "enorm.weight", {D}, &m.enorm);
    t.add(p + "hnorm.weight", {D}, &m.hnorm);
    t.add(p + "eh_proj.weight", {D, 2 * D}, &m.eh_proj);
    t.add(p + "shared_head.norm.weight", {D}, &m.shared_head_norm);
    add_layer(t, c, index, /*moe=*/true, m.block);  // transformers: MTP blocks are always MoE
  }
  return slots;
}

int64_t stored_mtp_modules(const ModelConfig& c, const Checkpoint& checkpoint) {
  int64_t n = 0;
  while (checkpoint.find(fmt::format("model.layers.{}.eh_proj.weight", c.num_hidden_layers + n))) ++n;
  return n;
}

bool hf_name_is_ignored(const ModelConfig& c, const std::string& name) {
  if (c.tie_word_embeddings && name == "lm_head.weight") return true;
  static const std::regex mtp_copies(R"(model\.layers\.(\d+)\.(embed_tokens\.weight|shared_head\.head\.weight))");
  std::smatch m;
  if (std::regex_match(name, m, mtp_copies)) return std::stoll(m[1].str()) >= c.num_hidden_layers;
  return false;
}

}  // namespace dsv
