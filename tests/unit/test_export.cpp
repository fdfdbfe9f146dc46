// dsv export (src/io/hf_export): bit-exact round trips, bf16 rounding, sharding + index, MTP copies,
// config rewriting, FP8 dequantization, and every refusal (nothing written when it refuses).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include "core/dtype.h"
#include "io/hf_export.h"
#include "io/hf_names.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "model/model.h"
#include "test_helpers.h"
#include "tiny_checkpoint.h"

namespace dsv {
namespace {
namespace fs = std::filesystem;
using test::expect_error;
using test::temp_dir;

struct Stored {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// Every tensor of a checkpoint directory, by name.
std::map<std::string, Stored> read_all(const std::string& dir) {
  const Checkpoint ckpt(dir);
  std::map<std::string, Stored> out;
  for (const std::string& name : ckpt.names()) {
    const TensorEntry& e = ckpt.get(name);
    out[name] = {e.dtype, e.shape, std::vector<uint8_t>(e.data, e.data + e.nbytes)};
  }
  return out;
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

std::string tiny_dir() { return test::source_dir() + "/models/tiny"; }

ExportResult run_export(const std::string& from, const fs::path& to, DType dtype,
                        uint64_t max_shard = 5'000'000'000, bool force = false) {
  ExportOptions o;
  o.checkpoint = from;
  o.out_dir = to.string();
  o.dtype = dtype;
  o.max_shard_bytes = max_shard;
  o.force = force;
  return export_hf(o);
}

// No output and no temporary directory next to where it would have gone.
void expect_nothing_written(const fs::path& out) {
  EXPECT_FALSE(fs::exists(out)) << out;
  for (const auto& entry : fs::directory_iterator(out.parent_path()))
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
}

TEST(ExportBf16, RoundsToNearestEvenLikeTorch) {
  auto bits = [](uint32_t b) {
    float f;
    std::memcpy(&f, &b, 4);
    return f32_to_bf16(f);
  };
  EXPECT_EQ(bits(0x3f800000u), 0x3f80);  // 1.0 exactly
  EXPECT_EQ(bits(0x3f807fffu), 0x3f80);  // just below half an ulp: down
  EXPECT_EQ(bits(0x3f808000u), 0x3f80);  // tie, even neighbour below
  EXPECT_EQ(bits(0x3f818000u), 0x3f82);  // tie, odd below: up to even
  EXPECT_EQ(bits(0x3f808001u), 0x3f81);  // just above the tie: up
  EXPECT_EQ(bits(0xbf818000u), 0xbf82);  // negative ties round the magnitude the same way
  EXPECT_EQ(bits(0x80000000u), 0x8000);  // -0 keeps its sign
  EXPECT_EQ(bits(0x00018000u), 0x0002);  // subnormal tie, odd below
  EXPECT_EQ(bits(0x7f800000u), 0x7f80);  // +inf
  EXPECT_EQ(bits(0xff800000u), 0xff80);  // -inf
  EXPECT_EQ(bits(0x7f7fffffu), 0x7f80);  // FLT_MAX rounds to inf, as torch does
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xffc00001u, 0x7fffffffu}) {
    const uint16_t b = bits(nan);
    EXPECT_EQ(b & 0x7f80, 0x7f80) << std::hex << nan;  // exponent all ones
    EXPECT_NE(b & 0x007f, 0) << std::hex << nan;       // and a mantissa: NaN, never inf
  }
}

TEST(ExportBf16, ExportRoundsFp32WeightsToNearestEven) {
  const fs::path dir = temp_dir("export_round");
  const ModelConfig c = parse_model_config(test::tiny_config_json(), "test");
  auto tensors = test::random_tensors(c, 0, DType::F32, 3);
  const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x3f808001u, 0xbf818000u, 0x7f800000u, 0xff800000u,
                              0x7f7fffffu, 0x7fc00000u};
  const uint16_t expected[] = {0x3f80, 0x3f82, 0x3f81, 0xbf82, 0x7f80, 0xff80, 0x7f80};
  ASSERT_EQ(tensors[0].name, "model.embed_tokens.weight");
  std::memcpy(tensors[0].bytes.data(), special, sizeof(special));
  test::write_checkpoint(dir / "src", test::tiny_config_json(), tensors);
  run_export((dir / "src").string(), dir / "out", DType::BF16);

