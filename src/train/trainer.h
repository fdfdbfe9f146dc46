// Trainer: one optimizer step at a time over a model held as fp32 master weights.
// The loop around it (console, metrics file, stopping) lives in tools/dsv/cmd_train.cpp.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "train/model_train.h"
#include "train/param_store.h"
#include "train/sample_source.h"
#include "train/train_config.h"

namespace dsv::train {

struct StepMetrics {
  int64_t step = 0;            // 1-based optimizer step just taken (or skipped)
  double loss = 0.0;           // mean next-token cross-entropy of the main model
  double mtp_loss = 0.0;       // mean over depths of the MTP cross-entropies (0 without MTP)
  double aux_loss = 0.0;       // balance losses (already weighted by alpha)
  double grad_norm = 0.0;      // global L2 norm before clipping
  double lr = 0.0;
  int64_t tokens = 0;          // tokens processed in this step
  int64_t loss_targets = 0;    // of them, targets that carry loss (all but masked ones)
  double step_seconds = 0.0;
  double tokens_per_second = 0.0;
  double mfu = 0.0;            // model FLOPs utilization against the device's dense peak (0 on CPU)
  bool skipped = false;        // NaN/Inf loss or gradient: no update was applied
  std::vector<double> expert_imbalance;  // per MoE layer: max expert load / mean load in this step
};

// What one micro-batch's forward_backward needs from a training config (mtp_depth resolved).
PassOptions pass_options(const TrainConfig& config, int64_t mtp_depth);

class Trainer {
 public:
  explicit Trainer(const TrainConfig& config);
  ~Trainer();
  // Runs grad_accum micro-batches and one AdamW update. Throws dsv::Error after max_bad_steps
  // consecutive non-finite steps.
  StepMetrics step();
  int64_t steps_done() const;
  const Model& model() const;
  // The flat weights, gradients (the last step's, until the next step) and moments.
  const ParamStore& store() const;
  int64_t parameter_count() const;
  // Writes the current weights as an HF checkpoint directory (config.json + model.safetensors).
  void save_hf(const std::string& dir) const;
  // Validation: mean next-token loss of the main model over the first eval_iters * micro_batch
  // samples of the valid split (the same samples every call). Requires has_validation().
  double evaluate();
  bool has_validation() const;
  // Resumable state (src/train/checkpoint.h): saves SAVE_DIR/step_<steps_done>/ and points `latest` at it.
  std::string save_checkpoint(const std::string& save_dir, const std::string& tokenizer_dir, int64_t keep_last) const;
  // Restores weights, moments, router biases and counters from a save dir (its `latest`) or a step dir.
  // Returns warnings: recipe keys that decide the sample order (seq_len, batch, seed, data) and differ
  // from the saved run, so the resumed run reads different samples than the original would have.
  std::vector<std::string> load_checkpoint(const std::string& dir);
  const SampleSource& train_data() const;
  const SampleSource* valid_data() const;  // nullptr without a valid split

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv::train
