#include "core/error.h"
#include "io/hf_names.h"
#include "model/model.h"

namespace dsv {

void fill_initial_weight(const ops::Context& ctx, const std::string& hf_name, const std::vector<int64_t>& shape,
                         float* data, uint64_t seed, float init_std) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const bool norm = hf_name.find("norm") != std::string::npos;
  const bool bias = shape.size() == 1 && !norm;  // biases and e_score_correction_bias
  ops::fill_random(ctx, {.x = data, .n = n, .seed = seed, .mean = norm ? 1.0f : 0.0f,
                         .std = (norm || bias) ? 0.0f : init_std});
}

std::unique_ptr<Model> random_model(const ModelConfig& config, ops::Backend backend, uint64_t seed, float init_std,
                                    bool bf16_weights) {
  DSV_CHECK(ops::backend_available(backend), "the CUDA backend is not available in this build");
  auto m = std::make_unique<Model>();
  m->config = config;
  m->backend = backend;
  const ops::Context ctx = m->context();
  const std::vector<WeightSlot> slots = hf_weight_table(config, 0, m->weights);
  m->device_storage.reserve(slots.size());
  uint64_t stream = 0;
  for (const WeightSlot& s : slots) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    Tensor& t = *s.target;
    t.shape = s.shape;
    if (n == 0) continue;
    m->stats.tensors++;
    const uint64_t tensor_seed = seed + 7919 * stream++;
    if (bf16_weights && stored_in_bf16(s.hf_name, s.shape)) {  // fp32 values in a scratch, kept as bf16
      ops::Buffer<float> values(backend, static_cast<size_t>(n));
      fill_initial_weight(ctx, s.hf_name, s.shape, values.data(), tensor_seed, init_std);
      keep_as_bf16(*m, t, values.data());
      continue;
    }
    m->device_storage.emplace_back(backend, static_cast<size_t>(n));
    t.data = m->device_storage.back().data();
    fill_initial_weight(ctx, s.hf_name, s.shape, m->device_storage.back().data(), tensor_seed, init_std);
  }
  finish_weights(*m);
  return m;
}

}  // namespace dsv
