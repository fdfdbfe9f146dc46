// ParamStore: a model's weights as trainable fp32 master parameters in one flat buffer on the
// training backend, with the gradient and Adam moment buffers laid out the same way (the moments in
// fp32, or in bf16 with optimizer.bf16_moments). The Model it
// holds points into the flat parameter buffer, so the ordinary forward (dsv generate, dsv logits)
// and the training forward read the very weights the optimizer updates.
#pragma once
#include <string>
#include <vector>

#include "model/model.h"
#include "ops/memory.h"

namespace dsv::train {

struct ParamSlot {
  std::string hf_name;
  std::vector<int64_t> shape;
  int64_t offset = 0, numel = 0;  // into the flat buffers
  bool trainable = true;          // false: a buffer (V3 e_score_correction_bias)
  bool decay = true;              // weight decay: tensors with >= 2 dims only
  bool routed_expert = false;     // gate/up/down of a routed expert (main layers and MTP blocks)
};

class ParamStore {
 public:
  // From an HF checkpoint directory (its MTP modules up to `mtp_modules` are kept; -1: all stored).
  static ParamStore from_checkpoint(const std::string& dir, ops::Backend backend, int64_t mtp_modules,
                                    bool bf16_moments = false);
  // Random init: projections N(0, init_std), norms 1, biases and router bias 0 (the counter RNG,
  // so the same on every backend).
  static ParamStore random(const ModelConfig& config, int64_t mtp_modules, ops::Backend backend, uint64_t seed,
                           float init_std, bool bf16_moments = false);

  ParamStore(ParamStore&&) = default;
  ParamStore& operator=(ParamStore&&) = default;

  const Model& model() const { return *model_; }
  // Gradients in the shape of the weights (a tied LM head shares the embedding's gradient).
  const Weights& grads() const { return grads_; }
  const std::vector<ParamSlot>& slots() const { return slots_; }
  int64_t total() const { return total_; }
  // The flat buffers are grouped: [0, decay_end) trainable tensors with weight decay, the routed
  // experts' first ([0, experts_end)), [decay_end, trainable_end) trainable tensors without,
  // [trainable_end, total) buffers (router biases).
  int64_t decay_end() const { return decay_end_; }
  int64_t trainable_end() const { return trainable_end_; }
  int64_t trainable_count() const;

  float* params() const { return params_.data(); }
  float* grad_data() const { return grad_.data(); }
  // Adam moments, zero at first: fp32 (adam_m, adam_v) or bf16 (adam_m_bf16, adam_v_bf16); the
  // accessors of the other type return null.
  bool bf16_moments() const { return m16_.size() > 0; }
  float* adam_m() const { return m_.data(); }
  float* adam_v() const { return v_.data(); }
  uint16_t* adam_m_bf16() const { return m16_.data(); }
  uint16_t* adam_v_bf16() const { return v16_.data(); }
  // Zeroes the gradients; keep_routed_experts leaves [0, experts_end) alone for a pass whose expert
  // backward overwrites them (PassOptions::overwrite_expert_grads).
  void zero_grads(bool keep_routed_experts = false) const;
  // Writes the weights as an HF checkpoint (config.json copied from `config_json_text`).
  void save_hf(const std::string& dir, const std::string& config_json_text) const;

 private:
  ParamStore() = default;
  void layout(const ModelConfig& config, int64_t mtp_modules, ops::Backend backend, bool bf16_moments);

  std::unique_ptr<Model> model_;
  Weights grads_;
  std::vector<ParamSlot> slots_;
  int64_t total_ = 0, experts_end_ = 0, decay_end_ = 0, trainable_end_ = 0;
  ops::Buffer<float> params_, grad_, m_, v_;
  ops::Buffer<uint16_t> m16_, v16_;
};

// A mutable pointer to gradient storage owned by a ParamStore (Weights hold const views).
inline float* mut(const Tensor& t) { return const_cast<float*>(t.data); }

}  // namespace dsv::train
