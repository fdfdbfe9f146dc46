// SftDataset (src/data/sft_dataset.h): chat SFT samples with loss on assistant tokens only, on the
// bundled tiny tokenizer and on the real DeepSeek-V3 one (skipped where ../shared is absent).
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "data/sft_dataset.h"
#include "test_helpers.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"
#include "train/token_data.h"

namespace {

namespace fs = std::filesystem;
using dsv::data::SftDataset;
using dsv::train::Split;
using ojson = nlohmann::ordered_json;

const std::string kDeepSeek = DSV_SOURCE_DIR "/../shared/tokenizers/deepseek-v3";
const std::string kTiny = DSV_SOURCE_DIR "/models/tiny";
const std::string kFixtures = DSV_SOURCE_DIR "/tests/fixtures/sft";
const std::string kDebugSft = DSV_SOURCE_DIR "/data/debug/sft.jsonl";
constexpr int64_t kTinyVocab = 523, kDeepSeekVocab = 129280;
const std::string kEos = "<｜end▁of▁sentence｜>";

bool have_deepseek() { return fs::exists(kDeepSeek + "/tokenizer.json"); }
#define REQUIRE_DEEPSEEK() \
  if (!have_deepseek()) GTEST_SKIP() << "DeepSeek-V3 tokenizer not found at " << kDeepSeek

std::string read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// The messages of every non-blank line of a JSONL file, by line number.
std::map<int64_t, ojson> read_conversations(const std::string& path) {
  std::map<int64_t, ojson> out;
  std::ifstream f(path);
  std::string line;
  for (int64_t n = 1; std::getline(f, line); ++n)
    if (line.find_first_not_of(" \t\r") != std::string::npos) {
      ojson doc = ojson::parse(line);
      out[n] = doc.contains("messages") ? doc["messages"] : doc["conversations"];
    }
  return out;
}

std::string jsonl_of(const std::vector<ojson>& conversations) {
  std::string text;
  for (const auto& c : conversations) text += ojson{{"messages", c}}.dump() + "\n";
  return text;
}

ojson msg(const std::string& role, const std::string& content) { return ojson{{"role", role}, {"content", content}}; }

// A fresh temporary file holding `text`.
std::string temp_file(const std::string& text, const std::string& name = "data.jsonl") {
  const auto dir = dsv::test::temp_dir("sft");
  dsv::test::write_raw(dir / name, text);
  return (dir / name).string();
}

// A copy of the tiny tokenizer whose tokenizer_config.json is edited by `edit`.
std::string tiny_tokenizer_with(const std::function<void(nlohmann::json&)>& edit) {
  const auto dir = dsv::test::temp_dir("sft_tok");
  fs::copy_file(kTiny + "/tokenizer.json", dir / "tokenizer.json");
  nlohmann::json cfg = nlohmann::json::parse(read(kTiny + "/tokenizer_config.json"));
  edit(cfg);
  dsv::test::write_raw(dir / "tokenizer_config.json", cfg.dump());
  return dir.string();
}

SftDataset tiny_dataset(const std::string& path, int64_t seq_len = 512, const std::string& split = "100,0",
                        Split which = Split::Train, bool shuffle = false, uint64_t seed = 1) {
  return SftDataset(path, kTiny, split, which, seq_len, shuffle, seed, kTinyVocab);
}

// Maximal runs of learned tokens of sample k, and the token just before each run.
struct Run {
  std::vector<int32_t> ids;
  int32_t before = -1;
};
std::vector<Run> learned_runs(const SftDataset& ds, int64_t k) {
  const auto toks = ds.tokens(k);
  const auto learned = ds.learned(k);
  std::vector<Run> runs;
  for (size_t i = 0; i < toks.size(); ++i) {
    if (!learned[i]) continue;
    if (i == 0 || !learned[i - 1]) runs.push_back({{}, i > 0 ? toks[i - 1] : -1});
    runs.back().ids.push_back(toks[i]);
  }
  return runs;
}

// Every learned run decodes to exactly one assistant message's content plus the end-of-turn token,
// in order, and starts right after the generation prompt (or, after tool output, its end marker).
// content_prefix: what the template writes between the generation prompt and the content (DeepSeek-V2: " ").
void expect_masks_cover_assistant_turns(const std::string& tokenizer_dir, const std::string& jsonl, int64_t vocab,
                                        const std::string& content_prefix = "", bool check_prompt_token = true) {
  const dsv::Tokenizer tk = dsv::Tokenizer::load(tokenizer_dir);
  const SftDataset ds(jsonl, tokenizer_dir, "100,0", Split::Train, 4096, false, 1, vocab);
  const auto conversations = read_conversations(jsonl);
  const int32_t assistant = *tk.token_to_id("<｜Assistant｜>");
  const int32_t outputs_end = *tk.token_to_id("<｜tool▁outputs▁end｜>");
  int64_t turns = 0;
  for (int64_t k = 0; k < ds.num_samples(); ++k) {
    const ojson& messages = conversations.at(ds.line(k));
    const auto runs = learned_runs(ds, k);
    std::vector<std::string> want;
    std::vector<int32_t> want_before;
    for (size_t i = 0; i < messages.size(); ++i)
      if (messages[i]["role"] == "assistant") {
        want.push_back(content_prefix + messages[i]["content"].get<std::string>() + kEos);
        want_before.push_back(i > 0 && messages[i - 1]["role"] == "tool" ? outputs_end : assistant);
      }
    ASSERT_EQ(runs.size(), want.size()) << "line " << ds.line(k);
    for (size_t r = 0; r < runs.size(); ++r) {
      EXPECT_EQ(tk.decode(runs[r].ids, false), want[r]) << "line " << ds.line(k) << " turn " << r;
      if (check_prompt_token) {
        EXPECT_EQ(runs[r].before, want_before[r]) << "line " << ds.line(k) << " turn " << r;
      }
    }
    turns += static_cast<int64_t>(runs.size());
  }
  EXPECT_GT(turns, ds.num_samples());  // some conversations are multi-turn
}

// The engine's tokens (segments encoded separately, concatenated) against the full text encoded at once.
int64_t count_segmentation_mismatches(const dsv::Tokenizer& tk, const std::string& tokenizer_dir,
                                      const std::string& jsonl, int64_t vocab) {
  const SftDataset ds(jsonl, tokenizer_dir, "100,0", Split::Train, 1 << 20, false, 1, vocab);
  const auto conversations = read_conversations(jsonl);
  int64_t mismatches = 0;
  for (int64_t k = 0; k < ds.num_samples(); ++k) {
    const std::string text = tk.apply_chat_template(conversations.at(ds.line(k)), false, ojson::object());
    const auto full = tk.encode(text, false);
    const auto toks = ds.tokens(k);
    if (!std::equal(full.begin(), full.end(), toks.begin(), toks.end())) {
      ++mismatches;
      ADD_FAILURE() << tokenizer_dir << ": line " << ds.line(k) << ": segment-wise tokens differ from encoding "
                    << ojson(text).dump();
    }
  }
  return mismatches;
}

void expect_matches_fixture(const std::string& tokenizer_dir, const std::string& name, int64_t vocab) {
  const SftDataset ds(kFixtures + "/conversations.jsonl", tokenizer_dir, "100,0", Split::Train, 4096, false, 1, vocab);
  const auto expected = nlohmann::json::parse(read(kFixtures + "/expected_" + name + ".json"))["conversations"];
  // Conversation 7 of the fixture has no assistant message: it is dropped.
  ASSERT_EQ(ds.num_conversations(), static_cast<int64_t>(expected.size()));
  EXPECT_EQ(ds.num_dropped(), 1);
  ASSERT_EQ(ds.num_samples(), ds.num_conversations() - 1);
  std::set<int64_t> seen;
  for (int64_t k = 0; k < ds.num_samples(); ++k) {
    seen.insert(ds.line(k));
    const auto& row = expected.at(static_cast<size_t>(ds.line(k) - 1));
    const auto ids = row["ids"].get<std::vector<int32_t>>();
    const auto learned = row["learned"].get<std::vector<uint8_t>>();
    const auto toks = ds.tokens(k);
    const auto mask = ds.learned(k);
    EXPECT_EQ(std::vector<int32_t>(toks.begin(), toks.end()), ids) << name << " line " << ds.line(k);
    EXPECT_EQ(std::vector<uint8_t>(mask.begin(), mask.end()), learned) << name << " line " << ds.line(k);
  }
  EXPECT_EQ(seen.count(7), 0u);
}

// Random content that stresses pre-tokenization at span boundaries: spaces, newlines, digits,
// punctuation, CJK, emoji, fragments of special tokens.
std::string random_content(std::mt19937& rng) {
  static const std::vector<std::string> pieces = {
      " ", "  ", "\n", "\n\n", "\t", "a", "Word", " word", "123", "4567", ".", "!?", "...", "```", "你好", "世界",
      "😀", "👨‍👩‍👧", "é", "<｜", "｜>", "<｜end▁of▁sentence", "▁", "'s", " 'll", "-", "(", ")", "\r\n", "٣"};
  std::string s;
  const int n = std::uniform_int_distribution<int>(0, 8)(rng);
  for (int i = 0; i < n; ++i) s += pieces[std::uniform_int_distribution<size_t>(0, pieces.size() - 1)(rng)];
  return s;
}

std::string random_conversations_file(uint32_t seed, int count) {
  std::mt19937 rng(seed);
  std::vector<ojson> convs;
  for (int c = 0; c < count; ++c) {
    ojson m = ojson::array();
    if (rng() % 3 == 0) m.push_back(msg("system", random_content(rng)));
    const int turns = 1 + static_cast<int>(rng() % 3);
    for (int t = 0; t < turns; ++t) {
      m.push_back(msg("user", random_content(rng)));
      m.push_back(msg("assistant", random_content(rng)));
    }
    convs.push_back(m);
  }
  return temp_file(jsonl_of(convs));
}

TEST(SftDataset, MatchesTransformersFixturesTiny) { expect_matches_fixture(kTiny, "tiny", kTinyVocab); }

TEST(SftDataset, MatchesTransformersFixturesDeepSeekV3) {
  REQUIRE_DEEPSEEK();
  expect_matches_fixture(kDeepSeek, "deepseek_v3", kDeepSeekVocab);
}

TEST(SftDataset, MasksCoverAssistantContentAndEndOfTurnTiny) {
  expect_masks_cover_assistant_turns(kTiny, kFixtures + "/conversations.jsonl", kTinyVocab);
  expect_masks_cover_assistant_turns(kTiny, kDebugSft, kTinyVocab);
}

TEST(SftDataset, MasksCoverAssistantContentAndEndOfTurnDeepSeekV3) {
  REQUIRE_DEEPSEEK();
  expect_masks_cover_assistant_turns(kDeepSeek, kFixtures + "/conversations.jsonl", kDeepSeekVocab);
  expect_masks_cover_assistant_turns(kDeepSeek, kDebugSft, kDeepSeekVocab);
}

TEST(SftDataset, SegmentsConcatenateToTheFullEncodingTiny) {
  const dsv::Tokenizer tk = dsv::Tokenizer::load(kTiny);
  EXPECT_EQ(count_segmentation_mismatches(tk, kTiny, kDebugSft, kTinyVocab), 0);
  EXPECT_EQ(count_segmentation_mismatches(tk, kTiny, random_conversations_file(3, 200), kTinyVocab), 0);
}

TEST(SftDataset, SegmentsConcatenateToTheFullEncodingDeepSeekV3) {
  REQUIRE_DEEPSEEK();
  const dsv::Tokenizer tk = dsv::Tokenizer::load(kDeepSeek);
  EXPECT_EQ(count_segmentation_mismatches(tk, kDeepSeek, kFixtures + "/conversations.jsonl", kDeepSeekVocab), 0);
  EXPECT_EQ(count_segmentation_mismatches(tk, kDeepSeek, kDebugSft, kDeepSeekVocab), 0);
  EXPECT_EQ(count_segmentation_mismatches(tk, kDeepSeek, random_conversations_file(4, 300), kDeepSeekVocab), 0);
}

// DeepSeek-V2(-Lite)-Chat's template (as published in its tokenizer_config.json): the generation prompt
// "Assistant:" is followed by " " + content + eos in the rendered turn, so the learned span starts
// with that space; the boundary sits between ":" and " ", which pre-tokenization splits anyway.
const char* kDeepSeekV2Template =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

TEST(SftDataset, DeepSeekV2TemplateLearnsEverythingAfterTheGenerationPrompt) {
  const std::string dir = tiny_tokenizer_with([](nlohmann::json& c) { c["chat_template"] = kDeepSeekV2Template; });
  const dsv::Tokenizer tk = dsv::Tokenizer::load(dir);
  EXPECT_EQ(tk.apply_chat_template(ojson{msg("user", "Hi")}, true, ojson::object()),
            "<｜begin▁of▁sentence｜>User: Hi\n\nAssistant:");
  const std::string random = random_conversations_file(6, 200);
  expect_masks_cover_assistant_turns(dir, kDebugSft, kTinyVocab, " ", false);
  expect_masks_cover_assistant_turns(dir, random, kTinyVocab, " ", false);
  EXPECT_EQ(count_segmentation_mismatches(tk, dir, kDebugSft, kTinyVocab), 0);
  EXPECT_EQ(count_segmentation_mismatches(tk, dir, random, kTinyVocab), 0);
}

TEST(SftDataset, RandomConversationsKeepTheirAssistantTurns) {
  expect_masks_cover_assistant_turns(kTiny, random_conversations_file(5, 100), kTinyVocab);
}

TEST(SftDataset, AcceptsTheConversationsKey) {
  const std::string line = ojson{{"conversations", {msg("user", "Hi"), msg("assistant", "Hello")}}}.dump();
  auto ds = tiny_dataset(temp_file(line + "\n"));
  ASSERT_EQ(ds.num_samples(), 1);
  const dsv::Tokenizer tk = dsv::Tokenizer::load(kTiny);
  const auto runs = learned_runs(ds, 0);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(tk.decode(runs[0].ids, false), "Hello" + kEos);
}

TEST(SftDataset, TargetsAreNextLearnedTokensAndPaddingIsIgnored) {
  const std::string path = temp_file(jsonl_of({{msg("system", "Be brief."), msg("user", "What is 2 plus 2?"),
                                                msg("assistant", "4"), msg("user", "And 3 plus 3?"),
                                                msg("assistant", "6")}}));
  const int64_t S = 96;
  auto ds = tiny_dataset(path, S);
  const auto toks = ds.tokens(0);
  const auto learned = ds.learned(0);
  const auto len = static_cast<int64_t>(toks.size());
  ASSERT_LT(len, S + 1);  // the sample is padded
  EXPECT_EQ(ds.pad_id(), 1);  // models/tiny: pad_token is <｜end▁of▁sentence｜>
  std::vector<int32_t> inputs(S), targets(S);
  ds.sample(0, inputs.data(), targets.data());
  std::vector<int32_t> target_ids;
  for (int64_t j = 0; j < S; ++j) {
    if (j < len) {
      EXPECT_EQ(inputs[j], toks[j]) << j;
    } else {
      EXPECT_EQ(inputs[j], ds.pad_id()) << j;
    }
    const bool has_target = j + 1 < len && learned[j + 1];
    EXPECT_EQ(targets[j], has_target ? toks[j + 1] : -1) << j;
    if (targets[j] >= 0) target_ids.push_back(targets[j]);
  }
  // The targets, in order, are the two answers with their end-of-turn tokens and nothing else.
  const dsv::Tokenizer tk = dsv::Tokenizer::load(kTiny);
  EXPECT_EQ(tk.decode(target_ids, false), "4" + kEos + "6" + kEos);
  // Positions wrap: the only sample is read again in the next epoch.
  std::vector<int32_t> inputs2(S), targets2(S);
  ds.sample(1, inputs2.data(), targets2.data());
  EXPECT_EQ(inputs, inputs2);
  EXPECT_EQ(targets, targets2);
}

TEST(SftDataset, PadIsThePadTokenElseEos) {
  const std::string path = temp_file(jsonl_of({{msg("user", "Hi"), msg("assistant", "Hello")}}));
  const std::string user_pad = tiny_tokenizer_with([](nlohmann::json& c) { c["pad_token"] = "<｜User｜>"; });
  EXPECT_EQ(SftDataset(path, user_pad, "100,0", Split::Train, 64, false, 1, kTinyVocab).pad_id(), 512);
  const std::string object_pad = tiny_tokenizer_with([](nlohmann::json& c) {
    c["pad_token"] = {{"content", "<｜Assistant｜>"}, {"lstrip", false}};
  });
  EXPECT_EQ(SftDataset(path, object_pad, "100,0", Split::Train, 64, false, 1, kTinyVocab).pad_id(), 513);
  const std::string no_pad = tiny_tokenizer_with([](nlohmann::json& c) { c.erase("pad_token"); });
  SftDataset ds(path, no_pad, "100,0", Split::Train, 64, false, 1, kTinyVocab);
  EXPECT_EQ(ds.pad_id(), 1);  // eos
  std::vector<int32_t> inputs(64), targets(64);
  ds.sample(0, inputs.data(), targets.data());
  EXPECT_EQ(inputs[63], 1);
  EXPECT_EQ(targets[63], -1);
}

TEST(SftDataset, TruncatesToSeqLenPlusOne) {
  std::string long_answer;
  for (int i = 0; i < 40; ++i) long_answer += "word ";
  const std::string path =
      temp_file(jsonl_of({{msg("user", "Say many words."), msg("assistant", long_answer)},
                          {msg("user", "Hi"), msg("assistant", "Hello")}}));
  const int64_t S = 24;
  auto ds = tiny_dataset(path, S);
  ASSERT_EQ(ds.num_samples(), 2);
  EXPECT_EQ(ds.num_truncated(), 1);
  EXPECT_EQ(ds.tokens(0).size(), static_cast<size_t>(S + 1));
  EXPECT_LT(ds.tokens(1).size(), static_cast<size_t>(S + 1));
  ASSERT_EQ(ds.warnings().size(), 1u);
  EXPECT_NE(ds.warnings()[0].find("1 of 2 conversations"), std::string::npos) << ds.warnings()[0];
  EXPECT_NE(ds.warnings()[0].find("truncated"), std::string::npos) << ds.warnings()[0];
  // The truncated sample is the first S + 1 tokens of the full conversation, learned to the end.
  const auto full = tiny_dataset(path, 4096);
  const auto a = ds.tokens(0), b = full.tokens(0);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin()));
  std::vector<int32_t> inputs(S), targets(S);
  ds.sample(0, inputs.data(), targets.data());
  EXPECT_EQ(targets[S - 1], a[S]);  // the last target is the (S+1)-th token, an assistant token
}

