// preprocess_jsonl (what `dsv preprocess` runs): documents, EOD, batching, and errors naming the line.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "data/indexed_dataset.h"
#include "data/preprocess.h"
#include "test_helpers.h"
#include "tokenizer/tokenizer.h"

namespace dsv::data {
namespace {

namespace fs = std::filesystem;
using test::expect_error;

class Preprocess : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir("preprocess");
    tk_ = std::make_unique<Tokenizer>(Tokenizer::load(test::source_dir() + "/models/tiny"));
  }
  void TearDown() override { fs::remove_all(dir_); }
  PreprocessOptions options(const std::string& jsonl, const std::string& name = "out") {
    PreprocessOptions o;
    o.input = (dir_ / (name + ".jsonl")).string();
    test::write_raw(o.input, jsonl);
    o.output_prefix = (dir_ / name).string();
    o.workers = 2;
    return o;
  }
  fs::path dir_;
  std::unique_ptr<Tokenizer> tk_;
};

const std::vector<std::string> kTexts = {"Hello world, this is dsv.", "", "Ünïcödé and numbers 12345",
                                         "line\nbreaks\tand \"quotes\""};

std::string jsonl_of(const std::vector<std::string>& texts, const std::string& key = "text") {
  std::string out;
  for (size_t i = 0; i < texts.size(); ++i) {
    nlohmann::json row = {{"id", i}, {key, texts[i]}};
    out += row.dump() + "\n";
    if (i == 0) out += "   \n";  // blank lines are skipped
  }
  return out;
}

TEST_F(Preprocess, EachLineIsOneDocumentEndingInEod) {
  auto o = options(jsonl_of(kTexts));
  const PreprocessStats s = preprocess_jsonl(*tk_, o);
  ASSERT_TRUE(tk_->eos_id().has_value());
  const int32_t eos = *tk_->eos_id();
  IndexedDataset ds(o.output_prefix, tk_->vocab_size());
  EXPECT_EQ(ds.dtype(), optimal_token_dtype(tk_->vocab_size()));
  ASSERT_EQ(ds.num_documents(), static_cast<int64_t>(kTexts.size()));
  EXPECT_EQ(s.documents, 4);
  EXPECT_EQ(s.empty_documents, 1);
  int64_t tokens = 0;
  for (size_t d = 0; d < kTexts.size(); ++d) {
    std::vector<int32_t> want = tk_->encode(kTexts[d], false);
    if (!want.empty()) want.push_back(eos);  // an empty text stays empty, as in Megatron
    EXPECT_EQ(ds.document(static_cast<int64_t>(d)), want) << "document " << d;
    tokens += static_cast<int64_t>(want.size());
  }
  EXPECT_EQ(ds.num_sequences(), 3);  // the empty document has none
  EXPECT_EQ(s.tokens, tokens);
  EXPECT_EQ(ds.num_tokens(), tokens);
  EXPECT_EQ(s.input_bytes, static_cast<int64_t>(fs::file_size(o.input)));
  EXPECT_FALSE(fs::exists(o.output_prefix + ".bin.tmp"));
}

TEST_F(Preprocess, OptionsNoEodJsonKeySpecialTokensAndSmallBatches) {
  std::vector<std::string> many;
  for (int i = 0; i < 50; ++i) many.push_back("document number " + std::to_string(i) + " says hi");
  auto o = options(jsonl_of(many, "body"), "a");
  o.json_key = "body";
  o.append_eod = false;
  o.batch_bytes = 64;  // many batches
  int progress_calls = 0;
  o.on_progress = [&](const PreprocessStats&) { ++progress_calls; };
  preprocess_jsonl(*tk_, o);
  EXPECT_GT(progress_calls, 5);
  IndexedDataset ds(o.output_prefix);
  ASSERT_EQ(ds.num_documents(), 50);
  for (int d = 0; d < 50; ++d) EXPECT_EQ(ds.document(d), tk_->encode(many[static_cast<size_t>(d)], false));

  auto o2 = options(jsonl_of({"some text"}), "b");
  o2.add_special_tokens = true;
  preprocess_jsonl(*tk_, o2);
  std::vector<int32_t> want = tk_->encode("some text", true);
  ASSERT_NE(want, tk_->encode("some text", false));  // the tiny tokenizer adds BOS
  want.push_back(*tk_->eos_id());
  EXPECT_EQ(IndexedDataset(o2.output_prefix).document(0), want);
}

TEST_F(Preprocess, BadLinesNameTheLineAndLeaveNoOutput) {
  const std::string good = "{\"text\": \"fine\"}\n";
  struct Case {
    std::string jsonl;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {good + "{\"text\": \"unterminated}\n", {"bad.jsonl:2:", "invalid JSON"}},
      {good + "\n" + "{\"txt\": \"x\"}\n", {"bad.jsonl:3:", "no key \"text\""}},
      {good + "{\"text\": 5}\n", {"bad.jsonl:2:", "\"text\" is a number, expected a string"}},
      {good + "[\"text\"]\n", {"bad.jsonl:2:", "expected a JSON object, found an array"}},
      {good + "{\"text\": null}\n", {"bad.jsonl:2:", "is null"}},
  };
  for (const auto& c : cases) {
    auto o = options(c.jsonl, "bad");
    try {
      preprocess_jsonl(*tk_, o);
      ADD_FAILURE() << "no error for " << c.jsonl;
    } catch (const Error& e) {
      for (const auto& n : c.needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    }
    for (const char* ext : {".bin", ".idx", ".bin.tmp", ".idx.tmp"})
      EXPECT_FALSE(fs::exists(o.output_prefix + ext)) << ext;
  }
  PreprocessOptions missing;
  missing.input = (dir_ / "nope.jsonl").string();
  missing.output_prefix = (dir_ / "nope").string();
  expect_error([&] { preprocess_jsonl(*tk_, missing); }, {"nope.jsonl", "cannot open"});
}

}  // namespace
}  // namespace dsv::data
