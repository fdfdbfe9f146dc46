// dsv tokenize / detokenize / chat-template: the tokenizer from the command line.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dsv::cli {

namespace {

using ojson = nlohmann::ordered_json;

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s;
}

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(pos, end - pos);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) {
      size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(item, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      DSV_CHECK(used == item.size() && v >= 0 && v <= INT32_MAX, "--ids: '{}' is not a token id (expected e.g. 1,2,3)", item);
      ids.push_back(static_cast<int32_t>(v));
    }
    pos = end + 1;
  }
  return ids;
}

struct TokenizeOptions {
  std::string dir, text, input, output;
  bool add_special = false, stats = false;
  int threads = 0;
};

// JSONL batch mode: each line {"text": ...} gains "ids"; other fields are kept in order.
void tokenize_file(const Tokenizer& tk, const TokenizeOptions& o) {
  DSV_CHECK(!o.output.empty(), "--input needs --output (the JSONL file to write)");
  std::ifstream in(o.input, std::ios::binary);
  DSV_CHECK(in, "cannot open --input {}", o.input);
  std::vector<ojson> rows;
  std::vector<std::string> texts;
  size_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    ojson row;
    try {
      row = ojson::parse(line);
    } catch (const ojson::parse_error& e) {
      DSV_FAIL("{}:{}: invalid JSON: {}", o.input, line_no, e.what());
    }
    DSV_CHECK(row.is_object() && row.contains("text") && row["text"].is_string(),
              "{}:{}: expected an object with a string field \"text\"", o.input, line_no);
    texts.push_back(row["text"].get<std::string>());
    rows.push_back(std::move(row));
  }
  size_t bytes = 0;
  for (const auto& t : texts) bytes += t.size();
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tk.encode_batch(texts, o.add_special, o.threads);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // Write beside the target and rename, so a failure never leaves a half-written output.
  const std::string tmp = o.output + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    DSV_CHECK(out, "cannot write {}", tmp);
    for (size_t i = 0; i < rows.size(); ++i) {
      rows[i]["ids"] = ids[i];
      out << rows[i].dump(-1, ' ', false, ojson::error_handler_t::replace) << '\n';
    }
    out.flush();
    DSV_CHECK(out, "error writing {}", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, o.output, ec);
  DSV_CHECK(!ec, "cannot rename {} to {}: {}", tmp, o.output, ec.message());
  size_t n_ids = 0;
  for (const auto& v : ids) n_ids += v.size();
  if (o.stats) {
    const unsigned threads = o.threads > 0 ? static_cast<unsigned>(o.threads) : std::thread::hardware_concurrency();
    std::fprintf(stderr, "encoded %zu texts, %zu bytes, %zu tokens in %.3f s on %u thread(s): %.2f MB/s\n", texts.size(),
                 bytes, n_ids, secs, threads, secs > 0 ? bytes / secs / 1e6 : 0.0);
  }
}

ojson read_json_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  DSV_CHECK(f, "cannot open {} {}", what, path);
  try {
    return ojson::parse(f);
  } catch (const ojson::parse_error& e) {
    DSV_FAIL("{} {}: invalid JSON: {}", what, path, e.what());
  }
}

}  // namespace