  const auto out = read_all((dir / "out").string());
  const Stored& embed = out.at("model.embed_tokens.weight");
  ASSERT_EQ(embed.dtype, DType::BF16);
  uint16_t got[8];
  std::memcpy(got, embed.bytes.data(), sizeof(got));
  for (int i = 0; i < 7; ++i) EXPECT_EQ(got[i], expected[i]) << i;
  EXPECT_TRUE(std::isnan(bf16_to_f32(got[7])));
  // Every other element: the same rounding as dtype.h's f32_to_bf16.
  for (const auto& t : tensors) {
    const Stored& o = out.at(t.name);
    for (size_t i = (t.name == tensors[0].name ? 8 : 0); i < t.bytes.size() / 4; ++i) {
      float f;
      uint16_t b;
      std::memcpy(&f, t.bytes.data() + 4 * i, 4);
      std::memcpy(&b, o.bytes.data() + 2 * i, 2);
      ASSERT_EQ(b, f32_to_bf16(f)) << t.name << "[" << i << "]";
    }
  }
  fs::remove_all(dir);
}

TEST(Export, TinyInItsStoredDtypeIsBitExact) {
  const fs::path dir = temp_dir("export_tiny");
  const auto source = read_all(tiny_dir());
  for (const auto& [name, t] : source) ASSERT_EQ(t.dtype, DType::BF16) << name << ": models/tiny is stored as bf16";
  const ExportResult r = run_export(tiny_dir(), dir / "out", DType::BF16);
  EXPECT_EQ(r.plan.copies_added, 0);  // models/tiny already holds the release's MTP copies
  EXPECT_EQ(r.plan.mtp_modules, 1);
  const auto out = read_all((dir / "out").string());
  ASSERT_EQ(out.size(), source.size());
  for (const auto& [name, t] : source) {
    ASSERT_TRUE(out.count(name)) << name;
    EXPECT_EQ(out.at(name).dtype, t.dtype) << name;
    EXPECT_EQ(out.at(name).shape, t.shape) << name;
    EXPECT_TRUE(out.at(name).bytes == t.bytes) << name << ": bytes differ";
  }
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    EXPECT_TRUE(fs::exists(dir / "out" / f)) << f;
  const auto config = read_json(dir / "out" / "config.json");
  EXPECT_EQ(config["torch_dtype"], "bfloat16");
  EXPECT_EQ(config["dtype"], "bfloat16");
  EXPECT_EQ(config["hidden_size"], 64);
  fs::remove_all(dir);
}

TEST(Export, Bf16ThroughFp32AndBackIsBitExact) {
  const fs::path dir = temp_dir("export_fp32");
  const auto source = read_all(tiny_dir());
  run_export(tiny_dir(), dir / "fp32", DType::F32);
  const auto wide = read_all((dir / "fp32").string());
  ASSERT_EQ(wide.size(), source.size());
  for (const auto& [name, t] : source) {  // bf16 -> fp32 widens exactly
    const Stored& w = wide.at(name);
    ASSERT_EQ(w.dtype, DType::F32);
    ASSERT_EQ(w.bytes.size(), t.bytes.size() * 2);
    for (size_t i = 0; i < t.bytes.size() / 2; ++i) {
      uint16_t b;
      float f;
      std::memcpy(&b, t.bytes.data() + 2 * i, 2);
      std::memcpy(&f, w.bytes.data() + 4 * i, 4);
      ASSERT_EQ(std::bit_cast<uint32_t>(f), std::bit_cast<uint32_t>(bf16_to_f32(b))) << name;
    }
  }
  EXPECT_EQ(read_json(dir / "fp32" / "config.json")["torch_dtype"], "float32");

  run_export((dir / "fp32").string(), dir / "fp32_again", DType::F32);  // fp32 -> fp32: identical
  const auto again = read_all((dir / "fp32_again").string());
  for (const auto& [name, t] : wide) EXPECT_TRUE(again.at(name).bytes == t.bytes) << name;

  run_export((dir / "fp32").string(), dir / "bf16", DType::BF16);  // fp32 -> bf16: the original bytes
  const auto back = read_all((dir / "bf16").string());
  for (const auto& [name, t] : source) EXPECT_TRUE(back.at(name).bytes == t.bytes) << name;
  fs::remove_all(dir);
}

TEST(Export, PlanShardsKeepsOrderAndIsolatesLargeTensors) {
  using Shards = std::vector<std::vector<size_t>>;
  EXPECT_EQ(plan_shards({5, 5, 5, 20, 3, 3, 10}, 10), (Shards{{0, 1}, {2}, {3}, {4, 5}, {6}}));
  EXPECT_EQ(plan_shards({0, 10, 0}, 10), (Shards{{0, 1, 2}}));
  EXPECT_EQ(plan_shards({11, 11}, 10), (Shards{{0}, {1}}));
  EXPECT_TRUE(plan_shards({}, 10).empty());
}

TEST(Export, ShardsAndIndexAreConsistent) {
  const fs::path dir = temp_dir("export_shards");
  const uint64_t limit = 20000;  // embed_tokens / lm_head (523 x 64 bf16 = 66944 bytes) exceed it
  const ExportResult r = run_export(tiny_dir(), dir / "out", DType::BF16, limit);
  const fs::path out = dir / "out";
  const auto index = read_json(out / "model.safetensors.index.json");
  const auto& weight_map = index["weight_map"];
  ASSERT_GT(r.shards, 5);

  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(out))
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path().filename().string());
  std::sort(files.begin(), files.end());
  ASSERT_EQ(static_cast<int64_t>(files.size()), r.shards);
  std::set<std::string> seen;
  uint64_t total = 0;
  std::vector<std::string> order;  // tensors in file order, shard after shard
  for (size_t s = 0; s < files.size(); ++s) {
    EXPECT_EQ(files[s], fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, files.size()));
    const SafetensorsFile f((out / files[s]).string());
    uint64_t bytes = 0;
    std::vector<std::pair<const uint8_t*, std::string>> by_offset;
    for (const auto& [name, e] : f.tensors()) {
      EXPECT_TRUE(seen.insert(name).second) << name << " appears in two shards";
      EXPECT_EQ(weight_map.at(name), files[s]) << name;
      bytes += e.nbytes;
      by_offset.emplace_back(e.data, name);
    }
    EXPECT_TRUE(bytes <= limit || f.tensors().size() == 1) << files[s] << " holds " << bytes << " bytes";
    std::sort(by_offset.begin(), by_offset.end());
    for (const auto& [_, name] : by_offset) order.push_back(name);
    total += bytes;
  }
  EXPECT_EQ(seen.size(), weight_map.size());
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(total, r.total_bytes);
  // The name table's order: the main model, then the MTP module (model.layers.2.*) with its own
  // embedding copy first, as the release has it.
  std::vector<std::string> planned;
  for (const ExportTensor& t : r.plan.tensors) planned.push_back(t.name);
  EXPECT_EQ(order, planned);
  EXPECT_EQ(order.front(), "model.embed_tokens.weight");
  const auto head = std::find(order.begin(), order.end(), "lm_head.weight");
  ASSERT_TRUE(head + 2 < order.end());
  EXPECT_EQ(head[1], "model.layers.2.embed_tokens.weight");
  EXPECT_EQ(head[2], "model.layers.2.enorm.weight");
  fs::remove_all(dir);
}


