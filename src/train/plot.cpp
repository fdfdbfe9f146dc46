#include "train/plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "train/bitmap_font.h"

namespace dsv::plot {
namespace {

constexpr Rgb kInk{30, 30, 30};
constexpr Rgb kFrame{110, 110, 110};
constexpr Rgb kGrid{228, 228, 228};
constexpr Rgb kWhite{255, 255, 255};
constexpr Rgb kMissing{170, 170, 170};

int round_px(double v) { return static_cast<int>(std::lround(v)); }

struct Range {
  double lo, hi;
};

// The finite y values of all series, padded by 5% so curves do not touch the frame.
Range y_range(const LineChart& chart) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const Series& s : chart.series)
    for (double v : s.y)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!(lo <= hi)) return {0.0, 1.0};
  if (hi == lo) {
    const double pad = lo == 0.0 ? 1.0 : std::abs(lo) * 0.1;
    return {lo - pad, hi + pad};
  }
  const double pad = 0.05 * (hi - lo);
  return {lo - pad, hi + pad};
}

Range x_range(const LineChart& chart) {
  if (chart.x_max > chart.x_min) return {chart.x_min, chart.x_max};
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const Series& s : chart.series)
    for (double v : s.x)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!(lo <= hi)) return {0.0, 1.0};
  if (hi == lo) return {lo - 1.0, hi + 1.0};
  return {lo, hi};
}

int tick_len(int scale) { return 4 * scale; }
int title_scale(int scale) { return 2 * scale; }

int max_label_width(const std::vector<double>& ticks, int scale) {
  const double spacing = ticks.size() > 1 ? ticks[1] - ticks[0] : 1.0;
  int w = 0;
  for (double t : ticks) w = std::max(w, text_width(tick_label(t, spacing), scale));
  return w;
}

// Space above the plot area: the title, or a little air.
int top_margin(const std::string& title, int scale) {
  return title.empty() ? 6 * scale : text_height(title_scale(scale)) + 4 * scale;
}

void draw_title(Image& img, Rect outer, const std::string& title, int scale) {
  if (title.empty()) return;
  const int ts = title_scale(scale);
  draw_text(img, outer.x + (outer.w - text_width(title, ts)) / 2, outer.y + 2 * scale, title, kInk, ts);
}

// The x axis under a plot area: ticks, labels and the axis label; returns nothing, draws only.
void draw_x_axis(Image& img, const Rect& p, double x0, double x1, const std::vector<double>& ticks, bool labels,
                 const std::string& x_label, int scale, bool grid) {
  const double spacing = ticks.size() > 1 ? ticks[1] - ticks[0] : 1.0;
  for (double t : ticks) {
    const int px = round_px(p.x + (t - x0) / (x1 - x0) * (p.w - 1));
    if (grid) img.fill_rect(px, p.y + 1, px + 1, p.y + p.h - 1, kGrid);
    img.fill_rect(px, p.y + p.h, px + 1, p.y + p.h + tick_len(scale), kFrame);
    if (labels) {
      const std::string s = tick_label(t, spacing);
      draw_text(img, px - text_width(s, scale) / 2, p.y + p.h + tick_len(scale) + 2 * scale, s, kInk, scale);
    }
  }
  if (!x_label.empty()) {
    const int y = p.y + p.h + tick_len(scale) + 2 * scale + (labels ? text_height(scale) : 0) + scale;
    draw_text(img, p.x + (p.w - text_width(x_label, scale)) / 2, y, x_label, kInk, scale);
  }
}

void draw_frame(Image& img, const Rect& p) {
  img.fill_rect(p.x - 1, p.y - 1, p.x + p.w + 1, p.y, kFrame);
  img.fill_rect(p.x - 1, p.y + p.h, p.x + p.w + 1, p.y + p.h + 1, kFrame);
  img.fill_rect(p.x - 1, p.y - 1, p.x, p.y + p.h + 1, kFrame);
  img.fill_rect(p.x + p.w, p.y - 1, p.x + p.w + 1, p.y + p.h + 1, kFrame);
}

