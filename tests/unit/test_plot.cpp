// Plots: the PNG encoder (checked by an independent chunk/CRC/zlib reader), scales and tick labels,
// pixels where a known series must put them, heatmap colour order, and the metrics file reader.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "io/png_writer.h"
#include "test_helpers.h"
#include "train/metrics.h"
#include "train/metrics_plots.h"
#include "train/plot.h"

namespace dsv {
namespace {

namespace fs = std::filesystem;
using plot::Rgb;

// Bitwise CRC-32 and Adler-32, independent of the encoder's.
uint32_t crc32_bitwise(const std::string& s) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char byte : s) {
    crc ^= byte;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}
uint32_t adler_slow(const std::string& s) {
  uint64_t a = 1, b = 0;
  for (unsigned char byte : s) a = (a + byte) % 65521, b = (b + a) % 65521;
  return static_cast<uint32_t>(b << 16 | a);
}
uint32_t be32(const std::string& s, size_t at) {
  return static_cast<uint32_t>(static_cast<uint8_t>(s[at])) << 24 | static_cast<uint32_t>(static_cast<uint8_t>(s[at + 1])) << 16 |
         static_cast<uint32_t>(static_cast<uint8_t>(s[at + 2])) << 8 | static_cast<uint32_t>(static_cast<uint8_t>(s[at + 3]));
}

// Inflates stored (BTYPE 00) and fixed-Huffman (BTYPE 01) deflate blocks, the two the encoder writes.
// Returns the byte offset after the last block.
size_t inflate(const std::string& z, size_t start, std::string& out) {
  size_t bitpos = start * 8;
  auto bit = [&]() -> uint32_t {
    if (bitpos / 8 >= z.size()) {
      ADD_FAILURE() << "deflate stream ends early";
      return 0;
    }
    const uint32_t b = (static_cast<uint8_t>(z[bitpos / 8]) >> (bitpos % 8)) & 1u;
    ++bitpos;
    return b;
  };
  auto bits = [&](int n) {  // a value, least significant bit first
    uint32_t v = 0;
    for (int i = 0; i < n; ++i) v |= bit() << i;
    return v;
  };
  auto huffman = [&](int n, uint32_t code) {  // n more code bits, most significant first
    for (int i = 0; i < n; ++i) code = (code << 1) | bit();
    return code;
  };
  static constexpr int kLenBase[] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
  static constexpr int kDistBase[] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
  for (bool last = false; !last;) {
    last = bit();
    const uint32_t type = bits(2);
    if (type == 0) {
      bitpos = (bitpos + 7) / 8 * 8;
      const size_t at = bitpos / 8;
      const uint32_t n = static_cast<uint8_t>(z[at]) | static_cast<uint8_t>(z[at + 1]) << 8;
      const uint32_t nn = static_cast<uint8_t>(z[at + 2]) | static_cast<uint8_t>(z[at + 3]) << 8;
      EXPECT_EQ(n ^ 0xFFFFu, nn);
      out += z.substr(at + 4, n);
      bitpos = (at + 4 + n) * 8;
      continue;
    }
    EXPECT_EQ(type, 1u) << "only stored and fixed-Huffman blocks are expected";
    if (type != 1) return z.size();
    for (;;) {
      uint32_t code = huffman(7, 0), symbol;
      if (code <= 0x17) symbol = 256 + code;
      else if ((code = huffman(1, code)) >= 0x30 && code <= 0xBF) symbol = code - 0x30;
      else if (code >= 0xC0 && code <= 0xC7) symbol = 280 + code - 0xC0;
      else symbol = 144 + huffman(1, code) - 0x190;
      if (symbol < 256) {
        out.push_back(static_cast<char>(symbol));
        continue;
      }
      if (symbol == 256) break;
      const int l = static_cast<int>(symbol) - 257;
      const int extra = l < 8 || l == 28 ? 0 : (l - 4) / 4;
      const size_t length = static_cast<size_t>(kLenBase[l]) + bits(extra);
      const int d = static_cast<int>(huffman(5, 0));
      const size_t distance = static_cast<size_t>(kDistBase[d]) + bits(d < 4 ? 0 : (d - 2) / 2);
      EXPECT_LE(distance, out.size());
      if (distance > out.size()) return z.size();
      for (size_t i = 0; i < length; ++i) out.push_back(out[out.size() - distance]);
    }
  }
  return (bitpos + 7) / 8;
}

struct Decoded {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> rgb;
};

// Signature, chunk CRCs, IHDR, zlib header, deflate blocks, Adler-32, filter bytes.
Decoded decode_png(const std::string& png) {
  Decoded d;
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  std::string idat;
  std::vector<std::string> types;
  for (size_t at = 8; at + 12 <= png.size();) {
    const uint32_t len = be32(png, at);
    const std::string type = png.substr(at + 4, 4), data = png.substr(at + 8, len);
    EXPECT_EQ(be32(png, at + 8 + len), crc32_bitwise(type + data)) << "CRC of chunk " << type;
    types.push_back(type);
    if (type == "IHDR") {
      d.width = be32(data, 0), d.height = be32(data, 4);
      EXPECT_EQ(data.substr(8), std::string("\x08\x02\x00\x00\x00", 5));
    }
    if (type == "IDAT") idat += data;
    at += 12 + len;
  }
  EXPECT_EQ(types.front(), "IHDR");
  EXPECT_EQ(types.back(), "IEND");
  // zlib: CMF/FLG check, then stored blocks.
  EXPECT_EQ(((static_cast<uint8_t>(idat[0]) << 8) | static_cast<uint8_t>(idat[1])) % 31, 0);
  EXPECT_EQ(static_cast<uint8_t>(idat[0]) & 0x0F, 8);
  std::string raw;
  size_t at = inflate(idat, 2, raw);
  EXPECT_EQ(at + 4, idat.size());
  EXPECT_EQ(be32(idat, at), adler_slow(raw));
  const size_t stride = d.width * 3;
  EXPECT_EQ(raw.size(), (stride + 1) * d.height);
  for (uint32_t y = 0; y < d.height && raw.size() == (stride + 1) * d.height; ++y) {
    EXPECT_EQ(raw[y * (stride + 1)], '\0');
    d.rgb.insert(d.rgb.end(), raw.begin() + static_cast<std::ptrdiff_t>(y * (stride + 1) + 1),
                 raw.begin() + static_cast<std::ptrdiff_t>((y + 1) * (stride + 1)));
  }
  return d;
}

double luminance(Rgb c) { return 0.2126 * c.r + 0.7152 * c.g + 0.0722 * c.b; }

TEST(Png, ChecksumsMatchKnownValues) {
  EXPECT_EQ(crc32_iso("123456789", 9), 0xCBF43926u);
  EXPECT_EQ(crc32_bitwise("123456789"), 0xCBF43926u);
  EXPECT_EQ(adler32("Wikipedia", 9), 0x11E60398u);
  EXPECT_EQ(adler_slow("Wikipedia"), 0x11E60398u);
}

TEST(Png, NoiseDecodesBackFromStoredBlocks) {
  // 150 x 200 x 3 = 90 KB of noise: does not compress, so stored blocks (65535 bytes each, two here).
  const int w = 150, h = 200;
  std::vector<uint8_t> rgb(static_cast<size_t>(w * h * 3));
  uint32_t state = 12345;
  for (uint8_t& v : rgb) v = static_cast<uint8_t>((state = state * 1664525u + 1013904223u) >> 24);
  const std::string png = encode_png_rgb(rgb.data(), w, h);
  EXPECT_GT(png.size(), rgb.size());
  const Decoded d = decode_png(png);
  EXPECT_EQ(d.width, 150u);
  EXPECT_EQ(d.height, 200u);
  EXPECT_EQ(d.rgb, rgb);
}

TEST(Png, FlatImageDecodesBackFromCompressedData) {
  // A plot-like image: flat background, a few rows and columns of other colours, one gradient row.
  const int w = 300, h = 120;
  std::vector<uint8_t> rgb(static_cast<size_t>(w * h * 3), 255);
  for (int x = 0; x < w; ++x) {
    for (int c = 0; c < 3; ++c) rgb[static_cast<size_t>((40 * w + x) * 3 + c)] = static_cast<uint8_t>(x);
    rgb[static_cast<size_t>(((x % h) * w + x) * 3)] = 10;
  }
  const std::string png = encode_png_rgb(rgb.data(), w, h);
  EXPECT_LT(png.size(), rgb.size() / 10);
  EXPECT_EQ(decode_png(png).rgb, rgb);
}

TEST(Png, WritesAtomicallyAndRejectsEmptyImages) {
  const fs::path dir = test::temp_dir("png");
  const uint8_t px[3] = {1, 2, 3};
  write_png_rgb((dir / "a.png").string(), px, 1, 1);
  EXPECT_FALSE(fs::exists(dir / "a.png.tmp"));
  std::ifstream in(dir / "a.png", std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(decode_png(ss.str()).rgb, std::vector<uint8_t>({1, 2, 3}));
  test::expect_error([&] { encode_png_rgb(px, 0, 1); }, {"0x1"});
  fs::remove_all(dir);
}

TEST(Plot, NiceTicksAreRoundAndInside) {
  EXPECT_EQ(plot::nice_ticks(0.0, 10.0, 6), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(plot::nice_ticks(1.0, 5.0, 10, /*min_spacing=*/1.0), (std::vector<double>{1, 2, 3, 4, 5}));
  for (auto [lo, hi] : {std::pair{0.00012, 0.00031}, {-3.7, 12.2}, {1.0, 1000.0}, {2.05, 2.07}}) {
    const auto t = plot::nice_ticks(lo, hi, 6);
    ASSERT_GE(t.size(), 2u) << lo << " " << hi;
    EXPECT_LE(t.size(), 11u);
    const double step = t[1] - t[0];
    const double mantissa = step / std::pow(10.0, std::floor(std::log10(step) + 1e-9));
    EXPECT_TRUE(std::abs(mantissa - 1) < 1e-6 || std::abs(mantissa - 2) < 1e-6 || std::abs(mantissa - 5) < 1e-6)
        << step;
    EXPECT_GE(t.front(), lo - 1e-12);
    EXPECT_LE(t.back(), hi + 1e-12);
    EXPECT_LT(t.front() - step, lo);  // no round value left out below
  }
}

TEST(Plot, TickLabelsHaveJustEnoughDigits) {
  EXPECT_EQ(plot::tick_label(2.5, 0.5), "2.5");
  EXPECT_EQ(plot::tick_label(3.0, 0.5), "3.0");
  EXPECT_EQ(plot::tick_label(1500, 500), "1500");
  EXPECT_EQ(plot::tick_label(0.0, 0.5), "0");
  EXPECT_EQ(plot::tick_label(3e-4, 1e-4), "3e-4");
  EXPECT_EQ(plot::tick_label(2.5e-5, 5e-6), "2.5e-5");
  EXPECT_EQ(plot::tick_label(-0.02, 0.01), "-0.02");
}

TEST(Plot, ColormapBrightensWithValue) {
  double last = -1.0;
  for (int i = 0; i <= 100; ++i) {
    const double l = luminance(plot::colormap(i / 100.0));
    EXPECT_GT(l, last) << i;
    last = l;
  }
  EXPECT_EQ(plot::colormap(-5.0), plot::colormap(0.0));
  EXPECT_EQ(plot::colormap(5.0), plot::colormap(1.0));
}

TEST(Plot, TextUsesTheGlyphBitmaps) {
  plot::Image img(20, 12, {255, 255, 255});
  plot::draw_text(img, 1, 1, "-", {0, 0, 0}, 1);  // '-' is row 3, all five columns
  for (int x = 0; x < 20; ++x)
    for (int y = 0; y < 12; ++y)
      EXPECT_EQ((img.at(x, y) == Rgb{0, 0, 0}), (y == 4 && x >= 1 && x <= 5)) << x << "," << y;
  EXPECT_EQ(plot::text_width("ab", 1), 11);
  EXPECT_EQ(plot::text_width("ab", 2), 22);
}

// The y pixel of the first `c`-coloured pixel in column x, or -1.
int first_pixel_of(const plot::Image& img, int x, Rgb c) {
  for (int y = 0; y < img.height(); ++y)
    if (img.at(x, y) == c) return y;
  return -1;
}

TEST(Plot, DecreasingSeriesStartsHighEndsLow) {
  plot::Image img(400, 300, {255, 255, 255});
  const Rgb red{220, 0, 0};
  plot::LineChart chart{.title = "t", .x_label = "step", .y_label = "loss"};
  chart.series.push_back({.label = "", .x = {1, 2, 3, 4, 5}, .y = {9, 7, 6, 5.5, 5}, .color = red});
  const plot::ChartLayout l = plot::draw_line_chart(img, {0, 0, 400, 300}, chart, 1);
  EXPECT_LE(l.y_min, 5.0);
  EXPECT_GE(l.y_max, 9.0);
  const int left = l.plot.x + 1, right = l.plot.x + l.plot.w - 2;
  const int y_first = first_pixel_of(img, left, red), y_last = first_pixel_of(img, right, red);
  ASSERT_GE(y_first, 0);
  ASSERT_GE(y_last, 0);
  EXPECT_LT(y_first, y_last);  // smaller y is higher on screen
  // The first point (y = 9) sits where the linear y scale puts it, within the line's width.
  const double expect = l.plot.y + l.plot.h - 1 - (9.0 - l.y_min) / (l.y_max - l.y_min) * (l.plot.h - 1);
  EXPECT_NEAR(y_first, expect, 2.0);
  // Nothing red outside the plot area (the line is clipped).
  for (int x = 0; x < img.width(); ++x)
    for (int y = 0; y < img.height(); ++y)
      if (img.at(x, y) == red) {
        EXPECT_GE(x, l.plot.x);
        EXPECT_LT(x, l.plot.x + l.plot.w);
      }
}

TEST(Plot, HeatmapColourOrderFollowsValues) {
  plot::Heatmap map{.title = "h", .x_label = "step", .y_label = "layer", .scale_label = "v"};
  // 4 steps x 3 rows; value = step + 10 * row, so it grows to the right and upwards.
  for (int s = 1; s <= 4; ++s) {
    map.x.push_back(s);
    map.values.push_back({s + 0.0, s + 10.0, s + 20.0});
  }
  plot::Image img(500, 300, {255, 255, 255});
  const plot::ChartLayout l = plot::draw_heatmap(img, {0, 0, 500, 300}, map, 1);
  auto cell = [&](int col, int row) {
    const int px = l.plot.x + static_cast<int>((col + 0.5) * l.plot.w / 4);
    const int py = l.plot.y + l.plot.h - 1 - static_cast<int>((row + 0.5) * l.plot.h / 3);
    return img.at(px, py);
  };
  double last = -1;
  for (int row = 0; row < 3; ++row)
    for (int col = 0; col < 4; ++col) {
      const double lum = luminance(cell(col, row));
      EXPECT_GT(lum, last) << col << "," << row;
      last = lum;
    }
  EXPECT_EQ(cell(0, 0), plot::colormap(0.0));  // the scale runs from the smallest value...
  EXPECT_EQ(cell(3, 2), plot::colormap(1.0));  // ...to the largest
  // The colour bar, right of the map: bright at the top, dark at the bottom.
  const int bar_x = l.plot.x + l.plot.w + 15;
  EXPECT_GT(luminance(img.at(bar_x, l.plot.y + 2)), luminance(img.at(bar_x, l.plot.y + l.plot.h - 3)));
}

TEST(Plot, MetricsFileReadsBackAndBadInputIsNamed) {
  const fs::path dir = test::temp_dir("plot_metrics");
  const std::string path = (dir / "m.jsonl").string();
  {
    train::MetricsWriter w(path);
    train::StepMetrics m;
    m.step = 1, m.loss = 5.0, m.lr = 1e-3, m.expert_imbalance = {1.5, 2.0};
    w.write(m);
    m.step = 2, m.loss = std::nan("");
    w.write(m);
    w.write_validation(2, 4.5);
  }
  const train::MetricsLog log = train::read_metrics_jsonl(path);
  ASSERT_EQ(log.steps.size(), 2u);
  EXPECT_EQ(log.steps[0].loss, 5.0);
  EXPECT_TRUE(std::isnan(log.steps[1].loss));
  EXPECT_EQ(log.steps[1].expert_imbalance, (std::vector<double>{1.5, 2.0}));
  ASSERT_EQ(log.validation.size(), 1u);
  EXPECT_EQ(log.validation[0].step, 2);
  EXPECT_EQ(log.validation[0].loss, 4.5);

  test::expect_error([&] { train::read_metrics_jsonl((dir / "none.jsonl").string()); }, {"none.jsonl", "no such file"});
  test::write_raw(dir / "bad.jsonl", "{\"step\":1,\"loss\":2}\n\nnot json\n");
  test::expect_error([&] { train::read_metrics_jsonl((dir / "bad.jsonl").string()); }, {"bad.jsonl:3:", "not a JSON"});
  test::write_raw(dir / "nostep.jsonl", "{\"loss\":2}\n");
  test::expect_error([&] { train::read_metrics_jsonl((dir / "nostep.jsonl").string()); }, {"nostep.jsonl:1:", "\"step\""});
  fs::remove_all(dir);
}

TEST(Plot, LossFigureDrawsEveryCurveAndTheExpertFigureNeedsData) {
  train::MetricsLog log;
  for (int s = 1; s <= 40; ++s) log.steps.push_back({s, 8.0 - 0.1 * s, 9.0 - 0.1 * s, 1e-3, {}});
  log.validation.push_back({20, 6.5});
  const plot::Image img = train::render_loss_plot(log, 640, 480);
  auto count = [&](Rgb c) {
    int n = 0;
    for (int y = 0; y < img.height(); ++y)
      for (int x = 0; x < img.width(); ++x) n += img.at(x, y) == c;
    return n;
  };
  EXPECT_GT(count({31, 92, 170}), 100);  // smoothed train loss
  EXPECT_GT(count({230, 120, 20}), 100);  // MTP loss
  EXPECT_GT(count({200, 30, 40}), 10);   // validation point
  EXPECT_GT(count({40, 140, 70}), 100);  // learning rate
  EXPECT_FALSE(train::has_expert_data(log));
  test::expect_error([&] { train::render_expert_load_plot(log, 640, 480); }, {"no expert imbalance"});
  test::expect_error([&] { train::render_loss_plot(train::MetricsLog{}, 640, 480); }, {"no training steps"});
}

}  // namespace
}  // namespace dsv
