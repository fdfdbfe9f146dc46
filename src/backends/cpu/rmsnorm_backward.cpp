// Backward of rmsnorm (y = weight * x * r, r = 1/sqrt(mean(x^2) + eps)), as specified in ops.h.
#include <cmath>
#include <vector>

#include "backends/cpu/cpu_ops.h"

namespace dsv::ops::cpu {

void rmsnorm_backward(const RmsNormBackwardParams& p) {
  const int64_t D = p.dim, xs = p.x_stride ? p.x_stride : D, dys = p.dy_stride ? p.dy_stride : D,
                dxs = p.dx_stride ? p.dx_stride : D;
  // dweight summed over rows in double, added once at the end (rows can be a whole batch).
  std::vector<double> dweight(p.dweight ? static_cast<size_t>(D) : 0, 0.0);
  for (int64_t row = 0; row < p.rows; ++row) {
    const float* x = p.x + row * xs;
    const float* dy = p.dy + row * dys;
    float* dx = p.dx + row * dxs;
    // r exactly as the forward computes it (double sum, fp32 mean).
    double sum_sq = 0.0;
    for (int64_t i = 0; i < D; ++i) sum_sq += static_cast<double>(x[i]) * x[i];
    const float r = 1.0f / std::sqrt(static_cast<float>(sum_sq / static_cast<double>(D)) + p.eps);
    double dot = 0.0;  // sum(weight * dy * x)
    for (int64_t i = 0; i < D; ++i) dot += static_cast<double>(p.weight[i]) * dy[i] * x[i];
    const float c = static_cast<float>(dot / static_cast<double>(D)) * r * r;
    // dx may alias dy: dy[i] is read before dx[i] is written.
    for (int64_t i = 0; i < D; ++i) {
      const float g = dy[i];
      if (p.dweight) dweight[i] += static_cast<double>(g) * x[i] * r;
      const float v = r * (p.weight[i] * g - x[i] * c);
      dx[i] = p.accumulate_dx ? dx[i] + v : v;
    }
  }
  if (p.dweight)
    for (int64_t i = 0; i < D; ++i) p.dweight[i] = static_cast<float>(p.dweight[i] + dweight[i]);
}

}  // namespace dsv::ops::cpu
