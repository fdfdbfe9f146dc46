// One micro-batch of training on a whole model: forward with saved activations, the losses of
// docs/TRAINING.md, and the backward that adds every parameter's gradient into `grads`.
#pragma once
#include <vector>

#include "model/model.h"
#include "train/train_layers.h"

namespace dsv::train {

// None keeps every activation the backward reads; Selective drops and re-makes the cheap ones
// (drop_recomputable in train_layers.h); Full keeps only each layer's input and re-runs the layer.
enum class Recompute { None, Selective, Full };

struct PassOptions {
  int64_t mtp_depth = 0;        // MTP modules to train (<= weights.mtp.size())
  double mtp_lambda = 0.0;
  AuxSpec aux;                  // balance losses (main-model MoE layers)
  int64_t micro_batches = 1;    // A: gradients are means over the whole optimizer step
  Recompute recompute = Recompute::None;
  // Loss normalizers: the optimizer step's number of loss-carrying targets, main and per MTP depth
  // (see count_targets). Empty / 0: every target of the A micro-batches counts (B * S * A, and
  // B * (S - k) * A at depth k).
  int64_t loss_targets = 0;
  std::vector<int64_t> mtp_targets;
  bool forward_only = false;    // validation: losses only, no gradients touched
  // The routed experts' weight gradients (main layers and every MTP module's block) are written, not
  // accumulated: a trainer's first micro-batch, with ParamStore::zero_grads(keep_routed_experts).
  bool overwrite_expert_grads = false;
};

// Loss-carrying targets (>= 0) of one micro-batch: main, and per MTP depth k = 1..depth the targets
// t[b, i + k] of rows i < S - k.
struct TargetCounts {
  int64_t main = 0;
  std::vector<int64_t> mtp;
};
TargetCounts count_targets(const int32_t* targets, Batch batch, int64_t mtp_depth);

struct PassResult {
  double loss_sum = 0.0;               // main cross-entropy summed over this micro-batch's targets
  int64_t loss_count = 0;
  std::vector<double> mtp_sum;         // per depth
  std::vector<int64_t> mtp_count;
  double aux_loss = 0.0;               // weighted balance loss (this micro-batch's share of the step)
  std::vector<std::vector<int64_t>> load;  // per layer: expert loads (empty for dense layers)
};

// inputs: host [B, S] token ids; targets: host [B, S], the token after each input or -1 (no loss).
// MTP depth k predicts targets[b, i + k] from inputs[b, i + k] and the previous depth's row i.
PassResult forward_backward(const Model& m, const Weights& grads, const int32_t* inputs, const int32_t* targets,
                            Batch batch, const PassOptions& opt);
// windows: host [B, S + 1] token ids; inputs are [:, :S], targets [:, 1:].
PassResult forward_backward(const Model& m, const Weights& grads, const int32_t* windows, Batch batch,
                            const PassOptions& opt);

}  // namespace dsv::train
