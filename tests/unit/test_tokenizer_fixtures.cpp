// Encode/decode identity with Hugging Face `tokenizers` on the reference fixtures made by
// tests/ref/make_tokenizer_fixtures.py (DeepSeek-V3, the bundled tiny tokenizer, and variants).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {

const std::string kFixtures = DSV_SOURCE_DIR "/tests/fixtures/tokenizer/";
const std::string kDeepSeek = DSV_SOURCE_DIR "/../shared/tokenizers/deepseek-v3";

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f) << "missing fixture " << path;
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

std::string show(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    if (!s.empty()) s += ',';
    s += std::to_string(id);
  }
  return s;
}

// Checks every encode row (and decode row) of a fixture file; returns the number checked.
size_t check_rows(const dsv::Tokenizer& tk, const std::vector<nlohmann::json>& rows, std::optional<int32_t> bos) {
  size_t n = 0;
  for (const auto& r : rows) {
    if (r.contains("skip_special_tokens")) {
      const auto ids = r["ids"].get<std::vector<int32_t>>();
      EXPECT_EQ(tk.decode(ids, r["skip_special_tokens"].get<bool>()), r["text"].get<std::string>())
          << "decode of [" << show(ids) << "] skip=" << r["skip_special_tokens"];
      ++n;
      continue;
    }
    const std::string text = r.contains("bytes_hex") ? from_hex(r["bytes_hex"]) : r["text"].get<std::string>();
    const auto want = r["ids"].get<std::vector<int32_t>>();
    std::vector<int32_t> want_special;
    if (r.contains("ids_special")) {
      want_special = r["ids_special"].get<std::vector<int32_t>>();
    } else {
      if (bos) want_special.push_back(*bos);
      want_special.insert(want_special.end(), want.begin(), want.end());
    }
    const auto got = tk.encode(text, false);
    EXPECT_EQ(show(got), show(want)) << "encode of " << nlohmann::json(r).dump();
    EXPECT_EQ(show(tk.encode(text, true)), show(want_special)) << "encode with special tokens of " << r.dump();
    ++n;
  }
  return n;
}

TEST(TokenizerFixtures, DeepSeekV3EncodeDecode) {
  if (!std::filesystem::exists(kDeepSeek + "/tokenizer.json")) GTEST_SKIP() << "DeepSeek-V3 tokenizer not found at " << kDeepSeek;
  const dsv::Tokenizer tk = dsv::Tokenizer::load(kDeepSeek);
  EXPECT_EQ(tk.bos_id(), 0);
  EXPECT_EQ(tk.eos_id(), 1);
  EXPECT_EQ(tk.vocab_size(), 128815);
  const size_t n = check_rows(tk, read_jsonl(kFixtures + "deepseek_v3_encode.jsonl"), 0) +
                   check_rows(tk, read_jsonl(kFixtures + "deepseek_v3_decode.jsonl"), 0);
  EXPECT_GT(n, 500u);
}

TEST(TokenizerFixtures, TinyBundled) {
  const dsv::Tokenizer tk = dsv::Tokenizer::load(DSV_SOURCE_DIR "/models/tiny");
  EXPECT_EQ(tk.bos_id(), 0);
  EXPECT_EQ(tk.eos_id(), 1);
  EXPECT_GT(check_rows(tk, read_jsonl(kFixtures + "tiny.jsonl"), 0), 100u);
}

TEST(TokenizerFixtures, Variants) {
  for (const char* name : {"merged", "removed", "added", "plain"}) {
    SCOPED_TRACE(name);
    std::ifstream f(kFixtures + "variant_" + name + ".json");
    ASSERT_TRUE(f);
    const std::string json((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const dsv::Tokenizer tk = dsv::Tokenizer::from_json_text(json, "", name);
    EXPECT_GT(check_rows(tk, read_jsonl(kFixtures + "variant_" + name + ".jsonl"), std::nullopt), 50u);
  }
}

TEST(TokenizerFixtures, ChatTemplates) {
  std::ifstream f(kFixtures + "chat_templates.json");
  ASSERT_TRUE(f);
  const auto doc = nlohmann::ordered_json::parse(f);
  const bool have_ds = std::filesystem::exists(kDeepSeek + "/tokenizer.json");
  std::optional<dsv::Tokenizer> ds;
  if (have_ds) ds = dsv::Tokenizer::load(kDeepSeek);
  size_t n = 0;
  for (const auto& c : doc["cases"]) {
    const std::string name = c["template_name"];
    SCOPED_TRACE(name + ": " + c["messages"].dump());
    nlohmann::ordered_json vars = doc["special_tokens"];
    vars["messages"] = c["messages"];
    vars["add_generation_prompt"] = c["add_generation_prompt"];
    vars["tools"] = c.contains("tools") ? c["tools"] : nlohmann::ordered_json(nullptr);
    vars["documents"] = nullptr;
    const std::string tmpl = doc["templates"][name];
    if (c.contains("error")) {
      EXPECT_THROW(dsv::render_chat_template(tmpl, vars), dsv::Error) << "transformers failed with " << c["error"];
      ++n;
      continue;
    }
    EXPECT_EQ(dsv::render_chat_template(tmpl, vars), c["expected"].get<std::string>());
    if (name == "deepseek_v3" && ds) {
      // Through the public API too: the template comes from tokenizer_config.json.
      const std::string text = ds->apply_chat_template(c["messages"], c["add_generation_prompt"].get<bool>(),
                                                       nlohmann::ordered_json::object());
      EXPECT_EQ(text, c["expected"].get<std::string>());
      EXPECT_EQ(show(ds->encode(text, false)), show(c["ids"].get<std::vector<int32_t>>()));
    }
    ++n;
  }
  EXPECT_GT(n, 50u);
}

}  // namespace
