// SampleSource: where training and validation samples come from. A sample is S input tokens and S
// targets; a target of -1 carries no loss (padding, prompt tokens in fine-tuning). Every source is a
// pure function of (its files, the seed, the position), so a resumed run reads exactly the samples
// an uninterrupted run would have read.
//
// Position p of a split's sample stream is p = (s * A + a) * B + i for optimizer step s, micro-batch
// a, row i (validation: evaluation e, micro-batch a, row i, counted the same way over eval_iters).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "model/config.h"
#include "train/train_config.h"

namespace dsv::train {

enum class Split { Train, Valid };

class SampleSource {
 public:
  virtual ~SampleSource() = default;
  // Distinct samples in one epoch (> 0); positions past it wrap into the next epoch.
  virtual int64_t num_samples() const = 0;
  // inputs[S], targets[S] (targets[j] is the token after inputs[j], or -1 for no loss).
  virtual void sample(int64_t position, int32_t* inputs, int32_t* targets) = 0;
  // One line for logs and --dry-run: files, tokens, samples, order.
  virtual std::string describe() const = 0;
};

// data.split "train,valid": two shares (numbers >= 0, sum > 0). Item ranges of a split of n items:
// train is [0, floor(n * train / (train + valid))), valid the rest.
struct SplitShares {
  double train = 1.0, valid = 0.0;
};
SplitShares parse_split(const std::string& text);
std::pair<int64_t, int64_t> split_range(int64_t n, SplitShares shares, Split split);

// The source the recipe names (data.tokens, data.paths or data.sft) for one split. Returns nullptr
// for Split::Valid when the recipe has no validation share. Checks the files once, with clear errors.
std::unique_ptr<SampleSource> make_sample_source(const TrainConfig& config, const ModelConfig& model, Split split);

}  // namespace dsv::train
