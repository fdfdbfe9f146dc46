#include "device.h"

#include "core/error.h"
#ifdef DSV_HAVE_CUDA
#include "backends/cuda/cuda_ops.h"
#endif

namespace dsv::cli {

void ensure_cuda_backend() {
#ifdef DSV_HAVE_CUDA
  static bool registered = false;
  if (!registered) {
    ops::cuda::register_cuda_backend();
    registered = true;
  }
#else
  DSV_FAIL("--device cuda: this dsv was built without CUDA (configure with `cmake --preset cuda`)");
#endif
}

bool bf16_weights_option(const std::string& weights) {
  DSV_CHECK(weights == "fp32" || weights == "bf16", "--weights {}: expected bf16 or fp32", weights);
  return weights == "bf16";
}

std::unique_ptr<Model> load_model_on(const std::string& dir, const std::string& device, const std::string& weights) {
  DSV_CHECK(device == "cpu" || device == "cuda", "--device {}: expected \"cpu\" or \"cuda\"", device);
  const bool bf16 = bf16_weights_option(weights);
  if (device == "cuda") ensure_cuda_backend();  // fail before the (long) load
  auto model = load_model(dir);
  if (device == "cpu") {
    if (bf16) store_weights_bf16(*model);
    return model;
  }
  return to_backend(*model, ops::Backend::Cuda, bf16);
}

}  // namespace dsv::cli
