// Small training ops: embedding backward, per-row dots, axpby, sum of squares.
#include "backends/cpu/cpu_ops.h"
#include "core/error.h"

namespace dsv::ops::cpu {

void embed_backward(const EmbedBackwardParams& p) {
  // The table size is not part of the Params, so only negative ids can be caught here.
  for (int64_t t = 0; t < p.T; ++t)
    DSV_CHECK(p.ids[t] >= 0, "embed_backward: token {} has negative id {}", t, p.ids[t]);
  for (int64_t t = 0; t < p.T; ++t) {  // sequential, so repeated ids simply add up
    float* row = p.dtable + static_cast<int64_t>(p.ids[t]) * p.D;
    const float* d = p.dout + t * p.D;
    for (int64_t i = 0; i < p.D; ++i) row[i] += d[i];
  }
}

void row_dots(const RowDotsParams& p) {
  for (int64_t r = 0; r < p.n; ++r) {
    const float* a = p.a + static_cast<int64_t>(p.rows[r]) * p.D;
    const float* b = p.b + r * p.D;
    double acc = 0.0;
    for (int64_t d = 0; d < p.D; ++d) acc += static_cast<double>(a[d]) * b[d];
    p.out[r] = static_cast<float>(acc);
  }
}

void axpby(const AxpbyParams& p) {
  if (p.beta == 0.0f) {  // y is not read (it may hold garbage or NaN)
    for (int64_t i = 0; i < p.n; ++i) p.y[i] = p.alpha * p.x[i];
    return;
  }
  for (int64_t i = 0; i < p.n; ++i) p.y[i] = p.alpha * p.x[i] + p.beta * p.y[i];
}

void sum_squares(const SumSquaresParams& p) {
  double acc = 0.0;  // gradient norms over millions of values: fp32 would lose the small terms
  for (int64_t i = 0; i < p.n; ++i) acc += static_cast<double>(p.x[i]) * p.x[i];
  p.out[0] = static_cast<float>(p.accumulate ? p.out[0] + acc : acc);
}

}  // namespace dsv::ops::cpu