// A dsv training save directory: `latest` -> step dir with fp32 model.safetensors (HF names, an MTP
// module without the release's embed/head copies), optimizer state and the tokenizer.
fs::path make_training_save(const fs::path& root, const std::string& config_json, int64_t mtp) {
  const ModelConfig c = parse_model_config(config_json, "test");
  const fs::path step = root / "step_00000040";
  test::write_checkpoint(step, config_json, test::random_tensors(c, mtp, DType::F32, 11));
  const float moment[4] = {1, 2, 3, 4};
  write_safetensors((step / "optimizer.safetensors").string(), {{"adam.m.model.norm.weight", DType::F32, {4}, moment}});
  fs::copy_file(tiny_dir() + "/tokenizer.json", step / "tokenizer.json");
  test::write_raw(step / "trainer_state.json", R"({"step": 40})");
  test::write_raw(root / "latest", "step_00000040\n");
  return step;
}

TEST(Export, TrainingSaveGetsTheReleaseMtpCopies) {
  for (const bool tied : {false, true}) {
    const fs::path dir = temp_dir("export_mtp");
    const std::string config =
        test::tiny_config_json("deepseek_v3", std::string(R"(, "num_nextn_predict_layers": 1, "tie_word_embeddings": )") +
                                                  (tied ? "true" : "false"));
    make_training_save(dir / "save", config, 1);
    const ExportResult r = run_export((dir / "save").string(), dir / "out", DType::BF16);
    EXPECT_EQ(fs::path(r.source_dir).filename(), "step_00000040");
    EXPECT_EQ(r.plan.mtp_modules, 1);
    EXPECT_EQ(r.plan.copies_added, 2);
    const auto out = read_all((dir / "out").string());
    const std::string head = tied ? "model.embed_tokens.weight" : "lm_head.weight";
    EXPECT_EQ(out.count("lm_head.weight"), tied ? 0u : 1u);
    ASSERT_TRUE(out.count("model.layers.2.embed_tokens.weight"));
    ASSERT_TRUE(out.count("model.layers.2.shared_head.head.weight"));
    EXPECT_TRUE(out.at("model.layers.2.embed_tokens.weight").bytes == out.at("model.embed_tokens.weight").bytes);
    EXPECT_TRUE(out.at("model.layers.2.shared_head.head.weight").bytes == out.at(head).bytes);
    EXPECT_FALSE(out.count("adam.m.model.norm.weight"));  // optimizer state is not exported
    EXPECT_TRUE(fs::exists(dir / "out" / "tokenizer.json"));
    EXPECT_FALSE(fs::exists(dir / "out" / "trainer_state.json"));
    // The result is itself a valid export source that needs no copies, and the engine loads it.
    EXPECT_EQ(run_export((dir / "out").string(), dir / "again", DType::BF16).plan.copies_added, 0);
    EXPECT_EQ(load_model((dir / "out").string())->weights.mtp.size(), 1u);
    fs::remove_all(dir);
  }
}

