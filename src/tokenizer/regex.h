// PCRE2 (UTF + UCP, JIT when available) with the matching rules of the Oniguruma engine that
// Hugging Face `tokenizers` uses, so Split patterns from tokenizer.json behave the same.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "tokenizer/function_ref.h"

namespace dsv::tok {

class Regex {
 public:
  // `where` names the JSON field the pattern came from; it prefixes every error message.
  Regex(std::string_view pattern, std::string where);
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  ~Regex();

  // Calls on_match(start, end) for each match in text, left to right, with Oniguruma's
  // iteration rule: an empty match right where the previous match ended is skipped.
  void find_all(std::string_view text, FunctionRef<void(size_t, size_t)> on_match) const;

  // One anchored/unanchored search from `start`; returns false when nothing matches.
  bool search(std::string_view text, size_t start, size_t& match_start, size_t& match_end) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;  // as written in tokenizer.json
  std::string where_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Rewrites Oniguruma (Ruby syntax) escapes whose meaning differs in PCRE2: \s and \S become
// Unicode White_Space, \h and \H become hex digits. Exposed for tests.
std::string onig_to_pcre2(std::string_view pattern, const std::string& where);

// Escapes a literal string for use inside a PCRE2 pattern.
std::string regex_escape(std::string_view literal);

}  // namespace dsv::tok
