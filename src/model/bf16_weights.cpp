// bf16 weight storage for inference (model.h): halves the bytes every decode step reads.
#include <string>
#include <unordered_map>

#include "io/hf_names.h"
#include "model/model.h"

namespace dsv {
namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

bool stored_in_bf16(const std::string& hf_name, const std::vector<int64_t>& shape) {
  return shape.size() == 2 && !ends_with(hf_name, "embed_tokens.weight") && !ends_with(hf_name, "mlp.gate.weight");
}

void keep_as_bf16(Model& m, Tensor& t, const float* src) {
  const int64_t n = t.numel();
  m.bf16_storage.emplace_back(m.backend, static_cast<size_t>(n));
  ops::cast(m.context(), {.x = src, .y = m.bf16_storage.back().data(), .n = n, .to_bf16 = true});
  t.bf16 = m.bf16_storage.back().data();
  t.data = nullptr;
}

bool has_bf16_weights(const Model& m) { return !m.bf16_storage.empty(); }

int64_t store_weights_bf16(Model& m) {
  if (has_bf16_weights(m)) return 0;
  std::unordered_map<const float*, size_t> owner;  // device buffer holding each fp32 tensor
  for (size_t i = 0; i < m.device_storage.size(); ++i) owner[m.device_storage[i].data()] = i;
  const int64_t mtp = static_cast<int64_t>(m.weights.mtp.size());
  int64_t bytes = 0;
  for (const WeightSlot& s : hf_weight_table(m.config, mtp, m.weights)) {
    Tensor& t = *s.target;
    if (!stored_in_bf16(s.hf_name, s.shape) || t.data == nullptr) continue;
    const float* fp32 = t.data;
    keep_as_bf16(m, t, fp32);
    if (auto it = owner.find(fp32); it != owner.end()) m.device_storage[it->second] = ops::Buffer<float>();
    bytes += 2 * t.numel();
  }
  finish_weights(m);  // the tied head follows the embedding; expert tables point at bf16 storage
  return bytes;
}

}  // namespace dsv
