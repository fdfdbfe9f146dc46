// A 5x7 bitmap font for plot labels (printable ASCII), designed for this project.
#pragma once
#include <array>
#include <cstdint>

namespace dsv::plot {

constexpr int kGlyphWidth = 5;   // pixels
constexpr int kGlyphHeight = 7;  // pixels above the descender row
constexpr int kCellWidth = 6;    // glyph + one column of spacing
constexpr int kCellHeight = 9;   // glyph + descender row + one row of spacing

struct Glyph {
  std::array<uint8_t, kGlyphHeight> rows{};  // bit 4 = leftmost pixel
  int shift_down = 0;  // 1 for letters that descend below the baseline (g, j, p, q, y, comma)
};

// The glyph for a printable ASCII character; anything else gets a hollow box.
const Glyph& glyph(char c);

}  // namespace dsv::plot
