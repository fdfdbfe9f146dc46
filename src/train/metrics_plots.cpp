#include "train/metrics_plots.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace dsv::train {
namespace {

constexpr plot::Rgb kWhite{255, 255, 255};
constexpr plot::Rgb kLossRaw{160, 190, 225}, kLoss{31, 92, 170}, kMtp{230, 120, 20}, kMtpRaw{245, 200, 160}, kVal{200, 30, 40},
    kLr{40, 140, 70};

std::vector<MetricsLog::Step> sorted_steps(const MetricsLog& log) {
  std::vector<MetricsLog::Step> s = log.steps;
  std::stable_sort(s.begin(), s.end(), [](const auto& a, const auto& b) { return a.step < b.step; });
  return s;
}

// Debiased exponential moving average (time constant ~n/50 steps); NaN points stay NaN and are skipped.
std::vector<double> smoothed(const std::vector<double>& y) {
  const double tau = std::max(1.0, static_cast<double>(y.size()) / 50.0);
  const double beta = 1.0 - 1.0 / tau;
  std::vector<double> out(y.size(), NAN);
  double acc = 0.0, weight = 0.0;
  for (size_t i = 0; i < y.size(); ++i) {
    if (!std::isfinite(y[i])) continue;
    acc = beta * acc + (1.0 - beta) * y[i];
    weight = beta * weight + (1.0 - beta);
    out[i] = acc / weight;
  }
  return out;
}

}  // namespace

int plot_text_scale(int width, int height) {
  return std::max(1, static_cast<int>(std::lround(std::min(width, height) / 500.0)));
}

plot::Image render_loss_plot(const MetricsLog& log, int width, int height) {
  DSV_CHECK(!log.steps.empty(), "no training steps to plot");
  const std::vector<MetricsLog::Step> steps = sorted_steps(log);
  std::vector<double> x, loss, mtp, lr;
  bool any_mtp = false;
  for (const auto& s : steps) {
    x.push_back(static_cast<double>(s.step));
    loss.push_back(s.loss);
    mtp.push_back(s.mtp_loss);
    lr.push_back(s.lr);
    any_mtp |= std::isfinite(s.mtp_loss) && s.mtp_loss != 0.0;
  }
  double x_min = x.front(), x_max = x.back();
  for (const auto& v : log.validation)
    x_min = std::min(x_min, static_cast<double>(v.step)), x_max = std::max(x_max, static_cast<double>(v.step));
  if (x_max == x_min) x_min -= 1.0, x_max += 1.0;

  plot::LineChart top{.title = "training loss", .y_label = "loss", .x_min = x_min, .x_max = x_max,
                      .x_tick_labels = false, .x_integer = true};
  // Many steps: thin raw lines under smoothed ones (the raw noise would hide the trend).
  const bool smooth = steps.size() > 30;
  if (smooth) {
    top.series.push_back({.label = "train loss (raw)", .x = x, .y = loss, .color = kLossRaw, .thickness = 1});
    if (any_mtp) top.series.push_back({.x = x, .y = mtp, .color = kMtpRaw, .thickness = 1});
    top.series.push_back({.label = "train loss (smoothed)", .x = x, .y = smoothed(loss), .color = kLoss});
    if (any_mtp) top.series.push_back({.label = "MTP loss (smoothed)", .x = x, .y = smoothed(mtp), .color = kMtp});
  } else {
    top.series.push_back({.label = "train loss", .x = x, .y = loss, .color = kLoss, .markers = steps.size() < 2});
    if (any_mtp) top.series.push_back({.label = "MTP loss", .x = x, .y = mtp, .color = kMtp, .markers = steps.size() < 2});
  }
  if (!log.validation.empty()) {
    auto val = log.validation;
    std::stable_sort(val.begin(), val.end(), [](const auto& a, const auto& b) { return a.step < b.step; });
    plot::Series s{.label = "validation loss", .color = kVal, .thickness = 1, .markers = true};
    for (const auto& v : val) s.x.push_back(static_cast<double>(v.step)), s.y.push_back(v.loss);
    top.series.push_back(std::move(s));
  }
  plot::LineChart bottom{
      .x_label = "step", .y_label = "learning rate", .x_min = x_min, .x_max = x_max, .x_integer = true};
  bottom.series.push_back({.x = x, .y = lr, .color = kLr, .markers = steps.size() < 2});

  const int scale = plot_text_scale(width, height);
  plot::Image img(width, height, kWhite);
  const int left = std::max(plot::chart_left_margin(top, scale), plot::chart_left_margin(bottom, scale));
  const int split = height * 68 / 100;
  plot::draw_line_chart(img, {0, 0, width, split}, top, scale, left);
  plot::draw_line_chart(img, {0, split, width, height - split}, bottom, scale, left);
  return img;
}

bool has_expert_data(const MetricsLog& log) {
  return std::any_of(log.steps.begin(), log.steps.end(), [](const auto& s) { return !s.expert_imbalance.empty(); });
}

plot::Image render_expert_load_plot(const MetricsLog& log, int width, int height) {
  DSV_CHECK(has_expert_data(log), "no expert imbalance values to plot (the model has no MoE layers, or the run "
                                  "wrote none)");
  size_t layers = 0;
  for (const auto& s : log.steps) layers = std::max(layers, s.expert_imbalance.size());
  plot::Heatmap map{.title = "expert load imbalance per MoE layer",
                    .x_label = "step",
                    .y_label = "MoE layer",
                    .scale_label = "max / mean expert load"};
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto& s : sorted_steps(log)) {
    if (s.expert_imbalance.empty()) continue;
    std::vector<double> column(layers, NAN);  // a step with fewer values leaves the rest unknown
    std::copy(s.expert_imbalance.begin(), s.expert_imbalance.end(), column.begin());
    for (double v : column)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    map.x.push_back(static_cast<double>(s.step));
    map.values.push_back(std::move(column));
  }
  // 1 is perfect balance, so the scale starts there unless some value is lower (a layer with no tokens).
  map.lo = std::isfinite(lo) ? std::min(lo, 1.0) : 1.0;
  map.hi = std::isfinite(hi) && hi > map.lo ? hi : map.lo + 1.0;
  plot::Image img(width, height, kWhite);
  plot::draw_heatmap(img, {0, 0, width, height}, map, plot_text_scale(width, height));
  return img;
}

}  // namespace dsv::train
