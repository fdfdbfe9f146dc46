#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace dsv::tok {

namespace {

// Code points newer Unicode versions (as tokenizers' Oniguruma knows them) added to each general
// category, beyond the Unicode 14 tables of PCRE2 10.42.
struct CategoryDelta {
  const char* name;
  const char* ranges;
};
constexpr CategoryDelta kDeltas[] = {
#include "tokenizer/unicode_delta.inc"
};

const char* category_delta(std::string_view name) {
  for (const auto& d : kDeltas)
    if (name == d.name) return *d.ranges ? d.ranges : nullptr;
  return nullptr;
}

}  // namespace

std::string onig_to_pcre2(std::string_view p, const std::string& where) {
  std::string out;
  out.reserve(p.size() + 16);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      // \p{X} / \pX / \P{X} for a general category: add what newer Unicode put in X.
      if (e == 'p' || e == 'P') {
        std::string name;
        size_t end = i;
        if (i + 1 < p.size() && p[i + 1] == '{') {
          end = p.find('}', i + 2);
          if (end != std::string_view::npos) name = std::string(p.substr(i + 2, end - i - 2));
        } else if (i + 1 < p.size()) {
          end = i + 1;
          name = std::string(1, p[i + 1]);
        }
        bool negated = e == 'P';
        std::string bare = name;
        if (!bare.empty() && bare[0] == '^') negated = !negated, bare.erase(0, 1);
        const char* delta = bare.empty() ? nullptr : category_delta(bare);
        if (delta && !(negated && in_class)) {
          const std::string prop = "\\p{" + bare + "}" + delta;
          out += in_class ? prop : (negated ? "[^" : "[") + prop + "]";
          i = end;
          continue;
        }
        out += '\\';
        out += e;
        continue;
      }
      if (e == 'd' && !in_class) {  // Oniguruma's \d is Unicode Nd
        const char* delta = category_delta("Nd");
        out += std::string("[\\p{Nd}") + (delta ? delta : "") + "]";
        continue;
      }
      if (e == 'd') {
        const char* delta = category_delta("Nd");
        out += std::string("\\p{Nd}") + (delta ? delta : "");
        continue;
      }
      // Oniguruma's \s is exactly Unicode White_Space; PCRE2's UCP \s also takes U+180E.
      if (e == 's') out += "\\p{White_Space}";
      else if (e == 'S') out += "\\P{White_Space}";
      else if (e == 'h') out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]";  // Ruby: hex digit
      else if (e == 'H') {
        if (in_class) DSV_FAIL("{}: regex '{}' uses \\H inside a character class, which is not supported", where, p);
        out += "[^0-9a-fA-F]";
      } else {
        out += '\\';
        out += e;
      }
      continue;
    }
    if (in_class) {
      if (c == ']' && !(out.back() == '[' || (out.size() >= 2 && out.back() == '^' && out[out.size() - 2] == '['))) {
        in_class = false;
      } else if (c == '[' && !(i + 1 < p.size() && p[i + 1] == ':')) {
        DSV_FAIL("{}: regex '{}' nests a character class (Oniguruma set syntax), which is not supported", where, p);
      }
    } else if (c == '[') {
      in_class = true;
    }
    out += c;
  }
  return out;
}

std::string regex_escape(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    if (std::string_view("\\^$.|?*+()[]{}-/").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Impl() { pcre2_code_free(code); }
};

// Match data and a JIT stack per thread: matching is const and runs from many threads at once.
namespace {
struct ThreadScratch {
  pcre2_match_data* md = nullptr;
  pcre2_jit_stack* stack = nullptr;
  pcre2_match_context* ctx = nullptr;
  ThreadScratch() {
    md = pcre2_match_data_create(8, nullptr);
    ctx = pcre2_match_context_create(nullptr);
    // Long runs of letters or spaces recurse deeply in the JIT; give it room up to 16 MiB.
    stack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
    pcre2_jit_stack_assign(ctx, nullptr, stack);
  }
  ~ThreadScratch() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(ctx);
    pcre2_jit_stack_free(stack);
  }
};
ThreadScratch& scratch() {
  thread_local ThreadScratch s;
  return s;
}
}  // namespace

Regex::Regex(std::string_view pattern, std::string where)
    : pattern_(pattern), where_(std::move(where)), impl_(std::make_unique<Impl>()) {
  const std::string translated = onig_to_pcre2(pattern, where_);
  int err = 0;
  PCRE2_SIZE off = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &off, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    DSV_FAIL("{}: cannot compile regex '{}' (as PCRE2 '{}'): {} at offset {}", where_, pattern, translated,
             reinterpret_cast<const char*>(msg), off);
  }
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;
Regex::~Regex() = default;

bool Regex::search(std::string_view text, size_t start, size_t& ms, size_t& me) const {
  ThreadScratch& s = scratch();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  // Inputs are valid UTF-8 by the time they get here (encode replaces bad bytes first).
  const int rc = impl_->jit ? pcre2_jit_match(impl_->code, subject, text.size(), start, 0, s.md, s.ctx)
                            : pcre2_match(impl_->code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, s.md, s.ctx);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    DSV_FAIL("{}: regex '{}' failed on a {}-byte input: {}", where_, pattern_, text.size(),
             reinterpret_cast<const char*>(msg));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.md);
  ms = ov[0];
  me = ov[1];
  return true;
}

void Regex::find_all(std::string_view text, FunctionRef<void(size_t, size_t)> on_match) const {
  size_t pos = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (pos <= text.size()) {
    size_t s = 0, e = 0;
    if (!search(text, pos, s, e)) return;
    if (s == e && have_last && e == last_end) {
      // Oniguruma (through the onig crate) refuses an empty match where the last one ended
      // and retries one character further on.
      if (pos >= text.size()) return;
      pos += utf8_len(static_cast<unsigned char>(text[pos]));
      continue;
    }
    on_match(s, e);
    have_last = true;
    last_end = e;
    pos = e;
  }
}

}  // namespace dsv::tok
