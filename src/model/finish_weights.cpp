#include "model/model.h"

namespace dsv {
namespace {
void build(Model& m, MoeWeights& moe) {
  moe.gate_table = moe.up_table = moe.down_table = nullptr;
  moe.gate_table_bf16 = moe.up_table_bf16 = moe.down_table_bf16 = nullptr;
  if (moe.experts.empty()) return;
  const ops::Context ctx = m.context();
  if (moe.experts[0].gate_proj.bf16) {
    std::vector<const uint16_t*> gate, up, down;
    for (const MlpWeights& e : moe.experts) {
      gate.push_back(e.gate_proj.bf16);
      up.push_back(e.up_proj.bf16);
      down.push_back(e.down_proj.bf16);
    }
    auto& t = m.expert_tables_bf16;
    t.emplace_back(ctx, gate.data(), gate.size());
    moe.gate_table_bf16 = t.back().data();
    t.emplace_back(ctx, up.data(), up.size());
    moe.up_table_bf16 = t.back().data();
    t.emplace_back(ctx, down.data(), down.size());
    moe.down_table_bf16 = t.back().data();
    return;
  }
  std::vector<const float*> gate, up, down;
  for (const MlpWeights& e : moe.experts) {
    gate.push_back(e.gate_proj.data);
    up.push_back(e.up_proj.data);
    down.push_back(e.down_proj.data);
  }
  m.expert_tables.emplace_back(ctx, gate.data(), gate.size());
  moe.gate_table = m.expert_tables.back().data();
  m.expert_tables.emplace_back(ctx, up.data(), up.size());
  moe.up_table = m.expert_tables.back().data();
  m.expert_tables.emplace_back(ctx, down.data(), down.size());
  moe.down_table = m.expert_tables.back().data();
}
}  // namespace

void finish_weights(Model& m) {
  if (m.config.tie_word_embeddings) m.weights.lm_head = m.weights.embed_tokens;
  m.expert_tables.clear();
  m.expert_tables_bf16.clear();
  for (LayerWeights& l : m.weights.layers)
    if (l.is_moe) build(m, l.moe);
  for (MtpWeights& mtp : m.weights.mtp) build(m, mtp.block.moe);
}

}  // namespace dsv
