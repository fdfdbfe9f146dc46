// Greedy choice per row (ops::argmax_rows): the largest value, lowest index on ties, NaNs skipped.
#include <cmath>

#include "backends/cpu/cpu_ops.h"

namespace dsv::ops::cpu {

void argmax_rows(const ArgmaxParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * p.n;
    int64_t best = -1;
    for (int64_t i = 0; i < p.n; ++i)
      if (!std::isnan(x[i]) && (best < 0 || x[i] > x[best])) best = i;
    p.out[r] = static_cast<int32_t>(best < 0 ? 0 : best);
  }
}

}  // namespace dsv::ops::cpu
