// Weight/bias gradient of linear: dw[N, K] (+)= dy[M, N]^T . x[M, K]; dbias[N] (+)= sum_m dy[m, :].
// The hot path of CPU training, so one sgemm when OpenBLAS is there.
#include <algorithm>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "core/dtype.h"

#ifdef DSV_HAVE_BLAS
#include <cblas.h>
#endif

namespace dsv::ops::cpu {

void linear_weight_grad(const LinearWeightGradParams& p) {
  const int64_t dys = p.dy_stride ? p.dy_stride : p.N, xs = p.x_stride ? p.x_stride : p.K;
  if (p.N > 0 && p.K > 0) {
    if (p.M == 0) {  // empty sum (BLAS is not called with an inner dimension of 0)
      if (!p.accumulate) std::fill(p.dw, p.dw + p.N * p.K, 0.0f);
    } else {
#ifdef DSV_HAVE_BLAS
      // Row-major: op(A) = dy^T [N, M] (dy stored [M, N], lda = dys), B = x [M, K] (ldb = xs).
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(p.N), static_cast<int>(p.K),
                  static_cast<int>(p.M), 1.0f, p.dy, static_cast<int>(dys), p.x, static_cast<int>(xs),
                  p.accumulate ? 1.0f : 0.0f, p.dw, static_cast<int>(p.K));
#else
      // Portable path: rank-1 updates dw[n, :] += dy[m, n] * x[m, :], over blocks of rows of x so
      // that a block stays in cache while every row of dw visits it.
      if (!p.accumulate) std::fill(p.dw, p.dw + p.N * p.K, 0.0f);
      constexpr int64_t kBlock = 32;
      for (int64_t m0 = 0; m0 < p.M; m0 += kBlock) {
        const int64_t m1 = std::min(p.M, m0 + kBlock);
        for (int64_t n = 0; n < p.N; ++n) {
          float* w = p.dw + n * p.K;
          for (int64_t m = m0; m < m1; ++m) {
            const float a = p.dy[m * dys + n];
            const float* x = p.x + m * xs;
            for (int64_t k = 0; k < p.K; ++k) w[k] += a * x[k];
          }
        }
      }
#endif
    }
  }
  if (p.dbias && p.N > 0) {
    std::vector<double> acc(static_cast<size_t>(p.N), 0.0);  // column sums over up to M rows
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t n = 0; n < p.N; ++n) acc[n] += p.dy[m * dys + n];
    for (int64_t n = 0; n < p.N; ++n)
      p.dbias[n] = static_cast<float>(p.accumulate ? p.dbias[n] + acc[n] : acc[n]);
  }
}

void linear_backward(const LinearBackwardParams& p) {
  if (p.dy_bf16) {  // the bf16 gradient widened (exactly) to a dense fp32 one
    std::vector<float> dy(static_cast<size_t>(p.M * p.N));
    const int64_t dys = p.dy_stride ? p.dy_stride : p.N;
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t n = 0; n < p.N; ++n) dy[m * p.N + n] = bf16_to_f32(p.dy_bf16[m * dys + n]);
    LinearBackwardParams q = p;
    q.dy = dy.data();
    q.dy_bf16 = nullptr;
    q.dy_stride = 0;
    return linear_backward(q);
  }
  linear_weight_grad({.dy = p.dy, .x = p.x, .dw = p.dw, .dbias = p.dbias, .M = p.M, .N = p.N, .K = p.K,
                      .dy_stride = p.dy_stride, .x_stride = p.x_stride, .accumulate = p.accumulate_dw});
  if (p.dx)
    linear({.x = p.dy, .w = p.w, .y = p.dx, .M = p.M, .N = p.K, .K = p.N, .x_stride = p.dy_stride,
            .y_stride = p.dx_stride, .accumulate = p.accumulate_dx, .w_transposed = true});
}

}  // namespace dsv::ops::cpu
