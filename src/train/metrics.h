// Training output: one JSON object per step in a .jsonl file, and the console progress line.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

#include "train/trainer.h"

namespace dsv::train {

// One step as a single-line JSON object: step, loss, mtp_loss, aux_loss, grad_norm, lr, tokens,
// tokens_per_second, step_seconds, mfu, skipped, expert_imbalance (non-finite numbers become null).
std::string metrics_json(const StepMetrics& m);

// Appends one line per step to a new file (an existing one is replaced), flushed after every line
// so a crashed or interrupted run keeps every finished step.
class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  void write(const StepMetrics& m);

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

// "[#####-----] step 12/300 | loss 4.1234 | ... | ETA 1m05s" (no line ending).
std::string progress_text(const StepMetrics& m, int64_t total_steps, double elapsed_seconds);
std::string format_duration(double seconds);  // "42s", "3m05s", "2h07m"

// The console progress line. On a terminal it redraws one line with '\r' every step; otherwise
// (a log file, a pipe) it prints one line per log_interval steps, plus the first and last step.
class ConsoleProgress {
 public:
  ConsoleProgress(int64_t total_steps, int64_t log_interval, std::FILE* out = stderr);
  ConsoleProgress(int64_t total_steps, int64_t log_interval, std::FILE* out, bool is_tty);
  void update(const StepMetrics& m, double elapsed_seconds);
  // A line of its own ("dsv: warning: ..."), after ending a redrawn progress line.
  void warn(const std::string& message);
  void finish();  // ends a redrawn line

 private:
  int64_t total_, interval_;
  std::FILE* out_;
  bool tty_, open_line_ = false;
};

}  // namespace dsv::train
