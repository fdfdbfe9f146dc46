// Raster plots without a plotting library: an RGB image, text in our bitmap font, line charts with
// axes, ticks, grid and legend, and a heatmap with a colour bar. `dsv plot` builds its figures from these.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv::plot {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  bool operator==(const Rgb&) const = default;
};

// width x height pixels, 3 bytes each, top row first (the layout write_png_rgb takes).
class Image {
 public:
  Image(int width, int height, Rgb background);
  int width() const { return width_; }
  int height() const { return height_; }
  const std::vector<uint8_t>& rgb() const { return rgb_; }
  Rgb at(int x, int y) const;
  void set(int x, int y, Rgb c);  // ignores pixels outside the image
  void fill_rect(int x0, int y0, int x1, int y1, Rgb c);  // [x0, x1) x [y0, y1), clipped
  // A straight line, `thickness` pixels wide (a square brush), end points included.
  void line(double x0, double y0, double x1, double y1, Rgb c, int thickness = 1);
  void disc(double cx, double cy, double radius, Rgb c);
  // Drawing stays inside [x, x + w) x [y, y + h) until clip_to_image().
  void clip_to(int x, int y, int w, int h);
  void clip_to_image() { clip_to(0, 0, width_, height_); }

 private:
  int width_, height_;
  int clip_x0_ = 0, clip_y0_ = 0, clip_x1_, clip_y1_;
  std::vector<uint8_t> rgb_;
};

// Text: `scale` multiplies the 5x7 font; (x, y) is the top-left corner of the first cell.
int text_width(const std::string& text, int scale);
int text_height(int scale);  // the cell height: ascent, descender and spacing
void draw_text(Image& img, int x, int y, const std::string& text, Rgb c, int scale);
// Reads bottom to top (rotated 90 degrees counter-clockwise); (x, y) is the bottom-left corner.
void draw_text_up(Image& img, int x, int y, const std::string& text, Rgb c, int scale);

// About max_ticks round values (1, 2 or 5 times a power of ten apart, and at least min_spacing)
// inside [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int max_ticks, double min_spacing = 0.0);
// A tick label with just enough digits to tell ticks `spacing` apart ("0.0003", "2.5", "1500").
std::string tick_label(double value, double spacing);

// A perceptual colour scale from dark blue-violet (t = 0) through teal to yellow (t = 1); its
// luminance rises with t, so brighter always means larger. t is clamped to [0, 1].
Rgb colormap(double t);

struct Rect {
  int x = 0, y = 0, w = 0, h = 0;
};

struct Series {
  std::string label;
  std::vector<double> x, y;  // same length; a NaN y breaks the line
  Rgb color;
  int thickness = 2;
  bool markers = false;  // a dot at each point
  bool line = true;
};

struct LineChart {
  std::string title, x_label, y_label;
  std::vector<Series> series;
  double x_min = 0, x_max = 0;  // x_min == x_max: from the data
  bool x_tick_labels = true;
  bool x_integer = false;  // x ticks on whole numbers only (steps)
};

// Layout of a chart inside an outer rectangle: where the data goes.
struct ChartLayout {
  Rect plot;
  double x_min, x_max, y_min, y_max;
};

// The left margin (pixels) a chart needs for its y tick labels and y label; stacked charts pass the
// largest to draw_line_chart so their plot areas line up.
int chart_left_margin(const LineChart& chart, int scale);
ChartLayout draw_line_chart(Image& img, Rect outer, const LineChart& chart, int scale, int left_margin = -1);

struct Heatmap {
  std::string title, x_label, y_label, scale_label;
  std::vector<double> x;                    // column positions (ascending whole numbers: steps), one per column
  std::vector<std::vector<double>> values;  // [column][row]; row 0 is drawn at the bottom
  std::string row_prefix;                   // y tick labels: row numbers
  double lo = 0, hi = 0;                    // colour scale; lo == hi: from the data
};
// The colour bar on the right shows the value scale. Returns the heat area's layout (y in rows).
ChartLayout draw_heatmap(Image& img, Rect outer, const Heatmap& map, int scale);

}  // namespace dsv::plot
