// What a training run costs: model FLOPs per token (for MFU), the device's peak, and a rough memory need.
#pragma once
#include <cstdint>
#include <string>

#include "model/config.h"

namespace dsv::train {

// Training FLOPs per token (forward + backward) of a causal sequence of seq_len tokens, counting
// MTP modules 1..mtp_depth. Formula (flops.cpp derives it):
//   6 * (params_active - embedding lookup)                       matrix products, LM head included
// + L * 3 * H * (Dqk + Dv) * (S + 1)                             causal attention scores and mixing
// + sum_k (S - k) / S * [6 * (active MTP module + LM head) + 3 * H * (Dqk + Dv) * (S - k + 1)]
double train_flops_per_token(const ModelConfig& c, int64_t seq_len, int64_t mtp_depth);

// Dense bf16 tensor-core peak in FLOP/s: 0 on "cpu" (MFU is then reported as 0). For "cuda", by the
// GPU's name when known (H100 SXM / H200 / H800 989e12, H100 PCIe 756e12, A100 312e12; any other
// named GPU 0); an empty name assumes the project's target, an H100 SXM.
double device_peak_flops(const std::string& device, const std::string& gpu_name = "");

// Parameters the optimizer holds: the main model plus mtp_depth MTP modules (embed and head shared).
int64_t trained_parameters(const ModelConfig& c, int64_t mtp_depth);

// Rough peak bytes of saved activations for one micro-batch of B sequences of S tokens, in fp32,
// following what the trainer keeps per layer (train/train_layers.h LayerSaved); see flops.cpp.
// recompute: "none", "selective" (drop_recomputable's buffers not kept) or "full".
// = 4 bytes * B * S * (sum of the layers' saved floats + the largest working set + head + mtp) of
// activation_floats_per_token below.
double activation_bytes_estimate(const ModelConfig& c, int64_t micro_batch, int64_t seq_len, int64_t mtp_depth,
                                 const std::string& recompute);

// The pieces of activation_bytes_estimate, in fp32 floats kept per token of the micro-batch, so a
// pipeline stage can add up only the layers it holds (train/parallel_plan.h).
struct ActivationFloats {
  double dense_layer = 0;    // one dense decoder layer as trained (recompute "full": only its input, D;
                             // "selective": without the buffers it re-makes)
  double moe_layer = 0;      // one MoE decoder layer as trained (likewise)
  double dense_working = 0;  // one dense layer without recompute: the backward's working set
  double moe_working = 0;    // the same for an MoE layer
  double head = 0;           // logits and their gradient at the LM head: 2V
  double mtp = 0;            // every MTP depth k: (S - k) / S * (its block + 7D)
};
ActivationFloats activation_floats_per_token(const ModelConfig& c, int64_t seq_len, int64_t mtp_depth,
                                             const std::string& recompute);

}  // namespace dsv::train
