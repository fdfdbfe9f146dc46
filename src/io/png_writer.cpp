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

// zlib header, stored deflate blocks of at most 65535 bytes, Adler-32 of the raw bytes.
std::string zlib_stored(const std::string& raw) {
  std::string z;
  z.push_back(static_cast<char>(0x78));  // CM 8 (deflate), CINFO 7 (32 KiB window)
  z.push_back(static_cast<char>(0x01));  // FLEVEL 0, no dictionary; 0x7801 % 31 == 0
  constexpr size_t kMaxBlock = 65535;
  size_t at = 0;
  do {
    const size_t n = std::min(kMaxBlock, raw.size() - at);
    const bool last = at + n == raw.size();
    z.push_back(static_cast<char>(last ? 1 : 0));  // BFINAL, BTYPE 00 (stored); the rest of the byte is padding
    z.push_back(static_cast<char>(n & 0xFFu));
    z.push_back(static_cast<char>(n >> 8));
    z.push_back(static_cast<char>(~n & 0xFFu));
    z.push_back(static_cast<char>((~n >> 8) & 0xFFu));
    z.append(raw, at, n);
    at += n;
  } while (at < raw.size());
  put_u32_be(z, adler32(raw.data(), raw.size()));
  return z;
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
  put_chunk(png, "IDAT", zlib_stored(raw));
  put_chunk(png, "IEND", "");
  return png;
}

void write_png_rgb(const std::string& path, const uint8_t* rgb, int width, int height) {
  write_file_atomic(path, encode_png_rgb(rgb, width, height));
}

}  // namespace dsv