TEST(Export, ConfigDtypeIsRewrittenAndQuantizationDropped) {
  const std::string text = R"({"model_type": "deepseek_v3", "dtype": "float8_e4m3fn", "hidden_size": 7,
    "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}, "vocab_size": 9})";
  const auto bf16 = nlohmann::ordered_json::parse(export_config_json(text, DType::BF16, "test"));
  EXPECT_EQ(bf16["torch_dtype"], "bfloat16");
  EXPECT_EQ(bf16["dtype"], "bfloat16");
  EXPECT_FALSE(bf16.contains("quantization_config"));
  EXPECT_EQ(bf16["hidden_size"], 7);
  std::vector<std::string> keys;
  for (auto it = bf16.begin(); it != bf16.end(); ++it) keys.push_back(it.key());
  EXPECT_EQ(keys, (std::vector<std::string>{"model_type", "dtype", "hidden_size", "vocab_size", "torch_dtype"}));
  const auto fp32 = nlohmann::json::parse(export_config_json(R"({"torch_dtype": "bfloat16"})", DType::F32, "test"));
  EXPECT_EQ(fp32["torch_dtype"], "float32");
  EXPECT_FALSE(fp32.contains("dtype"));  // only rewritten where present
  expect_error([] { export_config_json("{not json", DType::BF16, "cfg.json"); }, {"cfg.json", "not valid JSON"});
}

