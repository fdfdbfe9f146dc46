// UTF-8 helpers shared by the tokenizer and the template engine.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv::tok {

// Decodes one code point at s[i], advancing i. Invalid or truncated sequences yield U+FFFD and
// advance by the length of the maximal invalid subpart (the rule Rust's from_utf8_lossy and
// Python's errors="replace" both follow), so one bad byte never swallows the next valid char.
uint32_t utf8_next(std::string_view s, size_t& i);

// Appends the UTF-8 encoding of code point cp (cp must be a scalar value <= 0x10FFFF).
void utf8_append(std::string& out, uint32_t cp);

// True when s is well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).
bool utf8_valid(std::string_view s);

// Returns s with every maximal invalid subpart replaced by U+FFFD (from_utf8_lossy).
std::string utf8_lossy(std::string_view s);

// Length in bytes of the character starting with lead byte b (1 for continuation/invalid bytes).
inline size_t utf8_len(unsigned char b) {
  return b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 1;
}

}  // namespace dsv::tok
