// --device handling shared by the subcommands.
#pragma once
#include <memory>
#include <string>

#include "model/model.h"

namespace dsv::cli {

// Loads the model and moves it to "cpu" or "cuda" (registering the CUDA backend on first use), with
// weights "fp32" or "bf16" (store_weights_bf16: bf16 matrices and latent cache).
std::unique_ptr<Model> load_model_on(const std::string& dir, const std::string& device,
                                     const std::string& weights = "fp32");
// The value of a --weights option: true for "bf16", false for "fp32"; anything else is refused.
bool bf16_weights_option(const std::string& weights);
// The --weights option of generate, logits and bench infer.
inline constexpr const char* kWeightsHelp =
    "fp32 (exact), or bf16: matrices and the latent cache in bf16 (embedding, routers, norms fp32)";
// Registers the CUDA backend once (throws when this build has no CUDA or no device is visible).
void ensure_cuda_backend();

}  // namespace dsv::cli
