#include "train/param_store.h"

#include <filesystem>
#include <set>

#include "core/error.h"
#include "io/hf_names.h"
#include "io/npy.h"
#include "io/safetensors_writer.h"

namespace dsv::train {
namespace {
bool is_router_bias(const std::string& name) { return name.ends_with("e_score_correction_bias"); }
}  // namespace

void ParamStore::layout(const ModelConfig& config, int64_t mtp_modules, ops::Backend backend, bool bf16_moments) {
  model_ = std::make_unique<Model>();
  model_->config = config;
  model_->backend = backend;
  std::vector<WeightSlot> table = hf_weight_table(config, mtp_modules, model_->weights);
  std::vector<WeightSlot> grad_table = hf_weight_table(config, mtp_modules, grads_);
  std::set<const Tensor*> routed;
  const auto add_routed = [&](const LayerWeights& l) {
    for (const MlpWeights& e : l.moe.experts) routed.insert({&e.gate_proj, &e.up_proj, &e.down_proj});
  };
  for (const LayerWeights& l : model_->weights.layers) add_routed(l);
  for (const MtpWeights& m : model_->weights.mtp) add_routed(m.block);
  for (const WeightSlot& s : table) {
    ParamSlot p{.hf_name = s.hf_name, .shape = s.shape};
    p.numel = 1;
    for (int64_t d : s.shape) p.numel *= d;
    p.trainable = !is_router_bias(s.hf_name);
    p.decay = s.shape.size() >= 2;
    p.routed_expert = routed.contains(s.target);
    slots_.push_back(p);
  }
  // Offsets grouped by optimizer treatment (decayed matrices, then other trainable tensors, then
  // buffers), so the optimizer and the gradient norm run over two contiguous ranges instead of
  // one launch per tensor; the routed experts lead the decayed range, so that a trainer can leave
  // their gradients to an overwriting backward. 16-float alignment keeps every tensor 64-byte aligned
  // for vector loads; the padding stays zero in every buffer (AdamW leaves zeros at zero).
  total_ = 0;
  const auto group_of = [](const ParamSlot& p) { return p.trainable ? (p.decay ? (p.routed_expert ? 0 : 1) : 2) : 3; };
  for (int group = 0; group < 4; ++group) {
    for (ParamSlot& p : slots_) {
      if (group != group_of(p)) continue;
      p.offset = total_;
      total_ += (p.numel + 15) / 16 * 16;
    }
    (group == 0 ? experts_end_ : group == 1 ? decay_end_ : group == 2 ? trainable_end_ : total_) = total_;
  }
  params_ = ops::Buffer<float>(backend, static_cast<size_t>(total_));
  grad_ = ops::Buffer<float>(backend, static_cast<size_t>(total_));
  if (bf16_moments) {
    m16_ = ops::Buffer<uint16_t>(backend, static_cast<size_t>(total_));
    v16_ = ops::Buffer<uint16_t>(backend, static_cast<size_t>(total_));
  } else {
    m_ = ops::Buffer<float>(backend, static_cast<size_t>(total_));
    v_ = ops::Buffer<float>(backend, static_cast<size_t>(total_));
  }
  const ops::Context ctx = model_->context();
  // Zero fill as fp32 words: a bf16 buffer of total_ (a multiple of 16) elements is total_ / 2 words.
  const auto zero = [&](void* data, int64_t words) {
    ops::copy2d(ctx, {.src = nullptr, .dst = static_cast<float*>(data), .rows = 1, .cols = words,
                      .src_stride = words, .dst_stride = words});
  };
  for (ops::Buffer<float>* b : {&params_, &grad_, &m_, &v_})
    if (b->size()) zero(b->data(), total_);
  for (ops::Buffer<uint16_t>* b : {&m16_, &v16_})
    if (b->size()) zero(b->data(), total_ / 2);
  for (size_t i = 0; i < table.size(); ++i) {
    table[i].target->shape = slots_[i].shape;
    table[i].target->data = slots_[i].numel ? params_.data() + slots_[i].offset : nullptr;
    grad_table[i].target->shape = slots_[i].shape;
    grad_table[i].target->data = slots_[i].numel ? grad_.data() + slots_[i].offset : nullptr;
  }
  if (config.tie_word_embeddings) grads_.lm_head = grads_.embed_tokens;
}

ParamStore ParamStore::from_checkpoint(const std::string& dir, ops::Backend backend, int64_t mtp_modules,
                                       bool bf16_moments) {
  std::unique_ptr<Model> host = load_model(dir);
  const int64_t stored = static_cast<int64_t>(host->weights.mtp.size());
  if (mtp_modules < 0) mtp_modules = stored;
  DSV_CHECK(mtp_modules <= stored, "{}: training {} MTP module(s) needs them in the checkpoint, which stores {}",
            dir, mtp_modules, stored);
  ParamStore s;
  s.layout(host->config, mtp_modules, backend, bf16_moments);
  Weights& src = host->weights;
  std::vector<WeightSlot> from = hf_weight_table(host->config, stored, src);
  const ops::Context ctx = s.model_->context();
  size_t j = 0;
  for (const ParamSlot& p : s.slots_) {
    while (j < from.size() && from[j].hf_name != p.hf_name) ++j;
    DSV_CHECK(j < from.size(), "internal: {} missing from the loaded model", p.hf_name);
    if (p.numel) ops::copy_to_backend(ctx, s.params_.data() + p.offset, from[j].target->data, p.numel * sizeof(float));
  }
  finish_weights(*s.model_);
  return s;
}

ParamStore ParamStore::random(const ModelConfig& config, int64_t mtp_modules, ops::Backend backend, uint64_t seed,
                              float init_std, bool bf16_moments) {
  ParamStore s;
  s.layout(config, mtp_modules, backend, bf16_moments);
  const ops::Context ctx = s.model_->context();
  uint64_t stream = 0;
  for (const ParamSlot& p : s.slots_)
    fill_initial_weight(ctx, p.hf_name, p.shape, s.params_.data() + p.offset, seed + 7919 * stream++, init_std);
  finish_weights(*s.model_);
  return s;
}

int64_t ParamStore::trainable_count() const {
  int64_t n = 0;
  for (const ParamSlot& p : slots_) n += p.trainable ? p.numel : 0;
  return n;
}

void ParamStore::zero_grads(bool keep_routed_experts) const {
  const int64_t begin = keep_routed_experts ? experts_end_ : 0, n = total_ - begin;
  if (n == 0) return;
  ops::copy2d(model_->context(), {.src = nullptr, .dst = grad_.data() + begin, .rows = 1, .cols = n,
                                  .src_stride = n, .dst_stride = n});
}

void ParamStore::save_hf(const std::string& dir, const std::string& config_json_text) const {
  std::filesystem::create_directories(dir);
  const std::vector<float> host = params_.to_host(model_->context());
  std::vector<TensorToWrite> tensors;
  for (const ParamSlot& p : slots_)
    tensors.push_back({.name = p.hf_name, .dtype = DType::F32, .shape = p.shape, .data = host.data() + p.offset});
  write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  write_file_atomic(dir + "/config.json", config_json_text);
}

}  // namespace dsv::train