TEST(SftDataset, DropsConversationsWithoutLearnedTargets) {
  std::string long_question;
  for (int i = 0; i < 40; ++i) long_question += "why ";
  const std::string path = temp_file(jsonl_of({{msg("user", "No answer here.")},
                                               {msg("user", long_question), msg("assistant", "Because.")},
                                               {msg("user", "Hi"), msg("assistant", "Hello")}}));
  auto ds = tiny_dataset(path, 16);
  EXPECT_EQ(ds.num_conversations(), 3);
  EXPECT_EQ(ds.num_dropped(), 2);
  ASSERT_EQ(ds.num_samples(), 1);
  EXPECT_EQ(ds.line(0), 3);
  const std::string all = ds.warnings().empty() ? "" : ds.warnings().back();
  EXPECT_NE(all.find("dropped 2 of 3"), std::string::npos) << all;
  EXPECT_NE(all.find("1 have no assistant message, 1 lose all of theirs to truncation"), std::string::npos) << all;
  EXPECT_NE(ds.describe().find("2 dropped"), std::string::npos) << ds.describe();
  // With room for the answer, the long conversation is kept.
  EXPECT_EQ(tiny_dataset(path, 1024).num_samples(), 2);
  // Nothing left at all is an error.
  dsv::test::expect_error([&] { tiny_dataset(temp_file(jsonl_of({{msg("user", "Alone.")}}))); },
                          {"none of its 1 conversations"});
}

