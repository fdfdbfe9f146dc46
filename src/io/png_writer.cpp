#include "io/png_writer.h"

#include <array>
#include <limits>

#include "core/error.h"
#include "io/npy.h"

namespace dsv {
namespace {

const std::array<uint32_t, 256>& crc32_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  return table;
}

void put_u32_be(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xFFu));
}

// length, type, data, CRC over type + data
void put_chunk(std::string& out, const char type[4], const std::string& data) {
  put_u32_be(out, static_cast<uint32_t>(data.size()));
  const size_t type_at = out.size();
  out.append(type, 4);
  out += data;
  put_u32_be(out, crc32_iso(out.data() + type_at, 4 + data.size()));
}

// zlib header (CM 8 = deflate, CINFO 7 = 32 KiB window, FLEVEL 0, no dictionary; 0x7801 % 31 == 0).
void put_zlib_header(std::string& z) {
  z.push_back(static_cast<char>(0x78));
  z.push_back(static_cast<char>(0x01));
}

// Stored (uncompressed) deflate blocks of at most 65535 bytes.
std::string deflate_stored(const std::string& raw) {
  std::string z;
  constexpr size_t kMaxBlock = 65535;
  size_t at = 0;
  do {
    const size_t n = std::min(kMaxBlock, raw.size() - at);
    const bool last = at + n == raw.size();
    z.push_back(static_cast<char>(last ? 1 : 0));  // BFINAL, BTYPE 00; the rest of the byte is padding
    z.push_back(static_cast<char>(n & 0xFFu));
    z.push_back(static_cast<char>(n >> 8));
    z.push_back(static_cast<char>(~n & 0xFFu));
    z.push_back(static_cast<char>((~n >> 8) & 0xFFu));
    z.append(raw, at, n);
    at += n;
  } while (at < raw.size());
  return z;
}

// Deflate's bit order: values LSB first; Huffman codes MSB first.
class BitWriter {
 public:
  void bits(uint32_t value, int count) {
    acc_ |= static_cast<uint64_t>(value) << filled_;
    filled_ += count;
    while (filled_ >= 8) {
      out_.push_back(static_cast<char>(acc_ & 0xFFu));
      acc_ >>= 8;
      filled_ -= 8;
    }
  }
  void code(uint32_t code, int length) {  // a Huffman code, most significant bit first
    uint32_t reversed = 0;
    for (int i = 0; i < length; ++i) reversed |= ((code >> i) & 1u) << (length - 1 - i);
    bits(reversed, length);
  }
  std::string finish() {
    if (filled_ > 0) out_.push_back(static_cast<char>(acc_ & 0xFFu));
    acc_ = 0, filled_ = 0;
    return std::move(out_);
  }

 private:
  std::string out_;
  uint64_t acc_ = 0;
  int filled_ = 0;
};

// The fixed literal/length code of RFC 1951 section 3.2.6.
void put_fixed_symbol(BitWriter& w, int symbol) {
  if (symbol < 144) w.code(0x30 + symbol, 8);
  else if (symbol < 256) w.code(0x190 + symbol - 144, 9);
  else if (symbol < 280) w.code(symbol - 256, 7);
  else w.code(0xC0 + symbol - 280, 8);
}

void put_match(BitWriter& w, int length, int distance) {
  static constexpr int kLenBase[] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                     31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
  static constexpr int kLenExtra[] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
  static constexpr int kDistBase[] = {1,   2,   3,   4,   5,   7,    9,    13,   17,   25,   33,   49,   65,    97,    129,
                                      193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
  static constexpr int kDistExtra[] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
  int l = 28;
  while (kLenBase[l] > length) --l;
  put_fixed_symbol(w, 257 + l);
  w.bits(static_cast<uint32_t>(length - kLenBase[l]), kLenExtra[l]);
  int d = 29;
  while (kDistBase[d] > distance) --d;
  w.code(static_cast<uint32_t>(d), 5);  // fixed distance codes are 5 bits
  w.bits(static_cast<uint32_t>(distance - kDistBase[d]), kDistExtra[d]);
}

// One deflate block with the fixed Huffman code. Matches are looked for only at a few distances that
// suit images: the previous byte and pixel (runs of one colour) and the same place one row up
// (`row_bytes` back). Plots are mostly flat colour, so this gets most of what a full LZ77 search would.
std::string deflate_fixed(const std::string& raw, size_t row_bytes) {
  BitWriter w;
  w.bits(1, 1);  // BFINAL
  w.bits(1, 2);  // BTYPE 01: fixed Huffman
  const size_t candidates[] = {1, 3, row_bytes, 2 * row_bytes};
  const auto* p = reinterpret_cast<const uint8_t*>(raw.data());
  for (size_t i = 0; i < raw.size();) {
    size_t best_len = 0, best_dist = 0;
    const size_t limit = std::min<size_t>(258, raw.size() - i);
    for (size_t d : candidates) {
      if (d == 0 || d > i || d > 32768) continue;
      size_t n = 0;
      while (n < limit && p[i + n] == p[i + n - d]) ++n;
      if (n > best_len) best_len = n, best_dist = d;
    }
    if (best_len >= 3) {
      put_match(w, static_cast<int>(best_len), static_cast<int>(best_dist));
      i += best_len;
    } else {
      put_fixed_symbol(w, p[i]);
      ++i;
    }
  }
  put_fixed_symbol(w, 256);  // end of block
  return w.finish();
}

}  // namespace

uint32_t crc32_iso(const void* data, size_t size, uint32_t crc) {
  const auto& table = crc32_table();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

uint32_t adler32(const void* data, size_t size) {
  constexpr uint32_t kMod = 65521;
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t a = 1, b = 0;
  for (size_t i = 0; i < size; ++i) {
    a = (a + p[i]) % kMod;
    b = (b + a) % kMod;
  }
  return (b << 16) | a;
}

std::string encode_png_rgb(const uint8_t* rgb, int width, int height) {
  DSV_CHECK(width > 0 && height > 0 && width <= (1 << 14) && height <= (1 << 14),
            "PNG: image size {}x{} is outside 1..16384 pixels per side", width, height);
  const size_t stride = static_cast<size_t>(width) * 3;
  // Each row: filter type 0 (none), then the row's bytes.
  std::string raw;
  raw.reserve((stride + 1) * static_cast<size_t>(height));
  for (int y = 0; y < height; ++y) {
    raw.push_back('\0');
    raw.append(reinterpret_cast<const char*>(rgb) + static_cast<size_t>(y) * stride, stride);
  }
  std::string header;
  put_u32_be(header, static_cast<uint32_t>(width));
  put_u32_be(header, static_cast<uint32_t>(height));
  header += std::string{'\x08', '\x02', '\0', '\0', '\0'};  // 8 bits, truecolour, deflate, filter 0, no interlace

  std::string png("\x89PNG\r\n\x1a\n", 8);
  put_chunk(png, "IHDR", header);
  // The smaller of fixed-Huffman and stored deflate (noise-like images do not shrink).
  std::string deflated = deflate_fixed(raw, stride + 1);
  if (deflated.size() > raw.size() + 5 * ((raw.size() + 65534) / 65535)) deflated = deflate_stored(raw);
  std::string z;
  put_zlib_header(z);
  z += deflated;
  put_u32_be(z, adler32(raw.data(), raw.size()));
  put_chunk(png, "IDAT", z);
  put_chunk(png, "IEND", "");
  return png;
}

void write_png_rgb(const std::string& path, const uint8_t* rgb, int width, int height) {
  write_file_atomic(path, encode_png_rgb(rgb, width, height));
}

}  // namespace dsv
