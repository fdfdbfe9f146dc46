#include "data/sft_dataset.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>
#include <tuple>

#include "core/error.h"
#include "train/token_data.h"

namespace dsv::data {

namespace {

using ojson = nlohmann::ordered_json;

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// The first byte where `next` stops extending `prev` (for the error message).
size_t first_difference(const std::string& prev, const std::string& next) {
  size_t i = 0;
  while (i < prev.size() && i < next.size() && prev[i] == next[i]) ++i;
  return i;
}

// A short, printable excerpt of s around byte `at`, for errors.
std::string excerpt(const std::string& s, size_t at) {
  const size_t from = at > 20 ? at - 20 : 0;
  std::string e = s.substr(from, 60);
  for (char& ch : e)
    if (ch == '\n') ch = ' ';
  return ojson(e).dump(-1, ' ', false, ojson::error_handler_t::replace);
}

// The pad id: tokenizer_config.json's pad_token ("text" or {"content": "text"}), else the eos id.
int32_t find_pad_id(const Tokenizer& tk, const std::string& dir) {
  const auto config_path = std::filesystem::path(dir) / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    std::ifstream in(config_path);
    const nlohmann::json cfg = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (cfg.is_object()) {
      auto it = cfg.find("pad_token");
      std::optional<std::string> pad;
      if (it != cfg.end() && it->is_string()) pad = it->get<std::string>();
      if (it != cfg.end() && it->is_object() && it->contains("content") && (*it)["content"].is_string())
        pad = (*it)["content"].get<std::string>();
      if (pad) {
        const auto id = tk.token_to_id(*pad);
        DSV_CHECK(id, "{}: pad_token '{}' is not in the vocabulary of tokenizer.json", config_path.string(), *pad);
        return *id;
      }
    }
  }
  const auto eos = tk.eos_id();
  DSV_CHECK(eos, "{}: padding SFT samples needs a pad_token or an eos_token in tokenizer_config.json, found neither",
            dir);
  return *eos;
}

// One non-blank line of the file.
struct Line {
  int64_t number = 0;  // 1-based
  std::string_view text;
};

std::vector<Line> read_lines(const std::string& path, std::string& storage) {
  std::ifstream in(path, std::ios::binary);
  DSV_CHECK(in, "data.sft: cannot open {}", path);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  storage = std::move(buffer).str();
  std::vector<Line> lines;
  int64_t number = 0;
  size_t start = 0;
  while (start < storage.size()) {
    size_t end = storage.find('\n', start);
    if (end == std::string::npos) end = storage.size();
    ++number;
    std::string_view text(storage.data() + start, end - start);
    if (text.find_first_not_of(" \t\r") != std::string_view::npos) lines.push_back({number, text});
    start = end + 1;
  }
  return lines;
}

// The messages of one JSONL line, or a dsv::Error saying what is wrong with it.
ojson parse_messages(std::string_view text) {
  ojson doc;
  try {
    doc = ojson::parse(text);
  } catch (const ojson::exception& e) {
    DSV_FAIL("not valid JSON ({})", e.what());
  }
  DSV_CHECK(doc.is_object(), "expected a JSON object {{\"messages\": [...]}}, found {}", doc.type_name());
  const char* key = doc.contains("messages") ? "messages" : doc.contains("conversations") ? "conversations" : nullptr;
  DSV_CHECK(key, "expected the key \"messages\" (or \"conversations\"): an array of {{\"role\", \"content\"}} objects");
  ojson messages = std::move(doc[key]);
  DSV_CHECK(messages.is_array(), "\"{}\": expected an array of {{\"role\", \"content\"}} objects, found {}", key,
            messages.type_name());
  return messages;
}

}  // namespace