void draw_legend(Image& img, const Rect& p, const std::vector<Series>& series, int scale) {
  const int swatch = 16 * scale, gap = 4 * scale, row = text_height(scale) + 2 * scale;
  int width = 0, rows = 0;
  for (const Series& s : series)
    if (!s.label.empty()) width = std::max(width, text_width(s.label, scale)), ++rows;
  if (rows == 0) return;
  const int box_w = swatch + 3 * gap + width, box_h = rows * row + 2 * gap;
  const int bx = p.x + p.w - box_w - 6 * scale, by = p.y + 6 * scale;
  img.fill_rect(bx, by, bx + box_w, by + box_h, kWhite);
  draw_frame(img, {bx + 1, by + 1, box_w - 2, box_h - 2});
  int y = by + gap;
  for (const Series& s : series) {
    if (s.label.empty()) continue;
    const double cy = y + 3.5 * scale;
    if (s.line) img.line(bx + gap, cy, bx + gap + swatch, cy, s.color, s.thickness);
    if (s.markers) img.disc(bx + gap + swatch / 2.0, cy, 2.5 * scale + 0.5, s.color);
    draw_text(img, bx + 2 * gap + swatch, y, s.label, kInk, scale);
    y += row;
  }
}

}  // namespace

// ---- Image ----

Image::Image(int width, int height, Rgb background)
    : width_(width), height_(height), clip_x1_(width), clip_y1_(height) {
  DSV_CHECK(width > 0 && height > 0 && width <= 16384 && height <= 16384,
            "plot: image size {}x{} is outside 1..16384 pixels per side", width, height);
  rgb_.resize(static_cast<size_t>(width) * static_cast<size_t>(height) * 3);
  for (size_t i = 0; i < rgb_.size(); i += 3) rgb_[i] = background.r, rgb_[i + 1] = background.g, rgb_[i + 2] = background.b;
}

Rgb Image::at(int x, int y) const {
  DSV_CHECK(x >= 0 && y >= 0 && x < width_ && y < height_, "plot: pixel ({}, {}) outside {}x{}", x, y, width_, height_);
  const size_t i = (static_cast<size_t>(y) * static_cast<size_t>(width_) + static_cast<size_t>(x)) * 3;
  return {rgb_[i], rgb_[i + 1], rgb_[i + 2]};
}

void Image::set(int x, int y, Rgb c) {
  if (x < clip_x0_ || y < clip_y0_ || x >= clip_x1_ || y >= clip_y1_) return;
  const size_t i = (static_cast<size_t>(y) * static_cast<size_t>(width_) + static_cast<size_t>(x)) * 3;
  rgb_[i] = c.r, rgb_[i + 1] = c.g, rgb_[i + 2] = c.b;
}

void Image::clip_to(int x, int y, int w, int h) {
  clip_x0_ = std::clamp(x, 0, width_), clip_y0_ = std::clamp(y, 0, height_);
  clip_x1_ = std::clamp(x + w, 0, width_), clip_y1_ = std::clamp(y + h, 0, height_);
}

void Image::fill_rect(int x0, int y0, int x1, int y1, Rgb c) {
  for (int y = std::max(y0, clip_y0_); y < std::min(y1, clip_y1_); ++y)
    for (int x = std::max(x0, clip_x0_); x < std::min(x1, clip_x1_); ++x) set(x, y, c);
}

void Image::line(double x0, double y0, double x1, double y1, Rgb c, int thickness) {
  // Steps of at most one pixel along the longer axis; a square brush at each step.
  const int steps = std::max(1, static_cast<int>(std::ceil(std::max(std::abs(x1 - x0), std::abs(y1 - y0)))));
  const int lo = -(thickness - 1) / 2, hi = lo + thickness;
  for (int i = 0; i <= steps; ++i) {
    const double t = static_cast<double>(i) / steps;
    const int x = round_px(x0 + t * (x1 - x0)), y = round_px(y0 + t * (y1 - y0));
    fill_rect(x + lo, y + lo, x + hi, y + hi, c);
  }
}

