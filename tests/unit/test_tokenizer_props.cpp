// Properties and failure modes: decode(encode(x)) == x on random valid UTF-8, invalid UTF-8 and
// hostile inputs never crash, malformed tokenizer.json / templates fail naming the field.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace {

const std::string kDeepSeek = DSV_SOURCE_DIR "/../shared/tokenizers/deepseek-v3";
const std::string kTiny = DSV_SOURCE_DIR "/models/tiny";

std::string read(const std::string& path) {
  std::ifstream f(path);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Random valid UTF-8 drawn from ranges that stress the pre-tokenizer: ASCII, spaces and
// newlines, Latin, CJK, Hangul, Thai, Arabic, emoji (with ZWJ), digits from several scripts,
// and any scalar value at all.
std::string random_text(std::mt19937& rng) {
  static const std::pair<uint32_t, uint32_t> ranges[] = {
      {0x20, 0x7E}, {0x09, 0x0D}, {0xA0, 0x24F}, {0x4E00, 0x9FA5}, {0xAC00, 0xD7A3}, {0x0E01, 0x0E5B},
      {0x0600, 0x06FF}, {0x1F300, 0x1F64F}, {0x200B, 0x200D}, {0x0660, 0x0669}, {0x3040, 0x30FF}, {0x0, 0x10FFFF}};
  std::string s;
  const int n = std::uniform_int_distribution<int>(0, 60)(rng);
  for (int k = 0; k < n; ++k) {
    const auto& [lo, hi] = ranges[std::uniform_int_distribution<size_t>(0, std::size(ranges) - 1)(rng)];
    uint32_t cp = std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';  // surrogates are not scalar values
    dsv::tok::utf8_append(s, cp);
  }
  return s;
}

void roundtrip(const dsv::Tokenizer& tk, int cases) {
  std::mt19937 rng(1234);
  for (int k = 0; k < cases; ++k) {
    const std::string s = random_text(rng);
    const auto ids = tk.encode(s, false);
    ASSERT_EQ(tk.decode(ids, false), s) << "case " << k;
    // With special tokens added (BOS), skipping them on decode gives the text back too.
    ASSERT_EQ(tk.decode(tk.encode(s, true), true), s) << "case " << k;
  }
}

TEST(TokenizerProps, RoundTripTiny) { roundtrip(dsv::Tokenizer::load(kTiny), 3000); }

TEST(TokenizerProps, RoundTripDeepSeekV3) {
  if (!std::filesystem::exists(kDeepSeek)) GTEST_SKIP() << "DeepSeek-V3 tokenizer not found at " << kDeepSeek;
  roundtrip(dsv::Tokenizer::load(kDeepSeek), 3000);
}

TEST(TokenizerProps, InvalidUtf8NeverCrashes) {
  const dsv::Tokenizer tk = dsv::Tokenizer::load(kTiny);
  std::mt19937 rng(99);
  for (int k = 0; k < 2000; ++k) {
    std::string s(std::uniform_int_distribution<size_t>(0, 40)(rng), '\0');
    for (char& c : s) c = static_cast<char>(rng());
    const auto ids = tk.encode(s, true);
    // Invalid bytes read as U+FFFD: decoding gives the lossy form of the input.
    EXPECT_EQ(tk.decode(ids, true), dsv::tok::utf8_lossy(s));
  }
  // Out-of-range ids are skipped, not trusted.
  const std::vector<int32_t> bad = {-5, 0, 1 << 30, 99999999, 65};
  EXPECT_NO_THROW(tk.decode(bad, false));
}

TEST(TokenizerProps, Utf8Lossy) {
  using dsv::tok::utf8_lossy;
  EXPECT_EQ(utf8_lossy("abc"), "abc");
  EXPECT_EQ(utf8_lossy("a\xff" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(utf8_lossy("\xe4\xbd"), "\xEF\xBF\xBD");          // truncated 3-byte sequence: one U+FFFD
  EXPECT_EQ(utf8_lossy("\xed\xa0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate: one per byte
  EXPECT_EQ(utf8_lossy("\xf0\x9f\x98" "x"), "\xEF\xBF\xBD" "x");
}

TEST(TokenizerProps, LongInputs) {
  const dsv::Tokenizer tk = dsv::Tokenizer::load(kTiny);
  for (const std::string& s : {std::string(1 << 20, ' '), std::string(1 << 20, 'a'), std::string(300000, '\n'),
                               std::string(1 << 18, '7')}) {
    const auto ids = tk.encode(s, false);
    EXPECT_EQ(tk.decode(ids, false), s);
  }
}

TEST(TokenizerProps, BatchMatchesSingle) {
  const dsv::Tokenizer tk = dsv::Tokenizer::load(kTiny);
  std::mt19937 rng(7);
  std::vector<std::string> texts;
  for (int k = 0; k < 500; ++k) texts.push_back(random_text(rng));
  const auto batch = tk.encode_batch(texts, true, 4);
  ASSERT_EQ(batch.size(), texts.size());
  for (size_t k = 0; k < texts.size(); ++k) EXPECT_EQ(batch[k], tk.encode(texts[k], true));
}

// --- malformed tokenizer.json: each error names the field ---

std::string tiny_json() { return read(kTiny + "/tokenizer.json"); }

void expect_error(const std::string& json, const std::string& needle, const std::string& config = "") {
  try {
    dsv::Tokenizer::from_json_text(json, config, "tokenizer.json");
    ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
  } catch (const dsv::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

nlohmann::ordered_json tiny_doc() { return nlohmann::ordered_json::parse(tiny_json()); }

TEST(TokenizerMalformed, FieldsAreNamed) {
  expect_error("{", "invalid JSON");
  expect_error("[]", "top level");
  expect_error("", "invalid JSON");
  auto d = tiny_doc();
  d["model"]["type"] = "WordPiece";
  expect_error(d.dump(), "model.type");
  d = tiny_doc();
  d["model"].erase("merges");
  expect_error(d.dump(), "model.merges");
  d = tiny_doc();
  d["model"]["merges"][3] = nlohmann::ordered_json::array({"Ġ", "nope-not-a-token"});
  expect_error(d.dump(), "model.merges[3]");
  d = tiny_doc();
  d["model"]["merges"] = nlohmann::ordered_json::array({"a b c"});
  expect_error(d.dump(), "model.merges[0]");
  d = tiny_doc();
  d["model"]["vocab"]["a"] = "x";
  expect_error(d.dump(), "model.vocab");
  d = tiny_doc();
  d["model"]["dropout"] = 0.1;
  expect_error(d.dump(), "model.dropout");
  d = tiny_doc();
  d["normalizer"] = {{"type", "NFKC"}};
  expect_error(d.dump(), "normalizer.type");
  d = tiny_doc();
  d["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  expect_error(d.dump(), "pre_tokenizer.pretokenizers[0].behavior");
  d = tiny_doc();
  d["pre_tokenizer"]["pretokenizers"][1]["pattern"]["Regex"] = "([unclosed";
  expect_error(d.dump(), "pre_tokenizer.pretokenizers[1].pattern");
  d = tiny_doc();
  d["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Metaspace"}};
  expect_error(d.dump(), "pre_tokenizer.pretokenizers[0].type");
  d = tiny_doc();
  d["decoder"] = {{"type", "WordPiece"}};
  expect_error(d.dump(), "decoder.type");
  d = tiny_doc();
  d["post_processor"] = {{"type", "TemplateProcessing"}, {"single", nlohmann::ordered_json::array()},
                         {"special_tokens", nlohmann::ordered_json::object()}};
  expect_error(d.dump(), "post_processor.single");
  d = tiny_doc();
  d["added_tokens"][0]["id"] = "zero";
  expect_error(d.dump(), "added_tokens[0].id");
  d = tiny_doc();
  d["truncation"] = {{"max_length", 5}};
  expect_error(d.dump(), "truncation");
  expect_error(tiny_json(), "bos_token", R"({"bos_token": "<not-a-token>"})");
  expect_error(tiny_json(), "tokenizer_config.json", "{broken");
}

TEST(TokenizerMalformed, MissingDirectory) {
  EXPECT_THROW(dsv::Tokenizer::load("/nonexistent/tokenizer/dir"), dsv::Error);
}

// --- chat templates: unsupported constructs are named ---

void expect_template_error(const std::string& tmpl, const std::string& needle) {
  try {
    dsv::render_chat_template(tmpl, nlohmann::ordered_json{{"messages", nlohmann::ordered_json::array()}});
    ADD_FAILURE() << "expected an error mentioning '" << needle << "' for " << tmpl;
  } catch (const dsv::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(TokenizerTemplate, ErrorsNameTheConstruct) {
  expect_template_error("{% macro m() %}x{% endmacro %}", "'{% macro %}' statement");
  expect_template_error("{% raw %}x{% endraw %}", "'{% raw %}' statement");
  expect_template_error("{% if true %}x", "endif");
  expect_template_error("{% for x in y %}x", "endfor");
  expect_template_error("{{ x | frobnicate }}", "filter 'frobnicate'");
  expect_template_error("{{ 1 is frobnicated }}", "test 'frobnicated'");
  expect_template_error("{{ 'a' + 1 }}", "can only concatenate str");
  expect_template_error("{{ undefined_var.attr }}", "'undefined_var' is undefined");
  expect_template_error("{{ raise_exception('bad role') }}", "bad role");
  expect_template_error("{{ 'abc", "unterminated string");
  expect_template_error("{{ 1 +", "line 1");
  expect_template_error("{% set x %}y{% endset %}", "block assignment");
  expect_template_error("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}", "nesting deeper");
  expect_template_error("{{ " + std::string(5000, '-') + "1 }}", "nesting deeper");
  std::string deep;
  for (int k = 0; k < 1000; ++k) deep += "{% if true %}";
  expect_template_error(deep, "nesting deeper");
}

TEST(TokenizerTemplate, Basics) {
  auto r = [](const std::string& t, nlohmann::ordered_json v = nlohmann::ordered_json::object()) {
    return dsv::render_chat_template(t, v);
  };
  EXPECT_EQ(r("  {% if true %}\n  yes\n  {% endif %}\n  {{ 1 }}  \n"), "  yes\n  1  ");
  EXPECT_EQ(r("{{ 1.0 }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 10 / 4 }} {{ -7 // 2 }} {{ -7 % 3 }}"),
            "1.0 1e+20 0.30000000000000004 2.5 -4 2");
  EXPECT_EQ(r("{{ [1, 'a', none, true, {'k': 'v'}] }} {{ \"it's\" }} {{ ['it\\'s'] }}"),
            "[1, 'a', None, True, {'k': 'v'}] it's [\"it's\"]");
  EXPECT_EQ(r("{% set x = 5 %}{% for i in [1, 2] %}{{ x }}{% set x = i %}{{ x }}{% endfor %}[{{ x }}]"), "5152[5]");
  EXPECT_EQ(r("{{ 'héllo'[1] }}{{ 'héllo' | length }}{{ 'ab'[::-1] }}"), "é5ba");
  EXPECT_EQ(r("{{ d | tojson }}", {{"d", {{"b", 1}, {"a", "é\n"}}}}), "{\"b\": 1, \"a\": \"é\\n\"}");
}

TEST(TokenizerTemplate, NoTemplate) {
  const auto tk = dsv::Tokenizer::from_json_text(tiny_json(), "{}", "tiny");
  EXPECT_THROW(tk.apply_chat_template(nlohmann::json::array(), true), dsv::Error);
}

}  // namespace
