// Builds small random DeepSeek checkpoints in C++ from a config (through the same name table the
// loader uses), so loader and model tests need no Python.
#pragma once
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/hf_names.h"
#include "io/safetensors_writer.h"
#include "model/config.h"
#include "test_helpers.h"

namespace dsv::test {

inline std::string tiny_config_json(const std::string& model_type = "deepseek_v3", const std::string& extra = "") {
  return R"({"model_type": ")" + model_type + R"(", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
    "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
    "n_shared_experts": 1, "n_routed_experts": 4, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2,
    "first_k_dense_replace": 1, "kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8, "v_head_dim": 8, "max_position_embeddings": 256, "num_nextn_predict_layers": 0)" +
         extra + "}";
}

struct RawTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// Random tensors for every slot of the table (norm weights near 1), as fp32 or bf16.
inline std::vector<RawTensor> random_tensors(const ModelConfig& c, int64_t mtp, DType dtype, uint64_t seed) {
  Weights w;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.2f);
  std::vector<RawTensor> out;
  for (const auto& slot : hf_weight_table(c, mtp, w)) {
    RawTensor t{slot.hf_name, dtype, slot.shape, {}};
    int64_t n = 1;
    for (int64_t d : slot.shape) n *= d;
    const bool norm = slot.hf_name.find("norm") != std::string::npos;
    t.bytes.resize(static_cast<size_t>(n) * dtype_size(dtype));
    for (int64_t i = 0; i < n; ++i) {
      const float v = norm ? 1.0f + 0.1f * normal(rng) : normal(rng);
      if (dtype == DType::F32) std::memcpy(t.bytes.data() + i * 4, &v, 4);
      else {
        const uint16_t b = f32_to_bf16(v);
        std::memcpy(t.bytes.data() + i * 2, &b, 2);
      }
    }
    out.push_back(std::move(t));
  }
  return out;
}

inline void write_checkpoint(const std::filesystem::path& dir, const std::string& config_json,
                             const std::vector<RawTensor>& tensors) {
  std::filesystem::create_directories(dir);
  write_raw(dir / "config.json", config_json);
  std::vector<TensorToWrite> tw;
  for (const auto& t : tensors) tw.push_back({t.name, t.dtype, t.shape, t.bytes.data()});
  write_safetensors((dir / "model.safetensors").string(), tw);
}

}  // namespace dsv::test
