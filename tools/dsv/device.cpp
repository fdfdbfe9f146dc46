#include "device.h"

#include "core/error.h"
#ifdef DSV_HAVE_CUDA
#include "backends/cuda/cuda_ops.h"
#endif

namespace dsv::cli {

std::unique_ptr<Model> load_model_on(const std::string& dir, const std::string& device) {
  DSV_CHECK(device == "cpu" || device == "cuda", "--device {}: expected \"cpu\" or \"cuda\"", device);
  auto model = load_model(dir);
  if (device == "cpu") return model;
#ifdef DSV_HAVE_CUDA
  static bool registered = false;
  if (!registered) {
    ops::cuda::register_cuda_backend();
    registered = true;
  }
  return to_backend(*model, ops::Backend::Cuda);
#else
  DSV_FAIL("--device cuda: this dsv was built without CUDA (configure with `cmake --preset cuda`)");
#endif
}

}  // namespace dsv::cli