ChatSegments split_conversation(const Tokenizer& tk, const ojson& messages) {
  DSV_CHECK(messages.is_array() && !messages.empty(), "expected a non-empty array of messages, found {}",
            messages.is_array() ? "an empty array" : messages.type_name());
  for (size_t i = 0; i < messages.size(); ++i) {
    const ojson& m = messages[i];
    DSV_CHECK(m.is_object(), "messages[{}]: expected an object {{\"role\", \"content\"}}, found {}", i, m.type_name());
    DSV_CHECK(m.contains("role") && m["role"].is_string(), "messages[{}]: expected a string \"role\"", i);
    DSV_CHECK(m.contains("content") && m["content"].is_string(),
              "messages[{}] (role \"{}\"): expected a string \"content\"{}", i, m["role"].get<std::string>(),
              m.contains("content") ? fmt::format(", found {}", m["content"].type_name()) : "");
  }
  const ojson no_variables = ojson::object();
  auto render = [&](size_t count, bool generation_prompt) {
    const ojson prefix(messages.begin(), messages.begin() + static_cast<std::ptrdiff_t>(count));
    return tk.apply_chat_template(prefix, generation_prompt, no_variables);
  };
  auto require_extends = [](const std::string& prev, const std::string& next, const std::string& what) {
    if (starts_with(next, prev)) return;
    const size_t at = first_difference(prev, next);
    DSV_FAIL(
        "the chat template is not prefix-stable: {} does not start with the text rendered before it (they differ "
        "at byte {}: {} vs {}); assistant masks need every rendered prefix to extend the previous one (DeepSeek "
        "templates move all system messages to the front, so a system message must come first)",
        what, at, excerpt(next, at), excerpt(prev, at));
  };

  std::string prev;                                  // the text rendered so far
  std::vector<std::pair<size_t, size_t>> spans;      // learned byte ranges of the full text
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string role = messages[i]["role"].get<std::string>();
    if (role == "assistant") {
      const std::string prompt = render(i, true);
      require_extends(prev, prompt, fmt::format("messages[0..{}) with the generation prompt", i));
      prev = prompt;
    }
    std::string text = render(i + 1, false);
    require_extends(prev, text, fmt::format("messages[0..{}]", i));
    const bool has_content = !messages[i]["content"].get_ref<const std::string&>().empty();
    DSV_CHECK(text.size() > prev.size() || !has_content,
              "messages[{}] (role \"{}\") adds nothing to the rendered text: the chat template ignores this role", i,
              role);
    if (role == "assistant") spans.emplace_back(prev.size(), text.size());
    prev = std::move(text);
  }

  ChatSegments out;
  auto add = [&](size_t from, size_t to, bool learned) {
    if (to <= from) return;
    out.segments.push_back(prev.substr(from, to - from));
    out.learned.push_back(learned ? 1 : 0);
  };
  size_t at = 0;
  for (const auto& [from, to] : spans) {
    add(at, from, false);
    add(from, to, true);
    at = to;
  }
  add(at, prev.size(), false);
  return out;
}

