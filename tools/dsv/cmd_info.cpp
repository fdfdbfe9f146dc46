// dsv info MODEL_DIR: architecture, parameter counts, dtypes and memory needs, from config.json and
// the safetensors headers (weights are mapped, not read).
#include <fmt/format.h>

#include <filesystem>
#include <map>

#include "cli_util.h"
#include "core/error.h"
#include "commands.h"
#include "io/hf_names.h"
#include "model/config.h"

namespace dsv::cli {
namespace {

const char* router_name(RouterKind k) {
  switch (k) {
    case RouterKind::SoftmaxGreedy: return "softmax, greedy top-k";
    case RouterKind::SoftmaxGroupLimited: return "softmax, group-limited greedy (group max)";
    case RouterKind::SigmoidNoauxGroups: return "sigmoid + e_score_correction_bias, groups by top-2 sum";
  }
  return "?";
}

void run_info(const std::string& dir) {
  const ModelConfig c = load_model_config(dir);
  const int64_t dense = std::min(c.first_k_dense_replace, c.num_hidden_layers);
  fmt::print("model        {} ({})\n", dir, c.model_type);
  fmt::print("layers       {} ({} dense + {} MoE), hidden {}, vocab {}\n", c.num_hidden_layers, dense,
             c.num_hidden_layers - dense, c.hidden_size, c.vocab_size);
  fmt::print("attention    MLA, {} heads, q_lora_rank {}, kv_lora_rank {}, qk {} (nope {} + rope {}), v {}\n",
             c.num_attention_heads, c.q_lora_rank > 0 ? std::to_string(c.q_lora_rank) : "none (q_proj)",
             c.kv_lora_rank, c.qk_head_dim(), c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim);
  fmt::print("rope         {} theta {}{}, {} layout, softmax scale {:.6g}\n", c.rope.type, c.rope.theta,
             c.rope.type == "yarn" ? fmt::format(" factor {} (original context {})", c.rope.factor,
                                                 c.rope.original_max_position_embeddings)
                                   : std::string(),
             c.rope_layout == RopeLayout::Interleaved ? "interleaved" : "half-split", c.softmax_scale());
  if (c.num_hidden_layers > dense)
    fmt::print("moe          {} routed experts (top {}, {} groups, top {} groups) + {} shared, expert FFN {}; "
               "router: {}; scaling {}{}\n",
               c.n_routed_experts, c.num_experts_per_tok, c.n_group, c.topk_group, c.n_shared_experts,
               c.moe_intermediate_size, router_name(c.router), c.routed_scaling_factor,
               c.norm_topk_prob && c.family == ModelFamily::DeepseekV3 ? ", normalized top-k" : "");
  fmt::print("dense FFN    {}\n", c.intermediate_size);
  fmt::print("context      {} tokens\n", c.max_position_embeddings);

  const double total = static_cast<double>(c.params_total()), active = static_cast<double>(c.params_active());
  fmt::print("parameters   {} total, {} active per token ({:.1f}%)\n", human_count(total), human_count(active),
             100.0 * active / total);

  int64_t mtp_present = 0, stored_bytes = 0;
  std::map<std::string, int64_t> dtypes;
  bool has_weights = false;
  try {
    Checkpoint ckpt(dir);
    has_weights = true;
    for (const auto& name : ckpt.names()) {
      const TensorEntry& e = ckpt.get(name);
      stored_bytes += static_cast<int64_t>(e.nbytes);
      dtypes[std::string(dtype_name(e.dtype))]++;
    }
    mtp_present = stored_mtp_modules(c, ckpt);
    fmt::print("checkpoint   {} tensors in {} file(s), {} on disk;", ckpt.names().size(), ckpt.file_count(),
               human_bytes(static_cast<double>(stored_bytes)));
    for (const auto& [d, n] : dtypes) fmt::print(" {} x{}", d, n);
    fmt::print("\n");
  } catch (const Error& e) {
    fmt::print("checkpoint   not readable: {}\n", e.what());
  }
  if (c.num_nextn_predict_layers > 0)
    fmt::print("mtp          config declares {} module(s); {} stored{} ({} parameters each)\n",
               c.num_nextn_predict_layers, has_weights ? std::to_string(mtp_present) : "?",
               mtp_present ? ", evaluated by `dsv logits --mtp-out`" : "", human_count(static_cast<double>(c.params_mtp())));

  const double per_token_cache = static_cast<double>(c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim));
  const double per_token_full =
      static_cast<double>(c.num_hidden_layers * c.num_attention_heads * (c.qk_head_dim() + c.v_head_dim));
  fmt::print("memory       weights bf16 {}, fp32 (CPU compute) {}\n", human_bytes(total * 2), human_bytes(total * 4));
  fmt::print("kv cache     {} per token in bf16 ({} values x {} layers); an uncompressed per-head cache "
             "would need {} ({:.1f}x more)\n",
             human_bytes(per_token_cache * 2), c.kv_lora_rank + c.qk_rope_head_dim, c.num_hidden_layers,
             human_bytes(per_token_full * 2), per_token_full / per_token_cache);
  fmt::print("             full context ({} tokens): {} per sequence\n", c.max_position_embeddings,
             human_bytes(per_token_cache * 2 * static_cast<double>(c.max_position_embeddings)));
}

}  // namespace

void register_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Show a model's architecture, parameter counts, dtypes and memory needs");
  static std::string dir;
  cmd->add_option("MODEL_DIR", dir, "Hugging Face model directory (config.json + safetensors)")->required();
  cmd->callback([] { run_info(dir); });
}

}  // namespace dsv::cli
