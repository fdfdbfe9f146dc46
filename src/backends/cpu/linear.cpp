#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "core/dtype.h"

#ifdef DSV_HAVE_BLAS
#include <cblas.h>
#endif

namespace dsv::ops::cpu {

namespace {
void linear_one(const LinearParams& p);
void linear_bf16_one(const LinearParams& p);
}  // namespace

void linear(const LinearParams& p) {
  if (p.batch == 1) return p.w_bf16 ? linear_bf16_one(p) : linear_one(p);
  for (int64_t b = 0; b < p.batch; ++b) {
    LinearParams one = p;
    one.batch = 1;
    one.x = p.x + b * p.x_batch_stride;
    if (p.w) one.w = p.w + b * p.w_batch_stride;
    if (p.w_bf16) one.w_bf16 = p.w_bf16 + b * p.w_batch_stride;
    one.y = p.y + b * p.y_batch_stride;
    if (p.bias) one.bias = p.bias + b * p.bias_batch_stride;
    p.w_bf16 ? linear_bf16_one(one) : linear_one(one);
  }
}

namespace {
// bf16 weights: the fp32 product of bf16(x) and the widened weights (both exact in fp32).
void linear_bf16_one(const LinearParams& p) {
  if (p.M == 0 || p.N == 0) return;
  const int64_t xs = p.x_stride ? p.x_stride : p.K;
  std::vector<float> x(static_cast<size_t>(p.M * p.K)), w(static_cast<size_t>(p.N * p.K));
  for (int64_t m = 0; m < p.M; ++m)
    for (int64_t k = 0; k < p.K; ++k) x[m * p.K + k] = round_to_bf16(p.x[m * xs + k]);
  for (size_t i = 0; i < w.size(); ++i) w[i] = bf16_to_f32(p.w_bf16[i]);
  LinearParams f = p;
  f.x = x.data();
  f.x_stride = 0;
  f.w = w.data();
  f.w_bf16 = nullptr;
  linear_one(f);
}

void linear_one(const LinearParams& p) {
  const int64_t xs = p.x_stride ? p.x_stride : p.K, ys = p.y_stride ? p.y_stride : p.N;
  if (p.M == 0 || p.N == 0) return;
#ifdef DSV_HAVE_BLAS
  if (p.K > 0) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, p.w_transposed ? CblasNoTrans : CblasTrans, static_cast<int>(p.M),
                static_cast<int>(p.N), static_cast<int>(p.K), 1.0f, p.x, static_cast<int>(xs), p.w,
                static_cast<int>(p.w_transposed ? p.N : p.K),
                p.accumulate ? 1.0f : 0.0f, p.y, static_cast<int>(ys));
  } else if (!p.accumulate) {
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t n = 0; n < p.N; ++n) p.y[m * ys + n] = 0.0f;
  }
#else
  // Portable path: plain dot products.
  const int64_t w_row = p.w_transposed ? 1 : p.K, w_col = p.w_transposed ? p.N : 1;
  for (int64_t m = 0; m < p.M; ++m) {
    const float* x = p.x + m * xs;
    float* y = p.y + m * ys;
    for (int64_t n = 0; n < p.N; ++n) {
      float acc = 0.0f;
      for (int64_t k = 0; k < p.K; ++k) acc += x[k] * p.w[n * w_row + k * w_col];
      y[n] = p.accumulate ? y[n] + acc : acc;
    }
  }
#endif
  if (p.bias)
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t n = 0; n < p.N; ++n) p.y[m * ys + n] += p.bias[n];
}
}  // namespace

}  // namespace dsv::ops::cpu
