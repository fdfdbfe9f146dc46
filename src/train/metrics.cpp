#include "train/metrics.h"

#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/npy.h"

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

MetricsWriter::MetricsWriter(const std::string& path, int64_t resume_step) : path_(path) {
  const auto parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (resume_step >= 0 && std::filesystem::exists(path)) {
    std::ifstream in(path);
    std::string line, kept;
    while (std::getline(in, line)) {
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() <= resume_step)
        kept += line + "\n";
    }
    write_file_atomic(path, kept);
    file_ = std::fopen(path.c_str(), "a");
  } else {
    file_ = std::fopen(path.c_str(), "w");
  }
  DSV_CHECK(file_, "output.metrics_jsonl {}: cannot open for writing ({})", path, std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
  if (file_) std::fclose(file_);
}

void MetricsWriter::write(const StepMetrics& m) { write_line(metrics_json(m)); }

void MetricsWriter::write_validation(int64_t step, double val_loss) {
  const nlohmann::ordered_json j = {{"step", step}, {"val_loss", val_loss}};
  write_line(j.dump());
}

void MetricsWriter::write_line(const std::string& json) {
  const std::string line = json + "\n";
  const bool ok = std::fwrite(line.data(), 1, line.size(), file_) == line.size() && std::fflush(file_) == 0;
  DSV_CHECK(ok, "output.metrics_jsonl {}: write failed ({})", path_, std::strerror(errno));
}

namespace {
// A number or null (NaN); anything else is an error naming the place.
double number_or_nan(const nlohmann::json& v, const std::string& path, size_t line, const char* key) {
  if (v.is_null()) return NAN;
  DSV_CHECK(v.is_number(), "{}:{}: \"{}\" should be a number or null, found {}", path, line, key, v.dump());
  return v.get<double>();
}
double optional_number(const nlohmann::json& j, const std::string& path, size_t line, const char* key) {
  const auto it = j.find(key);
  return it == j.end() ? 0.0 : number_or_nan(*it, path, line, key);
}
}  // namespace

MetricsLog read_metrics_jsonl(const std::string& path) {
  std::ifstream in(path);
  DSV_CHECK(in.good(), "{}: cannot open the metrics file ({})", path,
            std::filesystem::exists(path) ? std::strerror(errno) : "no such file");
  MetricsLog log;
  std::string text;
  for (size_t line = 1; std::getline(in, text); ++line) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    DSV_CHECK(j.is_object(), "{}:{}: not a JSON object (a metrics file has one per line): {:.80}", path, line, text);
    const auto step = j.find("step");
    DSV_CHECK(step != j.end() && step->is_number_integer(), "{}:{}: no integer \"step\" in {:.80}", path, line, text);
    if (j.contains("val_loss")) {
      log.validation.push_back({step->get<int64_t>(), number_or_nan(j["val_loss"], path, line, "val_loss")});
      continue;
    }
    MetricsLog::Step s;
    s.step = step->get<int64_t>();
    s.loss = optional_number(j, path, line, "loss");
    s.mtp_loss = optional_number(j, path, line, "mtp_loss");
    s.lr = optional_number(j, path, line, "lr");
    if (const auto e = j.find("expert_imbalance"); e != j.end() && !e->is_null()) {
      DSV_CHECK(e->is_array(), "{}:{}: \"expert_imbalance\" should be an array, found {}", path, line, e->dump());
      for (const auto& v : *e) s.expert_imbalance.push_back(number_or_nan(v, path, line, "expert_imbalance"));
    }
    log.steps.push_back(std::move(s));
  }
  DSV_CHECK(!in.bad(), "{}: read failed ({})", path, std::strerror(errno));
  return log;
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

std::string progress_text(const StepMetrics& m, int64_t total, double elapsed, int64_t first_step_of_run) {
  constexpr int kBar = 20;
  const double done = total > 0 ? std::clamp(static_cast<double>(m.step) / static_cast<double>(total), 0.0, 1.0) : 1.0;
  const int filled = static_cast<int>(done * kBar);
  std::string s = fmt::format("[{}{}] step {}/{} ({:.0f}%) | loss {:.4f}", std::string(filled, '#'),
                              std::string(kBar - filled, '-'), m.step, total, std::floor(100.0 * done), m.loss);
  if (m.mtp_loss != 0.0) s += fmt::format(" | mtp {:.4f}", m.mtp_loss);
  if (m.aux_loss != 0.0) s += fmt::format(" | aux {:.4g}", m.aux_loss);
  const int64_t done_here = m.step - first_step_of_run + 1;
  const double eta =
      done_here > 0 ? elapsed / static_cast<double>(done_here) * static_cast<double>(std::max<int64_t>(0, total - m.step))
                    : NAN;
  s += fmt::format(" | gnorm {:.3f} | lr {:.3e} | {} tok/s | MFU {:.3g}% | ETA {}", m.grad_norm, m.lr,
                   human_rate(m.tokens_per_second), 100.0 * m.mfu, format_duration(eta));
  if (m.skipped) s += " | SKIPPED";
  return s;
}

ConsoleProgress::ConsoleProgress(int64_t total_steps, int64_t log_interval, std::FILE* out)
    : ConsoleProgress(total_steps, log_interval, out, ::isatty(::fileno(out)) != 0) {}

ConsoleProgress::ConsoleProgress(int64_t total_steps, int64_t log_interval, std::FILE* out, bool is_tty)
    : total_(total_steps), interval_(std::max<int64_t>(1, log_interval)), out_(out), tty_(is_tty) {
  winsize ws{};
  if (tty_ && ::ioctl(::fileno(out_), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) columns_ = ws.ws_col;
}

void ConsoleProgress::update(const StepMetrics& m, double elapsed_seconds) {
  if (first_step_ < 0) first_step_ = m.step;
  std::string text = progress_text(m, total_, elapsed_seconds, first_step_);
  if (tty_) {
    // A line longer than the terminal wraps, and '\r' then redraws only its last part.
    if (columns_ > 1 && text.size() >= static_cast<size_t>(columns_)) text.resize(static_cast<size_t>(columns_) - 1);
    std::fprintf(out_, "\r%s\x1b[K", text.c_str());  // redraw, clearing the rest of a longer old line
    open_line_ = true;
  } else if (m.step == first_step_ || m.step % interval_ == 0 || m.step == total_) {
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