void Image::disc(double cx, double cy, double radius, Rgb c) {
  for (int y = static_cast<int>(std::floor(cy - radius)); y <= static_cast<int>(std::ceil(cy + radius)); ++y)
    for (int x = static_cast<int>(std::floor(cx - radius)); x <= static_cast<int>(std::ceil(cx + radius)); ++x)
      if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= radius * radius) set(x, y, c);
}

// ---- text ----

int text_width(const std::string& text, int scale) {
  return text.empty() ? 0 : (static_cast<int>(text.size()) * kCellWidth - 1) * scale;
}

int text_height(int scale) { return kCellHeight * scale; }

void draw_text(Image& img, int x, int y, const std::string& text, Rgb c, int scale) {
  for (char ch : text) {
    const Glyph& g = glyph(ch);
    for (int r = 0; r < kGlyphHeight; ++r)
      for (int col = 0; col < kGlyphWidth; ++col)
        if (g.rows[static_cast<size_t>(r)] & (0x10 >> col)) {
          const int px = x + col * scale, py = y + (r + g.shift_down) * scale;
          img.fill_rect(px, py, px + scale, py + scale, c);
        }
    x += kCellWidth * scale;
  }
}

void draw_text_up(Image& img, int x, int y, const std::string& text, Rgb c, int scale) {
  // Glyph pixel (col, row) of the n-th character lands at (x + row, y - n * cell - col).
  int along = 0;
  for (char ch : text) {
    const Glyph& g = glyph(ch);
    for (int r = 0; r < kGlyphHeight; ++r)
      for (int col = 0; col < kGlyphWidth; ++col)
        if (g.rows[static_cast<size_t>(r)] & (0x10 >> col)) {
          const int px = x + (r + g.shift_down) * scale, py = y - along - (col + 1) * scale;
          img.fill_rect(px, py, px + scale, py + scale, c);
        }
    along += kCellWidth * scale;
  }
}

// ---- scales ----

std::vector<double> nice_ticks(double lo, double hi, int max_ticks, double min_spacing) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) return {};
  if (!(hi > lo)) return {lo};
  const double rough = (hi - lo) / std::max(1, max_ticks - 1);
  const double mag = std::pow(10.0, std::floor(std::log10(rough)));
  const double norm = rough / mag;
  const double step = std::max(min_spacing, (norm <= 1.0 ? 1.0 : norm <= 2.0 ? 2.0 : norm <= 5.0 ? 5.0 : 10.0) * mag);
  std::vector<double> ticks;
  const double first = std::ceil(lo / step - 1e-9);
  for (double k = first; k * step <= hi + step * 1e-9; k += 1.0) {
    const double v = k * step;
    ticks.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  }
  return ticks;
}

std::string tick_label(double value, double spacing) {
  if (!std::isfinite(value)) return "nan";
  spacing = std::abs(spacing);
  if (spacing == 0.0 || !std::isfinite(spacing)) spacing = std::max(std::abs(value), 1.0);
  if (std::abs(value) < spacing * 1e-6) return "0";
  if (spacing >= 1e-3 && std::abs(value) < 1e6) {
    const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(spacing) + 1e-9)));
    return fmt::format("{:.{}f}", value, decimals);
  }
  // Scientific, with as many digits as the spacing needs: "3e-4", "2.5e-5", "1.2e6".
  const int digits = std::max(1, static_cast<int>(std::floor(std::log10(std::abs(value)) + 1e-9) -
                                                  std::floor(std::log10(spacing) + 1e-9)) + 1);
  std::string s = fmt::format("{:.{}e}", value, digits - 1);
  const size_t e = s.find('e');
  std::string mantissa = s.substr(0, e), exponent = s.substr(e + 1);
  if (mantissa.find('.') != std::string::npos) {
    while (mantissa.back() == '0') mantissa.pop_back();
    if (mantissa.back() == '.') mantissa.pop_back();
  }
  const bool negative = exponent[0] == '-';
  exponent = exponent.substr(exponent[0] == '-' || exponent[0] == '+' ? 1 : 0);
  while (exponent.size() > 1 && exponent[0] == '0') exponent.erase(0, 1);
  return mantissa + "e" + (negative ? "-" : "") + exponent;
}

