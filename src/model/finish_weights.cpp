#include "model/model.h"

namespace dsv {
namespace {
void build(Model& m, MoeWeights& moe) {
  if (moe.experts.empty()) return;
  std::vector<const float*> gate, up, down;
  for (const MlpWeights& e : moe.experts) {
    gate.push_back(e.gate_proj.data);
    up.push_back(e.up_proj.data);
    down.push_back(e.down_proj.data);
  }
  const ops::Context ctx = m.context();
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
  for (LayerWeights& l : m.weights.layers)
    if (l.is_moe) build(m, l.moe);
  for (MtpWeights& mtp : m.weights.mtp) build(m, mtp.block.moe);
}

}  // namespace dsv
