#include "model/layers/layers.h"
#include "ops/ops.h"

namespace dsv::layers {

void rmsnorm_rows(const float* x, const Tensor& weight, int64_t rows, double eps, float* y) {
  ops::rmsnorm({}, {.x = x, .weight = weight.data, .y = y, .rows = rows, .dim = weight.dim(0),
                    .eps = static_cast<float>(eps)});
}

}  // namespace dsv::layers