Rgb colormap(double t) {
  // Anchors sampled along a perceptually uniform blue-violet -> teal -> yellow path.
  static constexpr Rgb kAnchors[] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},  {44, 113, 142}, {33, 144, 141},
                                     {39, 173, 129}, {92, 200, 99},  {170, 220, 50}, {253, 231, 37}};
  constexpr int kLast = static_cast<int>(std::size(kAnchors)) - 1;
  if (!std::isfinite(t)) return kMissing;
  const double u = std::clamp(t, 0.0, 1.0) * kLast;
  const int i = std::min(kLast - 1, static_cast<int>(u));
  const double f = u - i;
  auto mix = [f](uint8_t a, uint8_t b) { return static_cast<uint8_t>(std::lround(a + f * (b - a))); };
  return {mix(kAnchors[i].r, kAnchors[i + 1].r), mix(kAnchors[i].g, kAnchors[i + 1].g),
          mix(kAnchors[i].b, kAnchors[i + 1].b)};
}

// ---- line chart ----

int chart_left_margin(const LineChart& chart, int scale) {
  const Range y = y_range(chart);
  const int labels = max_label_width(nice_ticks(y.lo, y.hi, 6), scale);
  return 4 * scale + (chart.y_label.empty() ? 0 : text_height(scale) + 2 * scale) + labels + 3 * scale +
         tick_len(scale);
}

ChartLayout draw_line_chart(Image& img, Rect outer, const LineChart& chart, int scale, int left_margin) {
  const Range xr = x_range(chart), yr = y_range(chart);
  const int left = left_margin >= 0 ? left_margin : chart_left_margin(chart, scale);
  const int top = top_margin(chart.title, scale);
  const int bottom = tick_len(scale) + 2 * scale + (chart.x_tick_labels ? text_height(scale) : 0) +
                     (chart.x_label.empty() ? 0 : text_height(scale) + scale) + 2 * scale;
  const int right = 12 * scale;
  const Rect p{outer.x + left, outer.y + top, outer.w - left - right, outer.h - top - bottom};
  DSV_CHECK(p.w > 20 && p.h > 20, "plot: {}x{} pixels leave no room for the chart \"{}\"", outer.w, outer.h, chart.title);
  draw_title(img, outer, chart.title, scale);

  // Grid and y ticks.
  const std::vector<double> yt = nice_ticks(yr.lo, yr.hi, std::clamp(p.h / (text_height(scale) * 3), 2, 8));
  const double y_spacing = yt.size() > 1 ? yt[1] - yt[0] : 1.0;
  auto to_px = [&](double x) { return p.x + (x - xr.lo) / (xr.hi - xr.lo) * (p.w - 1); };
  auto to_py = [&](double y) { return p.y + p.h - 1 - (y - yr.lo) / (yr.hi - yr.lo) * (p.h - 1); };
  for (double t : yt) {
    const int py = round_px(to_py(t));
    img.fill_rect(p.x + 1, py, p.x + p.w - 1, py + 1, kGrid);
    img.fill_rect(p.x - tick_len(scale), py, p.x, py + 1, kFrame);
    const std::string s = tick_label(t, y_spacing);
    draw_text(img, p.x - tick_len(scale) - 3 * scale - text_width(s, scale), py - 7 * scale / 2, s, kInk, scale);
  }
  const std::vector<double> xt = nice_ticks(xr.lo, xr.hi, std::clamp(p.w / (text_width("000000", scale) * 2), 2, 10),
                                            chart.x_integer ? 1.0 : 0.0);
  draw_x_axis(img, p, xr.lo, xr.hi, xt, chart.x_tick_labels, chart.x_label, scale, /*grid=*/true);
  if (!chart.y_label.empty())
    draw_text_up(img, outer.x + 4 * scale, p.y + (p.h + text_width(chart.y_label, scale)) / 2, chart.y_label, kInk,
                 scale);

  // Series, clipped to the plot area; a non-finite y lifts the pen.
  img.clip_to(p.x, p.y, p.w, p.h);
  for (const Series& s : chart.series) {
    const size_t n = std::min(s.x.size(), s.y.size());
    for (size_t i = 0; i < n; ++i) {
      if (!std::isfinite(s.y[i]) || !std::isfinite(s.x[i])) continue;
      const double px = to_px(s.x[i]), py = to_py(s.y[i]);
      if (s.line && i + 1 < n && std::isfinite(s.y[i + 1]) && std::isfinite(s.x[i + 1]))
        img.line(px, py, to_px(s.x[i + 1]), to_py(s.y[i + 1]), s.color, s.thickness);
      else if (s.line && !s.markers)
        img.line(px, py, px, py, s.color, s.thickness);  // an isolated point stays visible
      if (s.markers) img.disc(px, py, 2.5 * scale + 0.5, s.color);
    }
  }
  img.clip_to_image();
  draw_frame(img, p);
  draw_legend(img, p, chart.series, scale);
  return {p, xr.lo, xr.hi, yr.lo, yr.hi};
}

