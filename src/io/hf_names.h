// The one declarative table between Hugging Face tensor names and engine weights.
#pragma once
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"

namespace dsv {

struct WeightSlot {
  std::string hf_name;          // e.g. "model.layers.3.self_attn.kv_b_proj.weight"
  std::vector<int64_t> shape;   // expected shape
  Tensor* target = nullptr;     // where the loaded view goes
};

// All tensors a checkpoint of this config must hold. `mtp_modules` MTP modules are included as
// model.layers.{num_hidden_layers + k}.* (the DeepSeek-V3 release layout). Resizes `w` when it is
// not shaped for this config; otherwise its existing views are kept (and enumerated).
std::vector<WeightSlot> hf_weight_table(const ModelConfig& config, int64_t mtp_modules, Weights& w);

// MTP modules actually stored in a checkpoint (model.layers.{L + k}.eh_proj.weight for k = 0, 1, ...).
int64_t stored_mtp_modules(const ModelConfig& config, const Checkpoint& checkpoint);

// Checkpoint tensors the engine knowingly skips: an MTP module's own copies of the embedding and
// LM head (transformers shares the main model's), and a tied model's redundant lm_head.
bool hf_name_is_ignored(const ModelConfig& config, const std::string& name);

}  // namespace dsv
