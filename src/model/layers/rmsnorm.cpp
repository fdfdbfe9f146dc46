#include "model/layers/layers.h"
#include "ops/ops.h"

namespace dsv::layers {

void rmsnorm_rows(const ops::Context& ctx, const float* x, const Tensor& weight, int64_t rows, double eps, float* y,
                  int64_t y_stride) {
  ops::rmsnorm(ctx, {.x = x, .weight = weight.data, .y = y, .rows = rows, .dim = weight.dim(0),
                     .y_stride = y_stride, .eps = static_cast<float>(eps)});
}

void emit(const ops::Context& ctx, const TapFn& tap, std::string_view name, int64_t layer, const float* data,
          std::vector<int64_t> shape) {
  if (!tap) return;
  if (ctx.backend == ops::Backend::Cpu) return tap(name, layer, data, shape);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> host(static_cast<size_t>(n));
  ops::copy_to_host(ctx, host.data(), data, host.size() * sizeof(float));
  tap(name, layer, host.data(), shape);
}

}  // namespace dsv::layers
