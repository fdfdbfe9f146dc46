// --device handling shared by the subcommands.
#pragma once
#include <memory>
#include <string>

#include "model/model.h"

namespace dsv::cli {

// Loads the model and moves it to "cpu" or "cuda" (registering the CUDA backend on first use).
std::unique_ptr<Model> load_model_on(const std::string& dir, const std::string& device);
// Registers the CUDA backend once (throws when this build has no CUDA or no device is visible).
void ensure_cuda_backend();

}  // namespace dsv::cli