TEST(Export, Fp8SourceIsDequantizedLikeTheLoader) {
  const fs::path dir = temp_dir("export_fp8");
  const std::string src = test::source_dir() + "/tests/fixtures/models/v3_fp8_blocks";
  const ExportResult r = run_export(src, dir / "out", DType::F32);
  EXPECT_GT(r.plan.fp8_tensors, 0);
  EXPECT_FALSE(read_json(dir / "out" / "config.json").contains("quantization_config"));
  const auto out = read_all((dir / "out").string());
  for (const auto& [name, t] : out) {
    EXPECT_EQ(t.dtype, DType::F32) << name;
    EXPECT_FALSE(name.ends_with("_scale_inv")) << name;
  }
  // The exported fp32 weights are exactly what the engine computes with when loading the FP8 source.
  auto a = load_model(src), b = load_model((dir / "out").string());
  EXPECT_EQ(b->stats.fp8_tensors, 0);
  const auto ta = hf_weight_table(a->config, 0, a->weights), tb = hf_weight_table(b->config, 0, b->weights);
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    const int64_t n = ta[i].target->numel();
    ASSERT_EQ(n, tb[i].target->numel());
    EXPECT_EQ(std::memcmp(ta[i].target->data, tb[i].target->data, static_cast<size_t>(n) * 4), 0) << ta[i].hf_name;
  }
  fs::remove_all(dir);
}

TEST(Export, ShardedSourceExportsEveryTensor) {
  const fs::path dir = temp_dir("export_sharded");
  const std::string src = test::source_dir() + "/tests/fixtures/models/v3_sharded";
  run_export(src, dir / "out", DType::F32);
  const auto a = read_all(src), b = read_all((dir / "out").string());
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(b.at(name).bytes == t.bytes) << name;  // fp32 stays fp32
  fs::remove_all(dir);
}

TEST(Export, OmittedEmptyTensorsAreWrittenEmpty) {
  const fs::path dir = temp_dir("export_empty");
  const std::string config = test::tiny_config_json("deepseek_v3", R"(, "n_shared_experts": 0)");
  auto tensors = test::random_tensors(parse_model_config(config, "test"), 0, DType::BF16, 9);
  const auto empty = [](const test::RawTensor& t) { return t.bytes.empty(); };
  ASSERT_EQ(std::count_if(tensors.begin(), tensors.end(), empty), 3);  // shared_experts.{gate,up,down}_proj
  std::erase_if(tensors, empty);  // as writers that omit empty tensors do
  test::write_checkpoint(dir / "src", config, tensors);
  run_export((dir / "src").string(), dir / "out", DType::BF16);
  const auto out = read_all((dir / "out").string());
  ASSERT_TRUE(out.count("model.layers.1.mlp.shared_experts.gate_proj.weight"));
  EXPECT_EQ(out.at("model.layers.1.mlp.shared_experts.gate_proj.weight").shape, (std::vector<int64_t>{0, 32}));
  EXPECT_EQ(out.at("model.layers.1.mlp.shared_experts.down_proj.weight").shape, (std::vector<int64_t>{32, 0}));
  EXPECT_NO_THROW(load_model((dir / "out").string()));
  fs::remove_all(dir);
}

// A checkpoint of the small test config with one change applied to its tensor list.
fs::path broken_checkpoint(const fs::path& dir, const std::function<void(std::vector<test::RawTensor>&)>& change,
                           const std::string& config_extra = "", int64_t mtp = 0) {
  const std::string config = test::tiny_config_json("deepseek_v3", config_extra);
  auto tensors = test::random_tensors(parse_model_config(config, "test"), mtp, DType::BF16, 5);
  change(tensors);
  test::write_checkpoint(dir / "src", config, tensors);
  return dir / "src";
}

TEST(ExportErrors, ProblemsAreNamedAndNothingIsWritten) {
  const fs::path dir = temp_dir("export_errors");
  const fs::path out = dir / "out";
  auto expect_refused = [&](const fs::path& src, std::initializer_list<std::string> needles) {
    expect_error([&] { run_export(src.string(), out, DType::BF16); }, needles);
    expect_nothing_written(out);
    fs::remove_all(src);
  };
  expect_refused(broken_checkpoint(dir, [](auto& t) { t.erase(t.begin() + 3); }),
                 {"missing tensor", "model.layers.0.self_attn.q_a_proj.weight", "nothing was written"});
  expect_refused(broken_checkpoint(dir, [](auto& t) { t[1].shape = {32, 31}; t[1].bytes.resize(32 * 31 * 2); }),
                 {"model.layers.0.input_layernorm.weight", "has shape [32, 31], expected [32]"});
  expect_refused(broken_checkpoint(dir, [](auto& t) { t.push_back({"model.layers.0.extra.weight", DType::BF16, {2}, {0, 0, 0, 0}}); }),
                 {"unexpected tensor \"model.layers.0.extra.weight\""});
  expect_refused(broken_checkpoint(dir, [](auto& t) { t[0].dtype = DType::I32; t[0].bytes.resize(t[0].bytes.size() * 2); }),
                 {"model.embed_tokens.weight", "integer dtype I32"});
  // An MTP module the config does not declare.
  expect_refused(broken_checkpoint(dir, [](auto&) {}, "", 1), {"1 MTP module(s) stored", "num_nextn_predict_layers = 0"});
  // A module's embedding copy without the module.
  expect_refused(broken_checkpoint(dir, [](auto& t) { t.push_back({"model.layers.2.embed_tokens.weight", DType::BF16, t[0].shape, t[0].bytes}); }),
                 {"unexpected tensor \"model.layers.2.embed_tokens.weight\""});
  fs::remove_all(dir);
}

