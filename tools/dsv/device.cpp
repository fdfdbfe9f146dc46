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

std::unique_ptr<Model> load_model_on(const std::string& dir, const std::string& device) {
  DSV_CHECK(device == "cpu" || device == "cuda", "--device {}: expected \"cpu\" or \"cuda\"", device);
  if (device == "cuda") ensure_cuda_backend();  // fail before the (long) load
  auto model = load_model(dir);
  if (device == "cpu") return model;
  return to_backend(*model, ops::Backend::Cuda);
}

}  // namespace dsv::cli
