// config.json -> ModelConfig. Defaults follow transformers 5.17's DeepseekV2Config / DeepseekV3Config
// where a field may be omitted; fields that fix tensor shapes are required.
#include "model/config.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace dsv {
namespace {

using json = nlohmann::json;

struct Reader {
  const json& j;
  const std::string& origin;

  bool present(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }

  int64_t required_int(const char* key) const {
    DSV_CHECK(j.contains(key), "{}: required field \"{}\" is missing", origin, key);
    return as_int(key, j.at(key));
  }
  int64_t int_or(const char* key, int64_t fallback) const {
    return present(key) ? as_int(key, j.at(key)) : fallback;
  }
  double number_or(const char* key, double fallback) const {
    if (!present(key)) return fallback;
    DSV_CHECK(j.at(key).is_number(), "{}: field \"{}\" must be a number, found {}", origin, key, j.at(key).dump());
    return j.at(key).get<double>();
  }
  bool bool_or(const char* key, bool fallback) const {
    if (!present(key)) return fallback;
    DSV_CHECK(j.at(key).is_boolean(), "{}: field \"{}\" must be true or false, found {}", origin, key,
              j.at(key).dump());
    return j.at(key).get<bool>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    if (!present(key)) return fallback;
    DSV_CHECK(j.at(key).is_string(), "{}: field \"{}\" must be a string, found {}", origin, key, j.at(key).dump());
    return j.at(key).get<std::string>();
  }
  int64_t as_int(const char* key, const json& v) const {
    DSV_CHECK(v.is_number_integer() || (v.is_number_float() && v.get<double>() == std::floor(v.get<double>())),
              "{}: field \"{}\" must be an integer, found {}", origin, key, v.dump());
    return v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(v.get<double>());
  }
};

// transformers: mscale(scale, m) = 1 if scale <= 1 else 0.1 * m * ln(scale) + 1.
double yarn_mscale(double scale, double m) { return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; }

void parse_rope(const Reader& r, ModelConfig& c) {
  const json& j = r.j;
  // The released checkpoints write rope_scaling + top-level rope_theta; transformers 5 writes
  // rope_parameters. transformers gives rope_scaling priority when both are present.
  json params = json::object();
  if (j.contains("rope_scaling") && j.at("rope_scaling").is_object()) params = j.at("rope_scaling");
  else if (j.contains("rope_parameters") && j.at("rope_parameters").is_object()) params = j.at("rope_parameters");
  else if (j.contains("rope_scaling") && !j.at("rope_scaling").is_null())
    DSV_FAIL("{}: \"rope_scaling\" must be an object or null, found {}", r.origin, j.at("rope_scaling").dump());

  Reader p{params, r.origin};
  c.rope.theta = p.present("rope_theta") ? p.number_or("rope_theta", 0) : r.number_or("rope_theta", 10000.0);
  c.rope.type = p.present("rope_type") ? p.string_or("rope_type", "default") : p.string_or("type", "default");
  if (c.rope.type == "default") return;
  DSV_CHECK(c.rope.type == "yarn",
            "{}: rope type \"{}\" is not supported (expected \"default\" or \"yarn\", as DeepSeek-V2/V3 use)",
            r.origin, c.rope.type);
  c.rope.original_max_position_embeddings =
      p.int_or("original_max_position_embeddings", c.max_position_embeddings);
  DSV_CHECK(c.rope.original_max_position_embeddings > 0,
            "{}: yarn needs original_max_position_embeddings > 0", r.origin);
  c.rope.factor = p.present("factor") ? p.number_or("factor", 1.0)
                                      : static_cast<double>(c.max_position_embeddings) /
                                            static_cast<double>(c.rope.original_max_position_embeddings);
  // transformers reads `get("beta_fast") or 32`: 0 and null both mean the default.
  c.rope.beta_fast = p.number_or("beta_fast", 0.0);
  if (c.rope.beta_fast == 0.0) c.rope.beta_fast = 32.0;
  c.rope.beta_slow = p.number_or("beta_slow", 0.0);
  if (c.rope.beta_slow == 0.0) c.rope.beta_slow = 1.0;
  c.rope.mscale = p.number_or("mscale", 0.0);
  c.rope.mscale_all_dim = p.number_or("mscale_all_dim", 0.0);
  c.rope.attention_factor = p.number_or("attention_factor", 0.0);
  c.rope.truncate = p.bool_or("truncate", true);
  const double partial = p.number_or("partial_rotary_factor", r.number_or("partial_rotary_factor", 1.0));
  DSV_CHECK(partial == 1.0, "{}: partial_rotary_factor {} is not supported by DeepSeek MLA (expected 1.0)",
            r.origin, partial);
}

}  // namespace

