// ModelConfig: the architecture of a DeepSeek-V2/V3 checkpoint, read from HF config.json.
//
// Dimension legend used across src/model:
//   V vocab, D hidden, H heads, Dn qk_nope_head_dim, R qk_rope_head_dim, Dv v_head_dim,
//   Q q_lora_rank (0: plain q_proj), C kv_lora_rank, F dense FFN, Fe expert FFN, E routed experts,
//   K experts per token, G expert groups, T tokens of this call, S tokens attended (cache + T).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv {

enum class ModelFamily { DeepseekV2, DeepseekV3 };

// How routed experts are chosen. transformers 5.17 ties this to the model type:
// deepseek_v2 -> softmax scores + greedy or group_limited_greedy (group max), no renormalization;
// deepseek_v3 -> sigmoid scores + e_score_correction_bias for choice, groups ranked by top-2 sum.
enum class RouterKind { SoftmaxGreedy, SoftmaxGroupLimited, SigmoidNoauxGroups };

// Rotary layout of the R rope dims. V2 (complex multiply) and V3 with rope_interleave rotate the
// pairs (2i, 2i+1); V3 without it rotates (i, i + R/2) as in Llama.
enum class RopeLayout { Interleaved, HalfSplit };

struct RopeConfig {
  std::string type = "default";  // "default" or "yarn"
  double theta = 10000.0;
  // yarn only
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 0.0, mscale_all_dim = 0.0;  // 0: absent
  double attention_factor = 0.0;              // 0: derive from mscale/mscale_all_dim
  bool truncate = true;
};

struct ModelConfig {
  ModelFamily family = ModelFamily::DeepseekV3;
  std::string model_type;          // "deepseek_v2" | "deepseek_v3"
  int64_t vocab_size = 0;          // V
  int64_t hidden_size = 0;         // D
  int64_t intermediate_size = 0;   // F (dense layers)
  int64_t moe_intermediate_size = 0;  // Fe
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;    // H
  int64_t q_lora_rank = 0;            // Q, 0 = q_proj without low-rank
  int64_t kv_lora_rank = 0;           // C
  int64_t qk_nope_head_dim = 0;       // Dn
  int64_t qk_rope_head_dim = 0;       // R
  int64_t v_head_dim = 0;             // Dv
  int64_t n_routed_experts = 0;       // E
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;    // K
  int64_t n_group = 1;                // G
  int64_t topk_group = 1;
  int64_t first_k_dense_replace = 0;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  RouterKind router = RouterKind::SigmoidNoauxGroups;
  std::string hidden_act = "silu";
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 0;
  RopeConfig rope;
  RopeLayout rope_layout = RopeLayout::Interleaved;
  bool attention_bias = false;
  bool mlp_bias = false;  // V2 only
  bool tie_word_embeddings = false;
  int64_t num_nextn_predict_layers = 0;  // MTP depth declared by the config
  std::vector<int64_t> eos_token_ids;
  int64_t bos_token_id = -1;
  // FP8 block size from quantization_config.weight_block_size (rows, cols); 0 when absent.
  int64_t fp8_block_rows = 0, fp8_block_cols = 0;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const { return layer >= first_k_dense_replace; }
  // Softmax scale: qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN.
  double softmax_scale() const;
  // Factor applied to cos/sin under YaRN (transformers' attention_factor); 1 otherwise.
  double rope_attention_factor() const;
  // Inverse frequencies for the R/2 rotary pairs (YaRN-corrected when type == "yarn").
  std::vector<float> rope_inv_freq() const;

  int64_t params_total() const;   // all parameters of the main model (MTP not counted)
  int64_t params_active() const;  // parameters touched per token (K routed experts per MoE layer)
  int64_t params_mtp() const;     // parameters of one MTP module (without the shared embed/head)
};

// Parses config.json text; `origin` names the file in error messages.
ModelConfig parse_model_config(const std::string& json_text, const std::string& origin);
ModelConfig load_model_config(const std::string& model_dir);
// A config.json given by its path; `label` names it in the error when it cannot be opened.
ModelConfig load_model_config_file(const std::string& path, const std::string& label);

}  // namespace dsv