TEST(SftDataset, SplitsByConversationsInFileOrder) {
  std::string text;
  for (int i = 0; i < 10; ++i) {
    text += ojson{{"messages", {msg("user", "Question " + std::to_string(i)), msg("assistant", "Answer")}}}.dump() +
            "\n";
    if (i % 3 == 0) text += "\n  \n";  // blank lines are skipped but still counted in line numbers
  }
  const std::string path = temp_file(text);
  const auto lines = read_conversations(path);
  std::vector<int64_t> file_lines;
  for (const auto& [n, m] : lines) file_lines.push_back(n);
  ASSERT_EQ(file_lines.size(), 10u);
  auto train = tiny_dataset(path, 64, "70,30", Split::Train);
  auto valid = tiny_dataset(path, 64, "70,30", Split::Valid);
  ASSERT_EQ(train.num_samples(), 7);
  ASSERT_EQ(valid.num_samples(), 3);
  for (int64_t k = 0; k < 7; ++k) EXPECT_EQ(train.line(k), file_lines[static_cast<size_t>(k)]);
  for (int64_t k = 0; k < 3; ++k) EXPECT_EQ(valid.line(k), file_lines[static_cast<size_t>(7 + k)]);
  // floor(10 * 85 / 100) = floor(8.5) = 8 train conversations, 2 valid.
  auto last = tiny_dataset(path, 64, "85,15", Split::Valid);
  ASSERT_EQ(last.num_samples(), 2);
  EXPECT_EQ(last.line(0), file_lines[8]);
  EXPECT_EQ(tiny_dataset(path, 64, "85,15", Split::Train).num_samples(), 8);
  dsv::test::expect_error([&] { tiny_dataset(path, 64, "100,0", Split::Valid); },
                          {"data.split \"100,0\"", "the valid split no conversation"});
  dsv::test::expect_error([&] { tiny_dataset(path, 64, "0,100", Split::Train); },
                          {"data.split \"0,100\"", "the train split no conversation"});
  for (const char* bad : {"abc", "1,2,3", "-1,2", "0,0", "90", "90,", "1e999,1"})
    dsv::test::expect_error([&] { tiny_dataset(path, 64, bad, Split::Train); }, {"data.split", bad});
}

