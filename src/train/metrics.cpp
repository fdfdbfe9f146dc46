#include "train/metrics.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsv::train {

std::string metrics_json(const StepMetrics& m) {
  // Keys in the documented order; nlohmann writes NaN and Inf as null, so a skipped step stays valid JSON.
  const nlohmann::ordered_json j = {{"step", m.step},
                            {"loss", m.loss},
                            {"mtp_loss", m.mtp_loss},
                            {"aux_loss", m.aux_loss},
                            {"grad_norm", m.grad_norm},
                            {"lr", m.lr},
                            {"tokens", m.tokens},
                            {"tokens_per_second", m.tokens_per_second},
                            {"step_seconds", m.step_seconds},
                            {"mfu", m.mfu},
                            {"skipped", m.skipped},
                            {"expert_imbalance", m.expert_imbalance}};
  return j.dump();
}

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  const auto parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  file_ = std::fopen(path.c_str(), "w");
  DSV_CHECK(file_, "output.metrics_jsonl {}: cannot open for writing ({})", path, std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
  if (file_) std::fclose(file_);
}

void MetricsWriter::write(const StepMetrics& m) {
  const std::string line = metrics_json(m) + "\n";
  const bool ok = std::fwrite(line.data(), 1, line.size(), file_) == line.size() && std::fflush(file_) == 0;
  DSV_CHECK(ok, "output.metrics_jsonl {}: write failed ({})", path_, std::strerror(errno));
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

namespace {
std::string human_rate(double v) {
  if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f}K", v / 1e3);
  return fmt::format("{:.0f}", v);
}
}  // namespace

std::string progress_text(const StepMetrics& m, int64_t total, double elapsed) {
  constexpr int kBar = 20;
  const double done = total > 0 ? std::clamp(static_cast<double>(m.step) / static_cast<double>(total), 0.0, 1.0) : 1.0;
  const int filled = static_cast<int>(done * kBar);
  std::string s = fmt::format("[{}{}] step {}/{} | loss {:.4f}", std::string(filled, '#'),
                              std::string(kBar - filled, '-'), m.step, total, m.loss);
  if (m.mtp_loss != 0.0) s += fmt::format(" | mtp {:.4f}", m.mtp_loss);
  if (m.aux_loss != 0.0) s += fmt::format(" | aux {:.4g}", m.aux_loss);
  const double eta = m.step > 0 ? elapsed / static_cast<double>(m.step) * static_cast<double>(total - m.step) : NAN;
  s += fmt::format(" | gnorm {:.3f} | lr {:.3e} | {} tok/s | MFU {:.3g}% | ETA {}", m.grad_norm, m.lr,
                   human_rate(m.tokens_per_second), 100.0 * m.mfu, format_duration(eta));
  if (m.skipped) s += " | SKIPPED";
  return s;
}

ConsoleProgress::ConsoleProgress(int64_t total_steps, int64_t log_interval, std::FILE* out)
    : ConsoleProgress(total_steps, log_interval, out, ::isatty(::fileno(out)) != 0) {}

ConsoleProgress::ConsoleProgress(int64_t total_steps, int64_t log_interval, std::FILE* out, bool is_tty)
    : total_(total_steps), interval_(std::max<int64_t>(1, log_interval)), out_(out), tty_(is_tty) {}

void ConsoleProgress::update(const StepMetrics& m, double elapsed_seconds) {
  const std::string text = progress_text(m, total_, elapsed_seconds);
  if (tty_) {
    std::fprintf(out_, "\r%s\x1b[K", text.c_str());  // redraw, clearing the rest of a longer old line
    open_line_ = true;
  } else if (m.step == 1 || m.step % interval_ == 0 || m.step == total_) {
    std::fprintf(out_, "%s\n", text.c_str());
  }
  std::fflush(out_);
}

void ConsoleProgress::warn(const std::string& message) {
  finish();
  std::fprintf(out_, "dsv: warning: %s\n", message.c_str());
  std::fflush(out_);
}

void ConsoleProgress::finish() {
  if (open_line_) std::fprintf(out_, "\n");
  open_line_ = false;
  std::fflush(out_);
}

}  // namespace dsv::train
