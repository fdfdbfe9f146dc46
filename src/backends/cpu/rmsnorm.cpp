#include <cmath>

#include "backends/cpu/cpu_ops.h"

namespace dsv::ops::cpu {

void rmsnorm(const RmsNormParams& p) {
  const int64_t xs = p.x_stride ? p.x_stride : p.dim, ys = p.y_stride ? p.y_stride : p.dim;
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * xs;
    float* y = p.y + r * ys;
    // fp32 mean of squares as torch does (pairwise/vectorized there; double here keeps us within 1 ulp).
    double sum = 0.0;
    for (int64_t i = 0; i < p.dim; ++i) sum += static_cast<double>(x[i]) * x[i];
    const float mean = static_cast<float>(sum / static_cast<double>(p.dim));
    const float inv = 1.0f / std::sqrt(mean + p.eps);
    for (int64_t i = 0; i < p.dim; ++i) y[i] = p.weight[i] * (x[i] * inv);
  }
}

// Exactly add, then rmsnorm, row by row (a row is read again only after it is complete).
void add_rmsnorm(const AddRmsNormParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    float* x = p.x + r * p.dim;
    const float* d = p.delta + r * p.dim;
    for (int64_t i = 0; i < p.dim; ++i) x[i] += d[i];
    rmsnorm({.x = x, .weight = p.weight, .y = p.y + r * p.dim, .rows = 1, .dim = p.dim, .eps = p.eps});
  }
}

}  // namespace dsv::ops::cpu
