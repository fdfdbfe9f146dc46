// ParallelPlan: how a recipe's [parallel] layout (gpus, tp, pp, ep) would cut the model and the batch,
// and what the busiest GPU must hold. This build trains on one device; the plan lets
// `dsv train --dry-run` check and size the multi-GPU recipes before any parallel trainer exists.
//
// Layout rules (Megatron-Core's, with expert tensor parallel = 1):
//   dp = gpus / (tp * pp); expert parallel is carved out of dp x tp of one pipeline stage, so ep must
//   divide dp * tp; the ranks holding the same experts form the expert-data-parallel group of
//   dp * tp / ep ranks (Megatron: world % (etp * ep * pp) == 0, expert_dp = world / (etp * ep * pp)).
// Memory assumptions (each one is printed by describe_plan):
//   - distributed optimizer (ZeRO-1): the bf16 compute copy (2 B/param) and the fp32 gradient
//     (4 B/param) are whole on every GPU; the fp32 master weight and Adam m, v (12 B/param, 8 with
//     bf16 moments) are sharded over dp for dense parameters and over expert-dp for routed experts;
//   - activations are the trainer's fp32 estimate (flops.h activation_floats_per_token), divided by
//     tp (sequence parallelism, which Megatron requires for MoE with tp > 1); routing is balanced, so
//     an ep rank processes as many expert slots as its own tokens send out;
//   - 1F1B pipeline schedule: stage s holds min(pp - s, grad_accum) micro-batches of activations.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "train/train_config.h"

namespace dsv::train {

// What one GPU of a pipeline stage holds.
struct StagePlan {
  int64_t first_layer = 0;  // decoder layers [first_layer, first_layer + num_layers)
  int64_t num_layers = 0;
  int64_t moe_layers = 0;   // of which MoE
  bool embedding = false;   // first stage: the token embedding
  bool head = false;        // last stage: the final norm, the LM head and the MTP modules
  int64_t in_flight = 1;    // micro-batches whose activations are alive at once (1F1B)
  // Parameters on one GPU of the stage, after sharding.
  double dense_params = 0;   // tp-sharded parameters / tp + the ones every tp rank keeps (norms, router, MLA down-projections)
  double expert_params = 0;  // routed experts / ep
  // Bytes on one GPU.
  double weight_bytes = 0;       // bf16 compute copy: 2 B/param
  double grad_bytes = 0;         // fp32 gradients: 4 B/param, not sharded
  double optimizer_bytes = 0;    // fp32 master + Adam m, v, sharded over dp / expert-dp
  double activation_bytes = 0;   // in_flight micro-batches of saved activations + one layer's working set
  double total_bytes() const { return weight_bytes + grad_bytes + optimizer_bytes + activation_bytes; }
};

struct ParallelPlan {
  int64_t gpus = 1, tp = 1, pp = 1, ep = 1;
  int64_t dp = 1;         // data parallel: gpus / (tp * pp)
  int64_t expert_dp = 1;  // expert-data-parallel group: dp * tp / ep ranks hold the same experts
  int64_t micro_batch = 1, grad_accum = 1, seq_len = 1;
  int64_t global_batch = 1;     // sequences per optimizer step: micro_batch * grad_accum * dp
  int64_t tokens_per_step = 1;  // global_batch * seq_len
  int64_t num_layers = 0, num_heads = 0, routed_experts = 0, mtp_depth = 0;
  int64_t heads_per_tp_rank = 0;
  int64_t experts_per_ep_rank = 0;  // routed experts of each MoE layer on one ep rank
  bool bf16_moments = false;
  std::string recompute;
  double trained_params = 0;     // main model + mtp_depth MTP modules (flops.h trained_parameters)
  double flops_per_token = 0;    // flops.h train_flops_per_token
  std::string layer_split;       // how the layers were spread over the stages, in words
  std::vector<StagePlan> stages; // pp entries
  int64_t busiest_stage = 0;     // the stage whose GPUs need the most memory
  std::vector<std::string> warnings;
};

// The usable memory of the project's target GPU, an H100 SXM (80 GB), in bytes.
inline constexpr double kH100MemoryBytes = 80e9;

// Checks the layout against the model and computes the plan. Throws dsv::Error naming the
// parallel.* key, what it must satisfy and what was found: gpus divisible by tp * pp; tp dividing
// the attention heads and the FFN widths; ep dividing the routed experts and dp * tp; pp <= layers.
ParallelPlan plan_parallel(const TrainConfig& config, const ModelConfig& model, int64_t mtp_depth);

// Layers per pipeline stage for `layers` decoder layers over `pp` stages. Even when pp divides the
// layers; otherwise the middle stages take ceil(layers / pp) and the first and last stages give up
// the shortfall (the last the larger half: it also holds the head and the MTP modules), as Megatron's
// num_layers_in_first/last_pipeline_stage do; when that would empty an end stage, the stages take
// floor or ceil, the ones with fewer layers picked from the ends inwards (last, first, ...).
// `rule` (optional) receives the rule used, in words.
std::vector<int64_t> split_layers(int64_t layers, int64_t pp, std::string* rule = nullptr);

// A readable multi-line block: the layout, the global batch, heads / experts per rank, the stages,
// the memory assumptions and the busiest GPU's breakdown, with a warning above kH100MemoryBytes.
// Every line ends in '\n'.
std::string describe_plan(const ParallelPlan& plan);

}  // namespace dsv::train
