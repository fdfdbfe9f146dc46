// Internal state of dsv::Tokenizer, shared by its load, encode/decode and chat-template files.
#pragma once
#include <atomic>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/added_vocab.h"
#include "tokenizer/bpe.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace dsv {

namespace jinja {
class Template;
}

struct Tokenizer::Impl {
  tok::Normalizer normalizer;
  tok::PreTokenizer pre_tokenizer;
  tok::Bpe model;
  tok::AddedVocab added;
  tok::PostProcessor post;
  bool byte_level_decoder = false;  // false: no decoder, tokens are joined with spaces
  std::vector<std::string> decoded;     // model id -> the bytes it decodes to (byte-level decoder)
  std::vector<std::string> added_text;  // added token (file order) -> text decode writes for it

  std::optional<int32_t> bos, eos;
  std::string chat_template;
  // chat_template parsed once, on first use (std::atomic_load/store: threads may share the Impl);
  // parsing costs ~30x a render, which fine-tuning data preparation does per conversation turn.
  mutable std::shared_ptr<const jinja::Template> parsed_template;
  nlohmann::json template_tokens = nlohmann::json::object();  // bos_token, eos_token, ... for templates

  uint64_t instance = 0;  // tells per-thread word caches which tokenizer they hold words of

  size_t added_index(int32_t id) const { return static_cast<size_t>(added.by_id(id) - added.tokens().data()); }

  // Token text of an id (added tokens first, then the model), or nullptr.
  std::optional<std::string_view> token_text(int32_t id) const {
    if (const tok::AddedToken* t = added.by_id(id)) return std::string_view(t->content);
    return model.id_to_token(id);
  }
};

}  // namespace dsv
