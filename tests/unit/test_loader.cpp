// Loading checkpoints through the name table: zero-copy fp32, conversions, FP8 block scales, and
// one clear error for each kind of mismatch.
#include <gtest/gtest.h>

#include <cmath>

#include "model/model.h"
#include "tiny_checkpoint.h"

namespace dsv {

TEST(Checkpoint, Fp32WeightsAreUsedInPlace) {
  auto dir = test::temp_dir("load_f32");
  const std::string cfg = test::tiny_config_json();
  const ModelConfig c = parse_model_config(cfg, "c");
  test::write_checkpoint(dir, cfg, test::random_tensors(c, 0, DType::F32, 1));
  auto m = load_model(dir.string());
  EXPECT_EQ(m->stats.converted_bytes, 0);
  EXPECT_TRUE(m->arena.empty());
  const TensorEntry& e = m->checkpoint->get("model.embed_tokens.weight");
  EXPECT_EQ(static_cast<const void*>(m->weights.embed_tokens.data), static_cast<const void*>(e.data))
      << "fp32 weights must point into the mapped file, not a copy";
}

TEST(Checkpoint, Bf16IsConvertedOnce) {
  auto dir = test::temp_dir("load_bf16");
  const std::string cfg = test::tiny_config_json();
  const ModelConfig c = parse_model_config(cfg, "c");
  const auto tensors = test::random_tensors(c, 0, DType::BF16, 2);
  test::write_checkpoint(dir, cfg, tensors);
  auto m = load_model(dir.string());
  EXPECT_EQ(m->stats.zero_copy_bytes, 0);
  EXPECT_EQ(static_cast<int64_t>(m->arena.size()) * 4, m->stats.converted_bytes);
  uint16_t first;
  std::memcpy(&first, tensors[0].bytes.data(), 2);
  EXPECT_EQ(m->weights.embed_tokens.data[0], bf16_to_f32(first));
}

TEST(Checkpoint, Fp8BlockScalesAreApplied) {
  auto dir = test::temp_dir("load_fp8");
  // Blocks of 4x4 so the 24x32 q_a_proj has 6 x 8 scale blocks, including a partial last block.
  const std::string cfg = test::tiny_config_json(
      "deepseek_v3", R"(, "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [5, 7]})");
  const ModelConfig c = parse_model_config(cfg, "c");
  auto tensors = test::random_tensors(c, 0, DType::F32, 3);
  const std::string target = "model.layers.0.self_attn.q_a_proj.weight";
  std::vector<float> expected;
  for (auto& t : tensors) {
    if (t.name != target) continue;
    const int64_t rows = t.shape[0], cols = t.shape[1], sr = (rows + 4) / 5, sc = (cols + 6) / 7;
    std::vector<float> scales(sr * sc);
    for (size_t i = 0; i < scales.size(); ++i) scales[i] = 0.5f + 0.25f * static_cast<float>(i % 5);
    std::vector<uint8_t> q(rows * cols);
    expected.resize(rows * cols);
    for (int64_t i = 0; i < rows * cols; ++i) {
      q[i] = static_cast<uint8_t>((i * 37) % 0x7e);  // finite codes only
      expected[i] = e4m3_to_f32(q[i]) * scales[((i / cols) / 5) * sc + (i % cols) / 7];
    }
    t.dtype = DType::F8_E4M3;
    t.bytes = q;
    std::vector<uint8_t> sbytes(scales.size() * 4);
    std::memcpy(sbytes.data(), scales.data(), sbytes.size());
    tensors.push_back({target + "_scale_inv", DType::F32, {sr, sc}, sbytes});
    break;
  }
  test::write_checkpoint(dir, cfg, tensors);
  auto m = load_model(dir.string());
  EXPECT_EQ(m->stats.fp8_tensors, 1);
  const Tensor& w = m->weights.layers[0].attn.q_a_proj;
  for (size_t i = 0; i < expected.size(); ++i) ASSERT_EQ(w.data[i], expected[i]) << "element " << i;
}

