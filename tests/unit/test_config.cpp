#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "model/config.h"
#include "test_helpers.h"
#include "tiny_checkpoint.h"

namespace dsv {
namespace {
std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
std::string shared_config(const std::string& name) { return test::source_dir() + "/../shared/configs/" + name; }
}  // namespace

TEST(Config, PublishedConfigsLoad) {
  for (const char* name : {"deepseek-v2-lite.json", "deepseek-v2.json", "deepseek-v3.json", "bench/bench-16b-l4.json",
                           "bench/bench-671b-l2.json"}) {
    const std::string path = shared_config(name);
    if (!std::ifstream(path).good()) GTEST_SKIP() << "shared configs not found beside the repo: " << path;
    SCOPED_TRACE(name);
    const ModelConfig c = parse_model_config(read_text(path), path);
    EXPECT_GT(c.params_total(), c.params_active());
  }
  const std::string v3_path = shared_config("deepseek-v3.json");
  const ModelConfig v3 = parse_model_config(read_text(v3_path), v3_path);
  // Published figures: 671B total, 37B active (main model, MTP excluded).
  EXPECT_NEAR(v3.params_total() / 1e9, 671.0, 1.0);
  EXPECT_NEAR(v3.params_active() / 1e9, 37.5, 1.0);
  EXPECT_EQ(v3.fp8_block_rows, 128);
  EXPECT_EQ(v3.router, RouterKind::SigmoidNoauxGroups);
  // YaRN softmax scale: 192^-0.5 * (0.1 * 1.0 * ln 40 + 1)^2.
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(v3.softmax_scale(), m * m / std::sqrt(192.0), 1e-12);
  EXPECT_NEAR(v3.rope_attention_factor(), 1.0, 1e-12);  // mscale == mscale_all_dim
  const std::string lite_path = shared_config("deepseek-v2-lite.json");
  const ModelConfig lite = parse_model_config(read_text(lite_path), lite_path);
  EXPECT_NEAR(lite.params_total() / 1e9, 15.7, 0.1);
  EXPECT_NEAR(lite.params_active() / 1e9, 2.66, 0.1);  // 2.4B without the embedding and head
}

TEST(Config, BothRopeSpellingsAgree) {
  const std::string legacy = test::tiny_config_json(
      "deepseek_v3", R"(, "rope_theta": 5000, "rope_scaling": {"type": "yarn", "factor": 4, "beta_fast": 16,
      "beta_slow": 2, "mscale": 0.8, "mscale_all_dim": 0.5, "original_max_position_embeddings": 64})");
  const std::string v5 = test::tiny_config_json(
      "deepseek_v3", R"(, "rope_parameters": {"rope_type": "yarn", "rope_theta": 5000, "factor": 4, "beta_fast": 16,
      "beta_slow": 2, "mscale": 0.8, "mscale_all_dim": 0.5, "original_max_position_embeddings": 64})");
  const ModelConfig a = parse_model_config(legacy, "legacy"), b = parse_model_config(v5, "v5");
  EXPECT_EQ(a.rope.type, "yarn");
  EXPECT_EQ(a.rope_inv_freq(), b.rope_inv_freq());
  EXPECT_EQ(a.softmax_scale(), b.softmax_scale());
  EXPECT_NEAR(a.rope_attention_factor(), (0.1 * 0.8 * std::log(4.0) + 1) / (0.1 * 0.5 * std::log(4.0) + 1), 1e-12);
  // Without YaRN, plain RoPE frequencies: theta^(-2i/R).
  const ModelConfig plain = parse_model_config(test::tiny_config_json(), "plain");
  const auto f = plain.rope_inv_freq();
  ASSERT_EQ(f.size(), 4u);
  EXPECT_FLOAT_EQ(f[1], std::pow(10000.0f, -0.25f));
}

TEST(Config, MissingRequiredField) {
  test::expect_error([] { parse_model_config(R"({"model_type": "deepseek_v3", "vocab_size": 10})", "cfg.json"); },
                     {"cfg.json", "\"hidden_size\"", "missing"});
  test::expect_error([] { parse_model_config(R"({"vocab_size": 10})", "cfg.json"); }, {"\"model_type\""});
}

TEST(Config, RejectsWhatItCannotRun) {
  test::expect_error([] { parse_model_config(test::tiny_config_json("llama"), "c"); }, {"model_type \"llama\""});
  test::expect_error([] { parse_model_config("[1, 2]", "c"); }, {"JSON object"});
  test::expect_error([] { parse_model_config("{oops", "c.json"); }, {"c.json", "not valid JSON"});
  test::expect_error(
      [] { parse_model_config(test::tiny_config_json("deepseek_v3", R"(, "rope_scaling": {"type": "dynamic", "factor": 2})"), "c"); },
      {"rope type \"dynamic\""});
  test::expect_error([] { parse_model_config(test::tiny_config_json("deepseek_v3", R"(, "hidden_size": "32")"), "c"); },
                     {"\"hidden_size\"", "integer"});
  // 4 experts in 4 groups: V3 ranks groups by their top-2, impossible with one expert per group.
  test::expect_error([] { parse_model_config(test::tiny_config_json("deepseek_v3", R"(, "n_group": 4, "topk_group": 4)"), "c"); },
                     {"top-2"});
  test::expect_error([] { parse_model_config(test::tiny_config_json("deepseek_v2", R"(, "topk_method": "noaux_tc")"), "c"); },
                     {"topk_method \"noaux_tc\""});
}

TEST(Config, V2DefaultsFollowTransformers) {
  const ModelConfig c = parse_model_config(test::tiny_config_json("deepseek_v2"), "c");
  EXPECT_EQ(c.router, RouterKind::SoftmaxGreedy);
  EXPECT_EQ(c.rope_layout, RopeLayout::Interleaved);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  const ModelConfig h = parse_model_config(test::tiny_config_json("deepseek_v3", R"(, "rope_interleave": false)"), "c");
  EXPECT_EQ(h.rope_layout, RopeLayout::HalfSplit);
}

}  // namespace dsv