SftDataset::SftDataset(const std::string& jsonl_path, const std::string& tokenizer_dir, const std::string& split,
                       train::Split which, int64_t seq_len, bool shuffle, uint64_t seed, int64_t vocab_size)
    : path_(jsonl_path), which_(which), seq_len_(seq_len), shuffle_(shuffle), seed_(seed) {
  DSV_CHECK(seq_len >= 1, "{}: expected train.seq_len >= 1, found {}", jsonl_path, seq_len);
  const Tokenizer tk = Tokenizer::load(tokenizer_dir);
  DSV_CHECK(!tk.chat_template().empty(),
            "data.tokenizer {}: has no chat template (tokenizer_config.json \"chat_template\" or chat_template.jinja); "
            "SFT renders conversations with it",
            tokenizer_dir);
  pad_id_ = find_pad_id(tk, tokenizer_dir);
  DSV_CHECK(pad_id_ >= 0 && pad_id_ < vocab_size,
            "data.tokenizer {}: pad id {} is outside the model's vocabulary [0, {})", tokenizer_dir, pad_id_,
            vocab_size);

  std::string storage;
  const std::vector<Line> lines = read_lines(jsonl_path, storage);
  DSV_CHECK(!lines.empty(), "{}: no conversations (the file is empty); expected one JSON object per line", jsonl_path);
  file_conversations_ = static_cast<int64_t>(lines.size());
  // The shared rule of sample_source.h: train is the first floor(N * a / (a + b)) conversations.
  const train::SplitShares shares = train::parse_split(split);
  std::tie(range_.begin, range_.end) = train::split_range(file_conversations_, shares, which);
  const char* split_name = which == train::Split::Train ? "train" : "valid";
  DSV_CHECK(range_.end > range_.begin,
            "{}: data.split \"{}\" leaves the {} split no conversation (train is the first floor({} * {} / {}) = {} "
            "of {}); change the shares or add conversations",
            jsonl_path, split, split_name, file_conversations_, shares.train, shares.train + shares.valid,
            which == train::Split::Train ? range_.end : range_.begin, file_conversations_);
  num_conversations_ = range_.end - range_.begin;

  // Parse and render on all cores; errors are kept per conversation and the first in file order is thrown.
  const auto n = static_cast<size_t>(num_conversations_);
  std::vector<ChatSegments> rendered(n);
  std::vector<std::string> errors(n);
  {
    std::atomic<size_t> next{0};
    auto work = [&]() {
      for (size_t c; (c = next.fetch_add(1)) < n;) {
        try {
          rendered[c] = split_conversation(tk, parse_messages(lines[static_cast<size_t>(range_.begin) + c].text));
        } catch (const std::exception& e) {
          errors[c] = e.what();
        }
      }
    };
    const size_t threads = std::min<size_t>(n, std::max(1u, std::thread::hardware_concurrency()));
    std::vector<std::thread> pool;
    for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
  }
  for (size_t c = 0; c < n; ++c)
    DSV_CHECK(errors[c].empty(), "{}:{}: {}", jsonl_path, lines[static_cast<size_t>(range_.begin) + c].number,
              errors[c]);

  // Encode every segment of every conversation in one batch.
  std::vector<std::string> segments;
  for (auto& r : rendered)
    for (auto& s : r.segments) segments.push_back(std::move(s));
  const std::vector<std::vector<int32_t>> encoded = tk.encode_batch(segments, /*add_special_tokens=*/false);
  segments.clear();

  const auto window = static_cast<size_t>(seq_len + 1);
  offsets_.push_back(0);
  size_t seg = 0;
  int64_t no_assistant = 0;
  for (size_t c = 0; c < n; ++c) {
    const int64_t line_number = lines[static_cast<size_t>(range_.begin) + c].number;
    std::vector<int32_t> toks;
    std::vector<uint8_t> learned;
    for (uint8_t l : rendered[c].learned) {
      const auto& ids = encoded[seg++];
      toks.insert(toks.end(), ids.begin(), ids.end());
      learned.insert(learned.end(), ids.size(), l);
    }
    for (int32_t id : toks)
      DSV_CHECK(id >= 0 && id < vocab_size,
                "{}:{}: token id {} ('{}') is outside the model's vocabulary [0, {}): the tokenizer {} does not fit "
                "this model",
                jsonl_path, line_number, id, tk.id_to_token(id).value_or("?"), vocab_size, tokenizer_dir);
    const bool any_learned = std::find(learned.begin(), learned.end(), 1) != learned.end();
    if (toks.size() > window) {
      ++num_truncated_;
      toks.resize(window);
      learned.resize(window);
    }
    // Token 0 is never a target; a sample needs a learned token at 1..len-1.
    if (learned.size() < 2 || std::find(learned.begin() + 1, learned.end(), 1) == learned.end()) {
      ++num_dropped_;
      if (!any_learned) ++no_assistant;
      continue;
    }
    num_learned_ += std::count(learned.begin() + 1, learned.end(), 1);
    tokens_.insert(tokens_.end(), toks.begin(), toks.end());
    learned_.insert(learned_.end(), learned.begin(), learned.end());
    offsets_.push_back(static_cast<int64_t>(tokens_.size()));
    lines_.push_back(line_number);
  }

  const char* name = split_name;
  if (num_truncated_ > 0)
    warnings_.push_back(fmt::format("{} ({} split): {} of {} conversations are longer than train.seq_len + 1 = {} "
                                    "tokens and were truncated to their first {} tokens",
                                    jsonl_path, name, num_truncated_, num_conversations_, window, window));
  if (num_dropped_ > 0)
    warnings_.push_back(fmt::format("{} ({} split): dropped {} of {} conversations with no assistant token to learn "
                                    "({} have no assistant message, {} lose all of theirs to truncation)",
                                    jsonl_path, name, num_dropped_, num_conversations_, no_assistant,
                                    num_dropped_ - no_assistant));
  for (const auto& w : warnings_) std::fprintf(stderr, "dsv: warning: %s\n", w.c_str());
  DSV_CHECK(!lines_.empty(),
            "{} ({} split): none of its {} conversations has an assistant token to learn within train.seq_len + 1 = "
            "{} tokens",
            jsonl_path, name, num_conversations_, window);
}