double ModelConfig::softmax_scale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (rope.type != "default" && rope.mscale_all_dim != 0.0) {
    const double m = yarn_mscale(rope.factor, rope.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

double ModelConfig::rope_attention_factor() const {
  if (rope.type != "yarn") return 1.0;
  if (rope.attention_factor != 0.0) return rope.attention_factor;
  if (rope.mscale != 0.0 && rope.mscale_all_dim != 0.0)
    return yarn_mscale(rope.factor, rope.mscale) / yarn_mscale(rope.factor, rope.mscale_all_dim);
  return yarn_mscale(rope.factor, 1.0);
}

std::vector<float> ModelConfig::rope_inv_freq() const {
  const int64_t dim = qk_rope_head_dim, half = dim / 2;
  const float base = static_cast<float>(rope.theta);
  std::vector<float> inv_freq(half);
  // fp32 like torch: base ** (arange(0, dim, 2) / dim)
  std::vector<float> pos_freq(half);
  for (int64_t i = 0; i < half; ++i)
    pos_freq[i] = std::pow(base, static_cast<float>(2 * i) / static_cast<float>(dim));
  if (rope.type != "yarn") {
    for (int64_t i = 0; i < half; ++i) inv_freq[i] = 1.0f / pos_freq[i];
    return inv_freq;
  }
  // YaRN: blend interpolated (1/(factor*pos)) and extrapolated (1/pos) frequencies with a linear
  // ramp between the correction dims of beta_fast and beta_slow rotations.
  auto correction_dim = [&](double rotations) {
    return (static_cast<double>(dim) *
            std::log(static_cast<double>(rope.original_max_position_embeddings) / (rotations * 2.0 * M_PI))) /
           (2.0 * std::log(rope.theta));
  };
  double low = correction_dim(rope.beta_fast), high = correction_dim(rope.beta_slow);
  if (rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // transformers: prevent a zero-width ramp
  const float lo = static_cast<float>(low), hi = static_cast<float>(high);
  const float factor = static_cast<float>(rope.factor);
  for (int64_t i = 0; i < half; ++i) {
    float ramp = (static_cast<float>(i) - lo) / (hi - lo);
    ramp = std::clamp(ramp, 0.0f, 1.0f);
    const float extrapolation_weight = 1.0f - ramp;
    const float interpolated = 1.0f / (factor * pos_freq[i]);
    const float extrapolated = 1.0f / pos_freq[i];
    inv_freq[i] = interpolated * (1.0f - extrapolation_weight) + extrapolated * extrapolation_weight;
  }
  return inv_freq;
}

namespace {
int64_t attention_params(const ModelConfig& c) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads, Q = c.q_lora_rank, C = c.kv_lora_rank,
                R = c.qk_rope_head_dim, Dn = c.qk_nope_head_dim, Dv = c.v_head_dim;
  const int64_t bias = c.attention_bias ? 1 : 0;
  int64_t n = 0;
  n += Q > 0 ? D * Q + bias * Q + Q + Q * H * (Dn + R) : D * H * (Dn + R);
  n += D * (C + R) + bias * (C + R) + C + C * H * (Dn + Dv);
  n += H * Dv * D + bias * D;
  return n;
}
int64_t mlp_params(const ModelConfig& c, int64_t F) {
  return 3 * c.hidden_size * F + (c.mlp_bias ? 2 * F + c.hidden_size : 0);
}
int64_t layer_params(const ModelConfig& c, int64_t layer, int64_t experts_counted) {
  int64_t n = 2 * c.hidden_size + attention_params(c);
  if (!c.is_moe_layer(layer)) return n + mlp_params(c, c.intermediate_size);
  n += c.n_routed_experts * c.hidden_size;
  if (c.family == ModelFamily::DeepseekV3) n += c.n_routed_experts;  // e_score_correction_bias
  n += experts_counted * mlp_params(c, c.moe_intermediate_size);
  n += mlp_params(c, c.moe_intermediate_size * c.n_shared_experts);
  return n;
}
}  // namespace

int64_t ModelConfig::params_total() const {
  int64_t n = vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2) + hidden_size;
  for (int64_t l = 0; l < num_hidden_layers; ++l) n += layer_params(*this, l, n_routed_experts);
  return n;
}

int64_t ModelConfig::params_active() const {
  int64_t n = vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2) + hidden_size;
  for (int64_t l = 0; l < num_hidden_layers; ++l) n += layer_params(*this, l, num_experts_per_tok);
  return n;
}

