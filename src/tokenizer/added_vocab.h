// Added tokens (tokenizer.json "added_tokens"): matched in the text before normalization and
// pre-tokenization, leftmost-longest, honouring lstrip / rstrip / single_word / normalized, as
// tokenizers' AddedVocabulary does.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/function_ref.h"
#include "tokenizer/regex.h"

namespace dsv::tok {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

class Normalizer;

class AddedVocab {
 public:
  AddedVocab();
  // Tokens in file order; `normalizer` gives the form normalized tokens are matched in.
  void build(std::vector<AddedToken> tokens, const Normalizer& normalizer);

  // Splits text into runs of plain text (id -1) and matched tokens, for one of the two token sets:
  // normalized=false matches on the raw input, normalized=true on the normalized text.
  void split(std::string_view text, bool normalized, FunctionRef<void(std::string_view, int32_t)> emit) const;

  const AddedToken* by_id(int32_t id) const;
  const AddedToken* by_content(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  bool empty() const { return tokens_.empty(); }

 private:
  // Byte trie over token contents; each node's children are a sorted list of (byte, node).
  struct Trie {
    struct Node {
      std::vector<std::pair<unsigned char, int32_t>> kids;
      int32_t token = -1;  // index into tokens_, first in file order for duplicates
    };
    std::vector<Node> nodes{Node{}};
    bool first_byte[256] = {};
    bool empty = true;
    void add(std::string_view s, int32_t token);
    // Longest token starting at text[pos]: returns its index and sets len, or -1.
    int32_t longest(std::string_view text, size_t pos, size_t& len) const;
  };
  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  Trie raw_, normalized_;
  std::unique_ptr<Regex> word_start_, word_end_;  // Rust regex \w, for single_word
};

}  // namespace dsv::tok