std::span<const int32_t> SftDataset::tokens(int64_t k) const {
  DSV_CHECK(k >= 0 && k < num_samples(), "{}: sample {} outside [0, {})", path_, k, num_samples());
  const auto from = static_cast<size_t>(offsets_[static_cast<size_t>(k)]);
  const auto to = static_cast<size_t>(offsets_[static_cast<size_t>(k) + 1]);
  return {tokens_.data() + from, to - from};
}

std::span<const uint8_t> SftDataset::learned(int64_t k) const {
  const auto t = tokens(k);
  return {learned_.data() + (t.data() - tokens_.data()), t.size()};
}

int64_t SftDataset::sample_index_at(int64_t position) {
  DSV_CHECK(position >= 0, "{}: sample position {} is negative", path_, position);
  const int64_t n = num_samples();
  const int64_t k = position % n;
  if (!shuffle_) return k;
  const int64_t epoch = position / n;
  if (epoch != cached_epoch_) {
    // As data.tokens does (sample_source.cpp): the valid split draws its own permutation.
    perm_ = train::TokenData::epoch_permutation(which_ == train::Split::Train ? seed_ : seed_ ^ 0x76616c6964ull,
                                                epoch, n);
    cached_epoch_ = epoch;
  }
  return perm_[static_cast<size_t>(k)];
}

void SftDataset::sample(int64_t position, int32_t* inputs, int32_t* targets) {
  const int64_t k = sample_index_at(position);
  const auto toks = tokens(k);
  const auto learned = this->learned(k);
  const auto len = static_cast<int64_t>(toks.size());
  for (int64_t j = 0; j < seq_len_; ++j) {
    inputs[j] = j < len ? toks[static_cast<size_t>(j)] : pad_id_;
    targets[j] = j + 1 < len && learned[static_cast<size_t>(j + 1)] ? toks[static_cast<size_t>(j + 1)] : -1;
  }
}

std::string SftDataset::describe() const {
  return fmt::format(
      "sft {} ({} split: conversations {}..{} of {}): {} samples of {} tokens, {} tokens ({} learned), {} truncated, "
      "{} dropped, pad id {}, order {}",
      path_, which_ == train::Split::Train ? "train" : "valid", range_.begin, range_.end, file_conversations_,
      num_samples(), seq_len_ + 1, tokens_.size(), num_learned_, num_truncated_, num_dropped_, pad_id_,
      !shuffle_                        ? std::string("file order")
      : which_ == train::Split::Train ? fmt::format("shuffled per epoch (seed {})", seed_)
                                       : fmt::format("shuffled per epoch (seed {} ^ \"valid\")", seed_));
}

}  // namespace dsv::data
