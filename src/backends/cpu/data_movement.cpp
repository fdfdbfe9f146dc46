// Data movement ops: embedding gather, residual add, strided copies, expert gather/scatter.
#include <algorithm>
#include <cstring>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "core/dtype.h"

namespace dsv::ops::cpu {

void embed(const EmbedParams& p) {
  for (int64_t t = 0; t < p.T; ++t) std::memcpy(p.out + t * p.D, p.table + p.ids[t] * p.D, p.D * sizeof(float));
}

void add(const AddParams& p) {
  for (int64_t i = 0; i < p.n; ++i) p.y[i] += p.x[i];
}

void copy2d(const Copy2dParams& p) {
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t r = 0; r < p.rows; ++r) {
      float* dst = p.dst + b * p.dst_batch_stride + r * p.dst_stride;
      if (p.src) std::memcpy(dst, p.src + b * p.src_batch_stride + r * p.src_stride, p.cols * sizeof(float));
      else std::fill(dst, dst + p.cols, 0.0f);
    }
}

void gather_rows(const RowsParams& p) {
  for (int64_t r = 0; r < p.n; ++r) {
    if (!p.scale) {
      std::memcpy(p.y + r * p.D, p.x + p.rows[r] * p.D, p.D * sizeof(float));
      continue;
    }
    for (int64_t d = 0; d < p.D; ++d) p.y[r * p.D + d] = p.scale[r] * p.x[p.rows[r] * p.D + d];
  }
}

void scatter_add_rows(const RowsParams& p) {
  for (int64_t r = 0; r < p.n; ++r) {
    float* y = p.y + p.rows[r] * p.D;
    const float* x = p.x + r * p.D;
    const float scale = p.scale ? p.scale[r] : 1.0f;
    for (int64_t d = 0; d < p.D; ++d) y[d] += scale * x[d];
  }
}

void store_rows(const StoreRowsParams& p) {
  const int64_t ys = p.y_stride ? p.y_stride : p.D;
  for (int64_t r = 0; r < p.n; ++r) {
    const float* x = p.x + r * p.D;
    if (p.y) std::memcpy(p.y + p.rows[r] * ys, x, p.D * sizeof(float));
    else
      for (int64_t d = 0; d < p.D; ++d) p.y_bf16[p.rows[r] * ys + d] = f32_to_bf16(x[d]);
  }
}

// rmsnorm, rope and store_rows in turn on a copy of each row (so the same bits by construction).
void store_latent_rows(const LatentRowsParams& p) {
  const int64_t width = p.C + p.R;
  std::vector<float> row(static_cast<size_t>(width));
  for (int64_t r = 0; r < p.n; ++r) {
    std::memcpy(row.data(), p.x + r * p.x_stride, static_cast<size_t>(width) * sizeof(float));
    rmsnorm({.x = row.data(), .weight = p.weight, .y = row.data(), .rows = 1, .dim = p.C, .eps = p.eps});
    rope({.x = row.data(), .cos = p.cos + r * (p.R / 2), .sin = p.sin + r * (p.R / 2), .tokens = 1, .heads = 1,
          .rope_dim = p.R, .token_stride = width, .head_stride = width, .offset = p.C, .layout = p.layout});
    const int32_t dest = p.rows ? p.rows[r] : static_cast<int32_t>(p.first + r);
    store_rows({.rows = &dest, .x = row.data(), .y = p.y, .y_bf16 = p.y_bf16, .n = 1, .D = width, .y_stride = p.y_stride});
  }
}

}  // namespace dsv::ops::cpu

#include "ops/counter_rng.h"

namespace dsv::ops::cpu {

void fill_random(const FillRandomParams& p) {
  for (int64_t i = 0; i < p.n; ++i) p.x[i] = p.mean + p.std * counter_normal(p.seed, static_cast<uint64_t>(i));
}

}  // namespace dsv::ops::cpu
