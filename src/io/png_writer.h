// PNG files out (8-bit RGB, no interlace), encoded here without zlib: the image data is one zlib
// stream holding either one fixed-Huffman deflate block (with matches at the previous pixel and the
// row above, which is most of what flat-colour plots need) or, when that is larger, stored blocks.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv {

// CRC-32 (ISO-HDLC, reflected polynomial 0xEDB88320) as PNG chunks use it; "123456789" -> 0xCBF43926.
uint32_t crc32_iso(const void* data, size_t size, uint32_t crc = 0);
// Adler-32 as the zlib trailer uses it; "Wikipedia" -> 0x11E60398.
uint32_t adler32(const void* data, size_t size);

// rgb: height rows of width pixels, 3 bytes (R, G, B) each, top row first. Returns the file bytes.
std::string encode_png_rgb(const uint8_t* rgb, int width, int height);

// Encodes and writes atomically (temporary file, fsync, rename).
void write_png_rgb(const std::string& path, const uint8_t* rgb, int width, int height);

}  // namespace dsv