void register_tokenizer_commands(CLI::App& app) {
  // tokenize
  auto to = std::make_shared<TokenizeOptions>();
  CLI::App* tok = app.add_subcommand("tokenize", "Text to token ids with a Hugging Face tokenizer.json (byte-level BPE)");
  tok->footer(
      "Examples:\n"
      "  dsv tokenize --tokenizer models/tiny --text 'Hello world'      prints ids, comma-separated\n"
      "  dsv tokenize --tokenizer DIR --input in.jsonl --output out.jsonl --threads 8\n"
      "      each line {\"text\": ...} gains \"ids\": [...]; other fields are kept");
  tok->add_option("--tokenizer", to->dir, "Folder with tokenizer.json (and tokenizer_config.json)")->required();
  auto* text_opt = tok->add_option("--text", to->text, "Text to encode; prints the ids comma-separated");
  auto* input_opt = tok->add_option("--input", to->input, "JSONL file of {\"text\": ...} lines (batch mode)");
  tok->add_option("--output", to->output, "JSONL file to write in batch mode (written to a temp name, then renamed)");
  tok->add_flag("--add-special-tokens", to->add_special,
                "Add what the tokenizer adds around a text (DeepSeek: BOS in front)");
  tok->add_option("--threads", to->threads, "Threads for batch mode (0: all cores)")->check(CLI::NonNegativeNumber);
  tok->add_flag("--stats", to->stats, "Print load time and (batch mode) encode throughput to stderr");
  text_opt->excludes(input_opt);
  tok->callback([to, text_opt, input_opt] {
    DSV_CHECK(text_opt->count() || input_opt->count(), "tokenize: give --text STRING or --input FILE.jsonl");
    const auto t0 = std::chrono::steady_clock::now();
    const Tokenizer tk = Tokenizer::load(to->dir);
    if (to->stats)
      std::fprintf(stderr, "loaded %s in %.1f ms\n", to->dir.c_str(),
                   std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    if (input_opt->count()) {
      tokenize_file(tk, *to);
    } else {
      std::printf("%s\n", join_ids(tk.encode(to->text, to->add_special)).c_str());
    }
  });

  // detokenize
  auto ids_text = std::make_shared<std::string>();
  auto dir2 = std::make_shared<std::string>();
  auto skip = std::make_shared<bool>(false);
  CLI::App* detok = app.add_subcommand("detokenize", "Token ids to text");
  detok->footer("Example:\n  dsv detokenize --tokenizer models/tiny --ids 0,45,46 --skip-special-tokens");
  detok->add_option("--tokenizer", *dir2, "Folder with tokenizer.json")->required();
  detok->add_option("--ids", *ids_text, "Comma-separated token ids")->required();
  detok->add_flag("--skip-special-tokens", *skip, "Leave out special tokens (BOS, EOS, ...)");
  detok->callback([ids_text, dir2, skip] {
    const Tokenizer tk = Tokenizer::load(*dir2);
    const std::string text = tk.decode(parse_ids(*ids_text), *skip);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
  });

  // chat-template
  struct ChatOptions {
    std::string dir, messages, tools;
    bool add_generation_prompt = false, ids = false;
  };
  auto co = std::make_shared<ChatOptions>();
  CLI::App* chat = app.add_subcommand(
      "chat-template", "Render a conversation with the tokenizer's chat template (as transformers' apply_chat_template)");
  chat->footer(
      "FILE.json holds a list of messages, e.g.\n"
      "  [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"}]\n"
      "or an object {\"messages\": [...], \"tools\": [...], ...} whose other fields become template variables.");
  chat->add_option("--tokenizer", co->dir, "Folder with tokenizer.json and tokenizer_config.json")->required();
  chat->add_option("--messages", co->messages, "JSON file with the conversation")->required();
  chat->add_flag("--add-generation-prompt", co->add_generation_prompt, "End with the assistant prefix so the model answers");
  chat->add_flag("--ids", co->ids, "Print the token ids of the prompt instead of its text");
  chat->callback([co] {
    const Tokenizer tk = Tokenizer::load(co->dir);
    ojson doc = read_json_file(co->messages, "--messages");
    ojson messages, extra = ojson::object();
    if (doc.is_array()) {
      messages = std::move(doc);
    } else {
      DSV_CHECK(doc.is_object() && doc.contains("messages"),
                "--messages {}: expected a list of messages or an object with \"messages\"", co->messages);
      messages = doc["messages"];
      for (auto it = doc.begin(); it != doc.end(); ++it)
        if (it.key() != "messages") extra[it.key()] = it.value();
    }
    const std::string text = tk.apply_chat_template(messages, co->add_generation_prompt, extra);
    if (co->ids) {
      std::printf("%s\n", join_ids(tk.encode(text, false)).c_str());  // the template writes BOS itself
    } else {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fputc('\n', stdout);
    }
  });
}

}  // namespace dsv::cli