TEST(ExportErrors, ExistingOutputNeedsForce) {
  const fs::path dir = temp_dir("export_exists");
  const fs::path out = dir / "out";
  fs::create_directories(out);
  run_export(tiny_dir(), out, DType::BF16);  // an empty directory is fine
  test::write_raw(out / "marker.txt", "old");
  expect_error([&] { run_export(tiny_dir(), out, DType::BF16); }, {"already exists and is not empty", "--force"});
  EXPECT_TRUE(fs::exists(out / "marker.txt"));  // untouched
  run_export(tiny_dir(), out / "", DType::F32, 5'000'000'000, /*force=*/true);
  EXPECT_FALSE(fs::exists(out / "marker.txt"));  // replaced as a whole
  EXPECT_EQ(read_json(out / "config.json")["torch_dtype"], "float32");
  for (const auto& entry : fs::directory_iterator(dir))  // no leftovers beside it
    EXPECT_EQ(entry.path().filename(), "out");
  // Never into (or over) the source itself.
  expect_error([&] { run_export(out.string(), out, DType::BF16, 5'000'000'000, true); }, {"holds the checkpoint"});
  expect_error([&] { run_export(out.string(), dir, DType::BF16, 5'000'000'000, true); }, {"holds the checkpoint"});
  EXPECT_TRUE(fs::exists(out / "config.json"));
  fs::remove_all(dir);
}

TEST(ExportErrors, BadOptionsAndSources) {
  const fs::path dir = temp_dir("export_options");
  expect_error([&] { run_export(tiny_dir(), dir / "o", DType::F16); }, {"bf16 or fp32"});
  expect_error([&] { run_export((dir / "nope").string(), dir / "o", DType::BF16); }, {"not a directory"});
  fs::create_directories(dir / "save");
  test::write_raw(dir / "save" / "latest", "step_00000100\n");
  expect_error([&] { run_export((dir / "save").string(), dir / "o", DType::BF16); },
               {"latest", "step_00000100", "not a directory"});
  ExportOptions o{.checkpoint = tiny_dir(), .out_dir = (dir / "o").string(), .tokenizer_dir = dir.string()};
  expect_error([&] { export_hf(o); }, {"--tokenizer", "no tokenizer.json"});
  expect_nothing_written(dir / "o");
  fs::remove_all(dir);
}

TEST(ExportErrors, ByteSizes) {
  EXPECT_EQ(parse_byte_size("5GB"), 5'000'000'000u);
  EXPECT_EQ(parse_byte_size("500MB"), 500'000'000u);
  EXPECT_EQ(parse_byte_size("2GiB"), 2147483648u);
  EXPECT_EQ(parse_byte_size("64kib"), 65536u);
  EXPECT_EQ(parse_byte_size("123"), 123u);
  EXPECT_EQ(parse_byte_size(" 7 B "), 7u);
  EXPECT_EQ(parse_byte_size("1.5GB"), 1'500'000'000u);
  for (const char* bad : {"", "GB", "5XB", "-1", "0", "0MB", "1.2.3GB", "5 G B", "."})
    expect_error([&] { parse_byte_size(bad); }, {fmt::format("size \"{}\"", bad)});
}

}  // namespace
}  // namespace dsv