// ---- heatmap ----

ChartLayout draw_heatmap(Image& img, Rect outer, const Heatmap& map, int scale) {
  const size_t cols = map.x.size();
  DSV_CHECK(cols > 0 && map.values.size() == cols, "plot: heatmap \"{}\" has {} positions and {} columns", map.title,
            cols, map.values.size());
  const size_t rows = map.values[0].size();
  for (const auto& c : map.values)
    DSV_CHECK(c.size() == rows && rows > 0, "plot: heatmap \"{}\" columns differ in length ({} and {})", map.title,
              rows, c.size());
  double lo = map.lo, hi = map.hi;
  if (!(hi > lo)) {
    lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (const auto& c : map.values)
      for (double v : c)
        if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    if (!(lo <= hi)) lo = 0.0, hi = 1.0;
    if (hi == lo) hi = lo + 1.0;
  }

  // Columns are centred on their positions; each spans the mean spacing.
  const double half = cols > 1 ? (map.x.back() - map.x.front()) / static_cast<double>(cols - 1) / 2.0 : 0.5;
  const double x0 = map.x.front() - half, x1 = map.x.back() + half;

  // Row ticks: every k-th row, k from 1, 2, 5, 10, ... so labels do not collide.
  std::vector<double> row_ticks;
  const std::vector<double> bar_ticks = nice_ticks(lo, hi, 6);
  const int bar_w = 14 * scale, bar_gap = 10 * scale;
  const int right = bar_gap + bar_w + tick_len(scale) + 3 * scale + max_label_width(bar_ticks, scale) +
                    (map.scale_label.empty() ? 0 : 4 * scale + text_height(scale)) + 4 * scale;
  const int top = top_margin(map.title, scale);
  const int bottom = tick_len(scale) + 2 * scale + text_height(scale) +
                     (map.x_label.empty() ? 0 : text_height(scale) + scale) + 2 * scale;
  const int row_label_w = text_width(map.row_prefix + std::to_string(rows - 1), scale);
  const int left = 4 * scale + (map.y_label.empty() ? 0 : text_height(scale) + 2 * scale) + row_label_w + 3 * scale +
                   tick_len(scale);
  const Rect p{outer.x + left, outer.y + top, outer.w - left - right, outer.h - top - bottom};
  DSV_CHECK(p.w > 20 && p.h > 20, "plot: {}x{} pixels leave no room for the heatmap \"{}\"", outer.w, outer.h,
            map.title);
  draw_title(img, outer, map.title, scale);

  // Each pixel column shows the mean of the columns whose positions fall inside it, or the nearest one.
  for (int px = 0; px < p.w; ++px) {
    const double a = x0 + (x1 - x0) * px / p.w, b = x0 + (x1 - x0) * (px + 1) / p.w;
    auto first = std::lower_bound(map.x.begin(), map.x.end(), a);
    auto last = std::lower_bound(map.x.begin(), map.x.end(), b);
    if (first == last) {  // no position inside: the nearest
      const double mid = (a + b) / 2;
      auto it = std::lower_bound(map.x.begin(), map.x.end(), mid);
      if (it == map.x.end() || (it != map.x.begin() && mid - *(it - 1) < *it - mid)) --it;
      first = it, last = it + 1;
    }
    for (int py = 0; py < p.h; ++py) {
      const size_t r = std::min(rows - 1, static_cast<size_t>((p.h - 1 - py) * static_cast<int64_t>(rows) / p.h));
      double sum = 0.0;
      int n = 0;
      for (auto it = first; it != last; ++it) {
        const double v = map.values[static_cast<size_t>(it - map.x.begin())][r];
        if (std::isfinite(v)) sum += v, ++n;
      }
      img.set(p.x + px, p.y + py, n ? colormap((sum / n - lo) / (hi - lo)) : kMissing);
    }
  }
  draw_frame(img, p);

  // Axes: x like a line chart (no grid over the colours), y at row centres.
  const std::vector<double> xt = nice_ticks(map.x.front(), map.x.back(),
                                            std::clamp(p.w / (text_width("000000", scale) * 2), 2, 10), 1.0);
  draw_x_axis(img, p, x0, x1, xt, true, map.x_label, scale, /*grid=*/false);
  const double row_h = static_cast<double>(p.h) / static_cast<double>(rows);
  size_t every = 1;
  for (size_t k : {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000})
    if ((every = k) * row_h >= text_height(scale) * 1.3) break;
  for (size_t r = 0; r < rows; r += every) {
    const int py = round_px(p.y + p.h - (static_cast<double>(r) + 0.5) * row_h);
    img.fill_rect(p.x - tick_len(scale), py, p.x, py + 1, kFrame);
    const std::string s = map.row_prefix + std::to_string(r);
    draw_text(img, p.x - tick_len(scale) - 3 * scale - text_width(s, scale), py - 7 * scale / 2, s, kInk, scale);
  }
  if (!map.y_label.empty())
    draw_text_up(img, outer.x + 4 * scale, p.y + (p.h + text_width(map.y_label, scale)) / 2, map.y_label, kInk, scale);

  // Colour bar: bottom = lo, top = hi, ticks on its right.
  const Rect bar{p.x + p.w + bar_gap, p.y, bar_w, p.h};
  for (int py = 0; py < bar.h; ++py)
    img.fill_rect(bar.x, bar.y + py, bar.x + bar.w, bar.y + py + 1,
                  colormap(static_cast<double>(bar.h - 1 - py) / std::max(1, bar.h - 1)));
  draw_frame(img, bar);
  const double spacing = bar_ticks.size() > 1 ? bar_ticks[1] - bar_ticks[0] : 1.0;
  for (double t : bar_ticks) {
    const int py = round_px(bar.y + bar.h - 1 - (t - lo) / (hi - lo) * (bar.h - 1));
    img.fill_rect(bar.x + bar.w, py, bar.x + bar.w + tick_len(scale), py + 1, kFrame);
    draw_text(img, bar.x + bar.w + tick_len(scale) + 3 * scale, py - 7 * scale / 2, tick_label(t, spacing), kInk, scale);
  }
  if (!map.scale_label.empty())
    draw_text_up(img, outer.x + outer.w - 4 * scale - text_height(scale) + 2 * scale,
                 bar.y + (bar.h + text_width(map.scale_label, scale)) / 2, map.scale_label, kInk, scale);
  return {p, x0, x1, 0.0, static_cast<double>(rows)};
}

}  // namespace dsv::plot
