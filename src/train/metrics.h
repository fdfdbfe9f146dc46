// Training output: one JSON object per step in a .jsonl file (and its reader, for `dsv plot`), and the
// console progress line. docs/METRICS.md lists the keys.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "train/trainer.h"

namespace dsv::train {

// One step as a single-line JSON object: step, loss, mtp_loss, aux_loss, grad_norm, lr, tokens,
// tokens_per_second, step_seconds, mfu, skipped, expert_imbalance (non-finite numbers become null).
std::string metrics_json(const StepMetrics& m);

// Appends one line per step to a new file (an existing one is replaced), flushed after every line
// so a crashed or interrupted run keeps every finished step. A run resumed from a checkpoint at step
// N passes resume_step = N: the file's records up to step N are kept (rewritten atomically without
// the later ones, which the resumed run writes again) and new lines are appended after them.
class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& path, int64_t resume_step = -1);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  void write(const StepMetrics& m);
  // {"step":N,"val_loss":x}: a validation loss measured after step N.
  void write_validation(int64_t step, double val_loss);

 private:
  void write_line(const std::string& json);
  std::string path_;
  std::FILE* file_ = nullptr;
};

// A metrics .jsonl file read back: step records in file order, and validation records.
// Non-finite values (written as null) read back as NaN.
struct MetricsLog {
  struct Step {
    int64_t step = 0;
    double loss = 0.0, mtp_loss = 0.0, lr = 0.0;
    std::vector<double> expert_imbalance;  // per MoE layer; empty when the run has none
  };
  struct Validation {
    int64_t step = 0;
    double loss = 0.0;
  };
  std::vector<Step> steps;
  std::vector<Validation> validation;
};
// Throws dsv::Error naming the file and line for a missing file, a line that is not a JSON object, or a
// record without "step". Blank lines are skipped; unknown keys are ignored.
MetricsLog read_metrics_jsonl(const std::string& path);

// "[#####-----] step 12/300 (4%) | loss 4.1234 | ... | ETA 1m05s" (no line ending).
// elapsed_seconds covers the steps after first_step_of_run - 1 (a resumed run starts past step 1), so
// the ETA is the time per step of this run times the steps left.
std::string progress_text(const StepMetrics& m, int64_t total_steps, double elapsed_seconds,
                          int64_t first_step_of_run = 1);
std::string format_duration(double seconds);  // "42s", "3m05s", "2h07m"

// The console progress line. On a terminal it redraws one line with '\r' every step, cut to the
// terminal's width so it never wraps; otherwise (a log file, a pipe) it prints one line per
// log_interval steps, plus the first step of the run and the last.
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
  int columns_ = 0;  // terminal width, 0 when unknown
  int64_t first_step_ = -1;  // the step of the first update (a resumed run starts past 1)
};

}  // namespace dsv::train
