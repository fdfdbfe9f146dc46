#include "tokenizer/added_vocab.h"

#include <algorithm>

#include "tokenizer/normalizer.h"
#include "tokenizer/utf8.h"

namespace dsv::tok {

// Rust regex's Unicode \w (Alphabetic, marks, decimal digits, connector punctuation, joiners).
static constexpr const char* kWordClass = R"([\p{L}\p{Nl}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])";

AddedVocab::AddedVocab()
    // \A and \z, not ^ and $: PCRE2's $ also matches before a final newline, Rust's does not.
    : word_start_(std::make_unique<Regex>(std::string("\\A") + kWordClass, "added_tokens single_word")),
      word_end_(std::make_unique<Regex>(std::string(kWordClass) + "\\z", "added_tokens single_word")) {}

void AddedVocab::Trie::add(std::string_view s, int32_t token) {
  if (s.empty()) return;  // an empty token can never match
  int32_t node = 0;
  for (unsigned char c : s) {
    auto& kids = nodes[node].kids;
    auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(c, int32_t{-1}));
    if (it != kids.end() && it->first == c) {
      node = it->second;
    } else {
      const int32_t fresh = static_cast<int32_t>(nodes.size());
      kids.insert(it, {c, fresh});
      nodes.emplace_back();
      node = fresh;
    }
  }
  if (nodes[node].token < 0) nodes[node].token = token;
  first_byte[static_cast<unsigned char>(s[0])] = true;
  empty = false;
}

int32_t AddedVocab::Trie::longest(std::string_view text, size_t pos, size_t& len) const {
  int32_t node = 0, best = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& kids = nodes[node].kids;
    const unsigned char c = static_cast<unsigned char>(text[i]);
    auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(c, int32_t{-1}));
    if (it == kids.end() || it->first != c) break;
    node = it->second;
    if (nodes[node].token >= 0) {
      best = nodes[node].token;
      len = i + 1 - pos;
    }
  }
  return best;
}

void AddedVocab::build(std::vector<AddedToken> tokens, const Normalizer& normalizer) {
  tokens_ = std::move(tokens);
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    by_id_.emplace(t.id, i);
    by_content_.emplace(t.content, i);
    if (t.normalized) normalized_.add(normalizer.identity() ? t.content : normalizer.apply(t.content), static_cast<int32_t>(i));
    else raw_.add(t.content, static_cast<int32_t>(i));
  }
}

const AddedToken* AddedVocab::by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocab::by_content(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

// Unicode White_Space (Rust regex \s), decoded from UTF-8 at s[i].
static bool space_at(std::string_view s, size_t i, size_t& len) {
  size_t j = i;
  const uint32_t c = utf8_next(s, j);
  len = j - i;
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

void AddedVocab::split(std::string_view text, bool normalized, FunctionRef<void(std::string_view, int32_t)> emit) const {
  const Trie& trie = normalized ? normalized_ : raw_;
  if (trie.empty) {
    emit(text, -1);
    return;
  }
  size_t start_offset = 0;  // end of the last emitted token
  size_t pos = 0;           // where the leftmost-longest scan resumes (end of the last match)
  while (pos < text.size()) {
    if (!trie.first_byte[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    size_t len = 0;
    const int32_t ti = trie.longest(text, pos, len);
    if (ti < 0) {
      ++pos;
      continue;
    }
    const AddedToken& t = tokens_[ti];
    size_t start = pos, stop = pos + len;
    pos = stop;  // matches never overlap, whatever the strip flags do below
    if (t.single_word) {
      size_t ms, me;
      const bool word_before = start > 0 && word_end_->search(text.substr(0, start), 0, ms, me);
      const bool word_after = stop < text.size() && word_start_->search(text.substr(stop), 0, ms, me);
      if (word_before || word_after) continue;
    }
    if (t.lstrip) {
      // Back over the whitespace before the token, but never into the previous token.
      size_t s = start;
      while (s > 0) {
        size_t b = s - 1, l = 0;
        while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        if (!space_at(text, b, l)) break;
        s = b;
      }
      start = std::max(s, start_offset);
    }
    if (t.rstrip) {
      size_t l = 0;
      while (stop < text.size() && space_at(text, stop, l)) stop += l;
    }
    if (start_offset < start) emit(text.substr(start_offset, start - start_offset), -1);
    emit(text.substr(start, stop - start), t.id);
    start_offset = stop;
  }
  if (start_offset < text.size()) emit(text.substr(start_offset), -1);
}

}  // namespace dsv::tok
