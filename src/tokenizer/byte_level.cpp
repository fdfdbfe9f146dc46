#include "tokenizer/byte_level.h"

#include "tokenizer/utf8.h"

namespace dsv::tok {

static ByteAlphabet build() {
  ByteAlphabet a{};
  a.cp_to_byte.fill(-1);
  // Printable Latin-1 bytes keep their own code point; the rest (controls, space, NBSP, soft
  // hyphen) are moved, in byte order, to U+0100 onwards.
  auto printable = [](int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE; };
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const uint32_t cp = printable(b) ? static_cast<uint32_t>(b) : next++;
    a.byte_to_cp[b] = cp;
    utf8_append(a.byte_to_utf8[b], cp);
    a.cp_to_byte[cp] = static_cast<int16_t>(b);
  }
  return a;
}

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet table = build();
  return table;
}

}  // namespace dsv::tok
