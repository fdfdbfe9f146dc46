// One micro-batch of training on a whole model: forward with saved activations, the losses of
// docs/TRAINING.md, and the backward that adds every parameter's gradient into `grads`.
#pragma once
#include <vector>

#include "model/model.h"
#include "train/train_layers.h"

namespace dsv::train {

enum class Recompute { None, Full };

struct PassOptions {
  int64_t mtp_depth = 0;        // MTP modules to train (<= weights.mtp.size())
  double mtp_lambda = 0.0;
  AuxSpec aux;                  // balance losses (main-model MoE layers)
  int64_t micro_batches = 1;    // A: gradients are means over the whole optimizer step
  Recompute recompute = Recompute::None;
};

struct PassResult {
  double loss_sum = 0.0;               // main cross-entropy summed over this micro-batch's targets
  int64_t loss_count = 0;
  std::vector<double> mtp_sum;         // per depth
  std::vector<int64_t> mtp_count;
  double aux_loss = 0.0;               // weighted balance loss (this micro-batch's share of the step)
  std::vector<std::vector<int64_t>> load;  // per layer: expert loads (empty for dense layers)
};

// windows: host [B, S + 1] token ids; inputs are [:, :S], targets [:, 1:].
PassResult forward_backward(const Model& m, const Weights& grads, const int32_t* windows, Batch batch,
                            const PassOptions& opt);

}  // namespace dsv::train