TEST(Checkpoint, Fp8WithoutScalesIsAnError) {
  auto dir = test::temp_dir("load_fp8_noscale");
  const std::string cfg = test::tiny_config_json();
  const ModelConfig c = parse_model_config(cfg, "c");
  auto tensors = test::random_tensors(c, 0, DType::F32, 3);
  for (auto& t : tensors)
    if (t.name == "model.layers.0.self_attn.o_proj.weight") {
      t.dtype = DType::F8_E4M3;
      t.bytes.resize(t.bytes.size() / 4);
    }
  test::write_checkpoint(dir, cfg, tensors);
  test::expect_error([&] { load_model(dir.string()); }, {"o_proj.weight_scale_inv"});
}

TEST(Checkpoint, WrongShapeNamesTheTensor) {
  auto dir = test::temp_dir("load_shape");
  const std::string cfg = test::tiny_config_json();
  const ModelConfig c = parse_model_config(cfg, "c");
  auto tensors = test::random_tensors(c, 0, DType::F32, 4);
  for (auto& t : tensors)
    if (t.name == "model.layers.1.self_attn.kv_b_proj.weight") {
      t.shape = {16, 32};  // transposed
    }
  test::write_checkpoint(dir, cfg, tensors);
  test::expect_error([&] { load_model(dir.string()); },
                     {"model.layers.1.self_attn.kv_b_proj.weight", "[16, 32]", "expected [32, 16]"});
}

TEST(Checkpoint, MissingAndUnexpectedTensors) {
  auto dir = test::temp_dir("load_names");
  const std::string cfg = test::tiny_config_json();
  const ModelConfig c = parse_model_config(cfg, "c");
  auto tensors = test::random_tensors(c, 0, DType::F32, 5);
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                               [](const auto& t) { return t.name == "model.layers.1.mlp.experts.3.up_proj.weight"; }),
                tensors.end());
  tensors.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", DType::F32, {4}, std::vector<uint8_t>(16)});
  test::write_checkpoint(dir, cfg, tensors);
  test::expect_error([&] { load_model(dir.string()); },
                     {"missing tensor \"model.layers.1.mlp.experts.3.up_proj.weight\" (expected shape [16, 32])",
                      "unexpected tensor \"model.layers.0.self_attn.rotary_emb.inv_freq\""});
}

TEST(Checkpoint, ConfigMissingFieldNamesFile) {
  auto dir = test::temp_dir("load_cfg");
  test::write_raw(dir / "config.json", R"({"model_type": "deepseek_v2", "vocab_size": 8, "hidden_size": 4})");
  test::expect_error([&] { load_model(dir.string()); }, {"config.json", "\"intermediate_size\""});
}

}  // namespace dsv

namespace dsv {

TEST(Checkpoint, NoSharedExpertsAcceptsEmptyOrOmittedTensors) {
  const std::string cfg = test::tiny_config_json("deepseek_v3", R"(, "n_shared_experts": 0)");
  const ModelConfig c = parse_model_config(cfg, "c");
  auto tensors = test::random_tensors(c, 0, DType::F32, 6);  // holds [0, D]-shaped shared experts
  auto with_empty = test::temp_dir("load_empty_shared");
  test::write_checkpoint(with_empty, cfg, tensors);
  EXPECT_NO_THROW(load_model(with_empty.string()));
  std::erase_if(tensors, [](const auto& t) { return t.name.find("shared_experts") != std::string::npos; });
  auto omitted = test::temp_dir("load_omitted_shared");
  test::write_checkpoint(omitted, cfg, tensors);
  auto m = load_model(omitted.string());
  const ModelConfig& mc = m->config;
  std::vector<int32_t> ids = {3, 5, 7};
  std::vector<float> logits(3 * mc.vocab_size);
  KvCache cache = make_kv_cache(*m, 3);
  forward(*m, ids.data(), 3, cache, {.logits = logits.data()});
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
}

}  // namespace dsv
