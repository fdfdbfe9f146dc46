// The public tokenizer API: a byte-level BPE tokenizer loaded from a Hugging Face tokenizer
// directory (tokenizer.json + tokenizer_config.json), encoding and decoding exactly as the
// `tokenizers` library does, plus chat templates rendered as transformers' apply_chat_template.
// Supported components are listed in docs/tokenizer.md; anything else fails at load.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dsv {

// The files of a Hugging Face tokenizer directory that travel with a model's weights (training
// outputs, checkpoints, exports copy those present).
inline constexpr const char* kTokenizerFiles[] = {"tokenizer.json",    "tokenizer_config.json", "special_tokens_map.json",
                                                  "tokenizer.model",   "added_tokens.json",     "chat_template.jinja",
                                                  "chat_template.json"};

class Tokenizer {
 public:
  // Reads dir/tokenizer.json and, when present, dir/tokenizer_config.json and
  // dir/chat_template.jinja (which wins over the config's chat_template, as in transformers).
  static Tokenizer load(const std::string& dir);
  // The same from file contents; config_json may be empty. `where` names the source in errors.
  static Tokenizer from_json_text(std::string_view tokenizer_json, std::string_view config_json,
                                  const std::string& where = "tokenizer.json");

  // Token ids of text. add_special_tokens=true adds what the post-processor adds; for DeepSeek
  // (add_bos_token in tokenizer_config.json) that is BOS in front, i.e. tokenizer(text)["input_ids"]
  // of transformers' LlamaTokenizerFast (see docs/tokenizer.md for transformers 5's deviation).
  // Input that is not valid UTF-8 is read with each invalid byte sequence replaced by U+FFFD
  // (Rust's from_utf8_lossy rule).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  // Many texts on `threads` threads (0: all cores); results in input order.
  std::vector<std::vector<int32_t>> encode_batch(std::span<const std::string> texts, bool add_special_tokens,
                                                 int threads = 0) const;

  // Text of ids; ids outside the vocabulary are skipped (as tokenizers does). Byte sequences that
  // do not form valid UTF-8 come out as U+FFFD.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const;

  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  // Highest id (vocab or added token) + 1: the rows an embedding must have at least.
  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;

  // The prompt text for a conversation (a JSON array of {"role", "content", ...} messages),
  // rendered from the chat_template of tokenizer_config.json. Encode it with
  // add_special_tokens=false: the template already writes BOS.
  std::string apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt) const;
  // The same with extra template variables (e.g. {"tools": [...]}), which override defaults.
  std::string apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt,
                                  const nlohmann::json& extra_variables) const;
  // nlohmann::json sorts object keys; ordered_json keeps them as written, which is what a
  // template's tojson must print to match Python. The CLI uses this one.
  std::string apply_chat_template(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                  const nlohmann::ordered_json& extra_variables) const;
  const std::string& chat_template() const;

  struct Impl;
  static Tokenizer wrap(std::shared_ptr<const Impl> impl) { return Tokenizer(std::move(impl)); }

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Renders any chat-template text with the given variables (a JSON object), through the same
// engine as apply_chat_template. Used by tests and by tools that check templates.
std::string render_chat_template(const std::string& source, const nlohmann::ordered_json& variables);

}  // namespace dsv