TEST(SftDataset, ShuffleIsAPerEpochPermutationOfTheSeed) {
  std::vector<ojson> convs;
  for (int i = 0; i < 10; ++i) convs.push_back({msg("user", "Q" + std::to_string(i)), msg("assistant", "A")});
  const std::string path = temp_file(jsonl_of(convs));
  auto a = tiny_dataset(path, 32, "100,0", Split::Train, true, 5);
  auto b = tiny_dataset(path, 32, "100,0", Split::Train, true, 5);
  auto other_seed = tiny_dataset(path, 32, "100,0", Split::Train, true, 6);
  auto in_order = tiny_dataset(path, 32, "100,0", Split::Train, false, 5);
  bool differs_from_other_seed = false, differs_from_file_order = false;
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    const auto perm = dsv::train::TokenData::epoch_permutation(5, epoch, 10);
    std::set<int64_t> seen;
    for (int64_t k = 0; k < 10; ++k) {
      const int64_t p = epoch * 10 + k;
      const int64_t i = a.sample_index_at(p);
      EXPECT_EQ(i, perm[static_cast<size_t>(k)]);
      EXPECT_EQ(b.sample_index_at(p), i);
      seen.insert(i);
      differs_from_other_seed |= other_seed.sample_index_at(p) != i;
      differs_from_file_order |= i != k;
      EXPECT_EQ(in_order.sample_index_at(p), k);
    }
    EXPECT_EQ(seen.size(), 10u);
  }
  EXPECT_TRUE(differs_from_other_seed);
  EXPECT_TRUE(differs_from_file_order);
  // sample() reads the permuted conversation, in any call order.
  std::vector<int32_t> x(32), y(32), u(32), v(32);
  a.sample(23, x.data(), y.data());
  in_order.sample(a.sample_index_at(23), u.data(), v.data());
  EXPECT_EQ(x, u);
  EXPECT_EQ(y, v);
  // The valid split shuffles with its own seed, as data.tokens does.
  auto valid = tiny_dataset(path, 32, "50,50", Split::Valid, true, 5);
  const auto valid_perm = dsv::train::TokenData::epoch_permutation(5 ^ 0x76616c6964ull, 1, 5);
  for (int64_t k = 0; k < 5; ++k) EXPECT_EQ(valid.sample_index_at(5 + k), valid_perm[static_cast<size_t>(k)]);
}

