#include "data/preprocess.h"

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"

namespace dsv::data {

namespace {

const char* json_type(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return "null";
    case nlohmann::json::value_t::object: return "an object";
    case nlohmann::json::value_t::array: return "an array";
    case nlohmann::json::value_t::boolean: return "a boolean";
    case nlohmann::json::value_t::string: return "a string";
    default: return "a number";
  }
}

// The text under `key` of one JSONL line; errors carry file:line.
std::string text_of(const std::string& line, const std::string& key, const std::string& file, int64_t line_no) {
  nlohmann::json row;
  try {
    row = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    DSV_FAIL("{}:{}: invalid JSON ({})", file, line_no, e.what());
  }
  DSV_CHECK(row.is_object(), "{}:{}: expected a JSON object, found {}", file, line_no, json_type(row));
  const auto it = row.find(key);
  DSV_CHECK(it != row.end(), "{}:{}: no key \"{}\" (use --json-key to pick the text field)", file, line_no, key);
  DSV_CHECK(it->is_string(), "{}:{}: \"{}\" is {}, expected a string", file, line_no, key, json_type(*it));
  return it->get<std::string>();
}

}  // namespace

PreprocessStats preprocess_jsonl(const Tokenizer& tokenizer, const PreprocessOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  DSV_CHECK(!o.output_prefix.empty(), "--output-prefix: expected a path prefix (writes PREFIX.bin and PREFIX.idx)");
  int32_t eod = -1;
  if (o.append_eod) {
    const auto eos = tokenizer.eos_id();
    DSV_CHECK(eos.has_value(), "the tokenizer has no EOS token to end documents with (pass --no-eod to write none)");
    eod = *eos;
  }
  std::ifstream in(o.input, std::ios::binary);
  DSV_CHECK(in, "--input {}: cannot open", o.input);

  PreprocessStats stats;
  stats.dtype = optimal_token_dtype(tokenizer.vocab_size());
  IndexedDatasetBuilder builder(o.output_prefix, stats.dtype);

  std::vector<std::string> texts;
  std::string line;
  int64_t line_no = 0;
  bool more = true;
  while (more) {
    // One batch of texts: about batch_bytes of text, so memory stays bounded on huge inputs.
    texts.clear();
    size_t batch_bytes = 0;
    while (batch_bytes < o.batch_bytes) {
      if (!std::getline(in, line)) {
        more = false;
        break;
      }
      ++line_no;
      stats.input_bytes += static_cast<int64_t>(line.size()) + 1;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      texts.push_back(text_of(line, o.json_key, o.input, line_no));
      batch_bytes += texts.back().size();
    }
    DSV_CHECK(!in.bad(), "--input {}: read error after line {}", o.input, line_no);
    if (texts.empty()) continue;
    auto ids = tokenizer.encode_batch(texts, o.add_special_tokens, o.workers);
    for (auto& doc : ids) {
      if (doc.empty()) {
        ++stats.empty_documents;
      } else if (o.append_eod) {
        doc.push_back(eod);
      }
      builder.add_document(doc);
      ++stats.documents;
      stats.tokens += static_cast<int64_t>(doc.size());
    }
    stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (o.on_progress) o.on_progress(stats);
  }
  builder.finish();
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return stats;
}

}  // namespace dsv::data
