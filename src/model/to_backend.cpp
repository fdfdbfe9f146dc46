// Copies a loaded model's weights to another backend, slot by slot through the name table, so the
// device Weights has exactly the host Weights' structure with device pointers.
#include "core/error.h"
#include "io/hf_names.h"
#include "model/model.h"

namespace dsv {

std::unique_ptr<Model> to_backend(const Model& host, ops::Backend backend, bool bf16_weights) {
  DSV_CHECK(host.backend == ops::Backend::Cpu, "to_backend: the source model must be on the CPU");
  DSV_CHECK(ops::backend_available(backend),
            "the CUDA backend is not available in this build (configure with the cuda preset)");
  auto m = std::make_unique<Model>();
  m->config = host.config;
  m->stats = host.stats;
  m->backend = backend;
  const int64_t mtp = static_cast<int64_t>(host.weights.mtp.size());
  // The host Weights is already shaped for its config, so the table only enumerates its tensors.
  const std::vector<WeightSlot> from = hf_weight_table(host.config, mtp, const_cast<Weights&>(host.weights));
  const std::vector<WeightSlot> to = hf_weight_table(m->config, mtp, m->weights);
  DSV_CHECK(from.size() == to.size(), "to_backend: tables differ ({} vs {} slots)", from.size(), to.size());
  const ops::Context ctx = m->context();
  m->device_storage.reserve(from.size());
  for (size_t i = 0; i < from.size(); ++i) {
    const Tensor& src = *from[i].target;
    Tensor& dst = *to[i].target;
    dst.shape = src.shape;
    if (src.empty()) continue;  // an omitted empty tensor
    DSV_CHECK(src.data, "to_backend: {} is stored in bf16 on the host; convert from an fp32 model", from[i].hf_name);
    if (bf16_weights && stored_in_bf16(to[i].hf_name, dst.shape)) {
      ops::Buffer<float> values(ctx, src.data, static_cast<size_t>(src.numel()));
      keep_as_bf16(*m, dst, values.data());
      continue;
    }
    m->device_storage.emplace_back(ctx, src.data, static_cast<size_t>(src.numel()));
    dst.data = m->device_storage.back().data();
  }
  finish_weights(*m);
  return m;
}

}  // namespace dsv