TEST(SftDataset, DescribeSaysWhatItRead) {
  auto ds = tiny_dataset(kFixtures + "/conversations.jsonl", 4096, "100,0", Split::Train, true, 9);
  const std::string d = ds.describe();
  for (const char* needle : {"conversations.jsonl", "train split", "9 samples", "1 dropped", "seed 9", "pad id 1"})
    EXPECT_NE(d.find(needle), std::string::npos) << needle << " not in: " << d;
}

TEST(SftDataset, ErrorsNameTheLineAndTheProblem) {
  using dsv::test::expect_error;
  const std::string good = ojson{{"messages", {msg("user", "Hi"), msg("assistant", "Hello")}}}.dump() + "\n";
  auto expect_line_error = [&](const std::string& bad_line, std::initializer_list<std::string> needles) {
    const std::string path = temp_file(good + "\n" + bad_line + "\n" + good);
    std::vector<std::string> all = {"data.jsonl:3: "};
    all.insert(all.end(), needles.begin(), needles.end());
    try {
      tiny_dataset(path);
      ADD_FAILURE() << "no error for " << bad_line;
    } catch (const dsv::Error& e) {
      const std::string m = e.what();
      for (const auto& n : all) EXPECT_NE(m.find(n), std::string::npos) << "\"" << n << "\" not in: " << m;
    }
  };
  expect_line_error("{\"messages\": [", {"not valid JSON"});
  expect_line_error("[1, 2]", {"expected a JSON object"});
  expect_line_error("{\"text\": \"hello\"}", {"\"messages\"", "\"conversations\""});
  expect_line_error("{\"messages\": \"hello\"}", {"expected an array"});
  expect_line_error("{\"messages\": []}", {"non-empty array"});
  expect_line_error("{\"messages\": [\"hello\"]}", {"messages[0]", "expected an object"});
  expect_line_error("{\"messages\": [{\"content\": \"x\"}]}", {"messages[0]", "\"role\""});
  expect_line_error("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\"}]}",
                    {"messages[1]", "assistant", "\"content\""});
  expect_line_error("{\"messages\": [{\"role\": \"assistant\", \"content\": null}]}", {"\"content\"", "null"});
  // The DeepSeek template renders nothing for an unknown role: data would be lost silently.
  expect_line_error(ojson{{"messages", {msg("user", "Hi"), msg("bot", "Hello")}}}.dump(),
                    {"messages[1]", "\"bot\"", "adds nothing"});
  // DeepSeek templates move every system message to the front: not prefix-stable after the first turn.
  expect_line_error(
      ojson{{"messages", {msg("user", "Hi"), msg("assistant", "Hello"), msg("system", "Be brief."), msg("user", "?")}}}
          .dump(),
      {"not prefix-stable", "messages[0..2]"});

  // A template that rejects a role (raise_exception) names the line and keeps the template's words.
  const std::string strict = tiny_tokenizer_with([](nlohmann::json& c) {
    c["chat_template"] =
        "{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('Only user and assistant roles are supported') }}{% endif %}"
        "{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}{% else %}{{ '<｜Assistant｜>' + m['content'] + "
        "eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}";
  });
  const std::string with_system =
      temp_file(good + ojson{{"messages", {msg("system", "S"), msg("user", "Hi"), msg("assistant", "Yo")}}}.dump());
  expect_error([&] { SftDataset(with_system, strict, "100,0", Split::Train, 64, false, 1, kTinyVocab); },
               {"data.jsonl:2: ", "Only user and assistant roles are supported"});
  // The same template works for conversations it accepts.
  EXPECT_EQ(SftDataset(temp_file(good), strict, "100,0", Split::Train, 64, false, 1, kTinyVocab).num_samples(), 1);

  expect_error([&] { tiny_dataset(temp_file("")); }, {"data.jsonl", "no conversations"});
  expect_error([&] { tiny_dataset(temp_file("\n  \n\n")); }, {"data.jsonl", "no conversations"});
  expect_error([&] { tiny_dataset("/nonexistent/sft.jsonl"); }, {"cannot open", "/nonexistent/sft.jsonl"});
  // A model vocabulary smaller than the tokenizer's ids: the first id past it is named.
  expect_error([&] { SftDataset(temp_file(good), kTiny, "100,0", Split::Train, 64, false, 1, 300); },
               {"data.jsonl:1: ", "token id 512 ('<｜User｜>')", "outside the model's vocabulary [0, 300)"});
  expect_error([&] { SftDataset(temp_file(good), kTiny, "100,0", Split::Train, 64, false, 1, 1); },
               {"pad id 1", "[0, 1)"});
  const std::string no_template = tiny_tokenizer_with([](nlohmann::json& c) { c.erase("chat_template"); });
  expect_error([&] { SftDataset(temp_file(good), no_template, "100,0", Split::Train, 64, false, 1, kTinyVocab); },
               {"no chat template"});
  expect_error([&] { tiny_dataset(temp_file(good), 0); }, {"seq_len"});
}

}  // namespace