int64_t ModelConfig::params_mtp() const {
  // enorm, hnorm, eh_proj [D, 2D], shared_head.norm, and one MoE block.
  return 3 * hidden_size + 2 * hidden_size * hidden_size + layer_params(*this, num_hidden_layers, n_routed_experts);
}

ModelConfig parse_model_config(const std::string& json_text, const std::string& origin) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::parse_error& e) {
    DSV_FAIL("{}: not valid JSON ({})", origin, e.what());
  }
  DSV_CHECK(j.is_object(), "{}: expected a JSON object at the top level", origin);
  Reader r{j, origin};
  ModelConfig c;
  DSV_CHECK(j.contains("model_type"), "{}: required field \"model_type\" is missing", origin);
  c.model_type = r.string_or("model_type", "");
  if (c.model_type == "deepseek_v2") c.family = ModelFamily::DeepseekV2;
  else if (c.model_type == "deepseek_v3") c.family = ModelFamily::DeepseekV3;
  else DSV_FAIL("{}: model_type \"{}\" is not supported (expected \"deepseek_v2\" or \"deepseek_v3\")", origin,
                c.model_type);
  const bool v3 = c.family == ModelFamily::DeepseekV3;

  c.vocab_size = r.required_int("vocab_size");
  c.hidden_size = r.required_int("hidden_size");
  c.intermediate_size = r.required_int("intermediate_size");
  c.num_hidden_layers = r.required_int("num_hidden_layers");
  c.num_attention_heads = r.required_int("num_attention_heads");
  c.kv_lora_rank = r.required_int("kv_lora_rank");
  c.qk_nope_head_dim = r.required_int("qk_nope_head_dim");
  c.qk_rope_head_dim = r.required_int("qk_rope_head_dim");
  c.v_head_dim = r.required_int("v_head_dim");
  // q_lora_rank: an explicit null means "plain q_proj"; a missing key takes the class default.
  c.q_lora_rank = j.contains("q_lora_rank") ? r.int_or("q_lora_rank", 0) : 1536;

  c.first_k_dense_replace = r.int_or("first_k_dense_replace", v3 ? 3 : 0);
  c.moe_intermediate_size = r.int_or("moe_intermediate_size", v3 ? 2048 : 1407);
  c.n_routed_experts = r.int_or("n_routed_experts", v3 ? 256 : 64);
  c.n_shared_experts = r.int_or("n_shared_experts", v3 ? 1 : 2);
  c.routed_scaling_factor = r.number_or("routed_scaling_factor", v3 ? 2.5 : 1.0);
  c.norm_topk_prob = r.bool_or("norm_topk_prob", v3);
  c.n_group = r.int_or("n_group", v3 ? 8 : 1);
  c.topk_group = r.int_or("topk_group", v3 ? 4 : 1);
  c.hidden_act = r.string_or("hidden_act", "silu");
  c.rms_norm_eps = r.number_or("rms_norm_eps", 1e-6);
  c.max_position_embeddings = r.int_or("max_position_embeddings", v3 ? 4096 : 2048);
  c.attention_bias = r.bool_or("attention_bias", false);
  c.mlp_bias = !v3 && r.bool_or("mlp_bias", false);
  c.tie_word_embeddings = r.bool_or("tie_word_embeddings", false);
  c.num_nextn_predict_layers = r.int_or("num_nextn_predict_layers", 0);
  c.bos_token_id = r.int_or("bos_token_id", v3 ? 0 : 1);
  if (!j.contains("eos_token_id")) c.eos_token_ids = {v3 ? 1 : 2};
  else if (j.at("eos_token_id").is_array())
    for (const auto& e : j.at("eos_token_id")) c.eos_token_ids.push_back(r.as_int("eos_token_id", e));
  else if (!j.at("eos_token_id").is_null()) c.eos_token_ids = {r.int_or("eos_token_id", -1)};

  const bool has_moe = c.first_k_dense_replace < c.num_hidden_layers;
  if (has_moe || c.num_nextn_predict_layers > 0) {
    DSV_CHECK(r.present("num_experts_per_tok"),
              "{}: required field \"num_experts_per_tok\" is missing (the model has MoE layers)", origin);
    c.num_experts_per_tok = r.required_int("num_experts_per_tok");
  } else {
    c.num_experts_per_tok = r.int_or("num_experts_per_tok", 0);
  }

  if (v3) {
    c.router = RouterKind::SigmoidNoauxGroups;
    c.rope_layout = r.bool_or("rope_interleave", true) ? RopeLayout::Interleaved : RopeLayout::HalfSplit;
  } else {
    const std::string method = r.string_or("topk_method", "greedy");
    if (method == "greedy") c.router = RouterKind::SoftmaxGreedy;
    else if (method == "group_limited_greedy") c.router = RouterKind::SoftmaxGroupLimited;
    else DSV_FAIL("{}: topk_method \"{}\" is not supported for deepseek_v2 (expected \"greedy\" or "
                  "\"group_limited_greedy\")", origin, method);
    c.rope_layout = RopeLayout::Interleaved;  // V2 always rotates complex pairs
  }
  parse_rope(r, c);

  if (j.contains("quantization_config") && j.at("quantization_config").is_object()) {
    const json& q = j.at("quantization_config");
    if (q.contains("weight_block_size") && q.at("weight_block_size").is_array() &&
        q.at("weight_block_size").size() == 2) {
      c.fp8_block_rows = q.at("weight_block_size")[0].get<int64_t>();
      c.fp8_block_cols = q.at("weight_block_size")[1].get<int64_t>();
    }
  }

  // Shape sanity: catch configs that would make tensors or routing meaningless.
  auto positive = [&](const char* name, int64_t v) {
    DSV_CHECK(v > 0, "{}: \"{}\" must be positive, found {}", origin, name, v);
  };
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("num_hidden_layers", c.num_hidden_layers);
  positive("num_attention_heads", c.num_attention_heads);
  positive("kv_lora_rank", c.kv_lora_rank);
  positive("qk_rope_head_dim", c.qk_rope_head_dim);
  positive("v_head_dim", c.v_head_dim);
  DSV_CHECK(c.qk_nope_head_dim >= 0, "{}: qk_nope_head_dim must be >= 0", origin);
  DSV_CHECK(c.qk_rope_head_dim % 2 == 0, "{}: qk_rope_head_dim must be even, found {}", origin, c.qk_rope_head_dim);
  DSV_CHECK(c.q_lora_rank >= 0, "{}: q_lora_rank must be >= 0 or null", origin);
  DSV_CHECK(c.hidden_act == "silu", "{}: hidden_act \"{}\" is not supported (expected \"silu\")", origin,
            c.hidden_act);
  if (has_moe || c.num_nextn_predict_layers > 0) {
    positive("n_routed_experts", c.n_routed_experts);
    positive("moe_intermediate_size", c.moe_intermediate_size);
    DSV_CHECK(c.num_experts_per_tok > 0 && c.num_experts_per_tok <= c.n_routed_experts,
              "{}: num_experts_per_tok must be in 1..n_routed_experts ({}), found {}", origin, c.n_routed_experts,
              c.num_experts_per_tok);
    DSV_CHECK(c.n_shared_experts >= 0, "{}: n_shared_experts must be >= 0", origin);
    const bool grouped = c.router != RouterKind::SoftmaxGreedy;
    if (grouped) {
      DSV_CHECK(c.n_group > 0 && c.n_routed_experts % c.n_group == 0,
                "{}: n_group ({}) must divide n_routed_experts ({})", origin, c.n_group, c.n_routed_experts);
      DSV_CHECK(c.topk_group > 0 && c.topk_group <= c.n_group, "{}: topk_group ({}) must be in 1..n_group ({})",
                origin, c.topk_group, c.n_group);
      DSV_CHECK(c.topk_group * (c.n_routed_experts / c.n_group) >= c.num_experts_per_tok,
                "{}: topk_group x experts per group ({} x {}) is fewer than num_experts_per_tok ({})", origin,
                c.topk_group, c.n_routed_experts / c.n_group, c.num_experts_per_tok);
      if (c.router == RouterKind::SigmoidNoauxGroups)
        DSV_CHECK(c.n_routed_experts / c.n_group >= 2,
                  "{}: deepseek_v3 ranks groups by their top-2 scores, so each group needs >= 2 experts "
                  "(n_routed_experts {} / n_group {})", origin, c.n_routed_experts, c.n_group);
    }
  }
  return c;
}

ModelConfig load_model_config_file(const std::string& path, const std::string& label) {
  std::ifstream in(path, std::ios::binary);
  DSV_CHECK(in.good(), "{}: cannot open (expected a Hugging Face config.json)", label);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_model_config(ss.str(), path);
}

ModelConfig load_model_config(const std::string& model_dir) {
  const std::filesystem::path path = std::filesystem::path(model_dir) / "config.json";
  std::ifstream in(path);
  DSV_CHECK(in.good(), "{}: cannot open (expected a Hugging Face model directory with config.json)", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_model_config(ss.str(), path.string());
}

}  // namespace dsv
