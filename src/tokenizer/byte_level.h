// The GPT-2 byte-level alphabet: every byte maps to one printable code point, so any byte string
// becomes a string BPE can work on, and decoding maps the code points back to bytes.
#pragma once
#include <array>
#include <cstdint>
#include <string>

namespace dsv::tok {

struct ByteAlphabet {
  std::array<uint32_t, 256> byte_to_cp;     // byte -> code point (e.g. ' ' -> U+0120 'Ġ')
  std::array<std::string, 256> byte_to_utf8;  // the same code point, UTF-8 encoded
  std::array<int16_t, 324> cp_to_byte;      // code point (all < 324) -> byte, -1 outside the alphabet
};

// The table, built once.
const ByteAlphabet& byte_alphabet();

// The regex ByteLevel uses when use_regex is true (GPT-2's split pattern).
inline constexpr const char* kByteLevelRegex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace dsv::tok
