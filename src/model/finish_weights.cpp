#include <array>
#include <vector>

#include "model/model.h"

namespace dsv {
namespace {
// Device tables of the experts' gate, up and down pointers, read from the Tensor member `storage`
// (data or bf16); the tables live in `keep`.
template <typename T>
std::array<const T* const*, 3> tables(Model& m, const std::vector<MlpWeights>& experts, const T* Tensor::*storage,
                                      std::vector<ops::Buffer<const T*>>& keep) {
  std::array<const T* const*, 3> out{};
  size_t i = 0;
  for (Tensor MlpWeights::*matrix : {&MlpWeights::gate_proj, &MlpWeights::up_proj, &MlpWeights::down_proj}) {
    std::vector<const T*> pointers;
    for (const MlpWeights& e : experts) pointers.push_back(e.*matrix.*storage);
    keep.emplace_back(m.context(), pointers.data(), pointers.size());
    out[i++] = keep.back().data();
  }
  return out;
}

void build(Model& m, MoeWeights& moe) {
  moe.gate_table = moe.up_table = moe.down_table = nullptr;
  moe.gate_table_bf16 = moe.up_table_bf16 = moe.down_table_bf16 = nullptr;
  if (moe.experts.empty()) return;
  if (moe.experts[0].gate_proj.bf16) {
    const auto t = tables(m, moe.experts, &Tensor::bf16, m.expert_tables_bf16);
    moe.gate_table_bf16 = t[0], moe.up_table_bf16 = t[1], moe.down_table_bf16 = t[2];
  } else {
    const auto t = tables(m, moe.experts, &Tensor::data, m.expert_tables);
    moe.gate_table = t[0], moe.up_table = t[1], moe.down_table = t[2];
  }
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
