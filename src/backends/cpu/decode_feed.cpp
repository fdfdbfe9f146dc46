// The next batched decode step's inputs from this step's choices (ops::decode_feed): the spec of the
// CUDA kernel that lets graph replays follow each other without the host in between.
#include <cstring>

#include "backends/cpu/cpu_ops.h"

namespace dsv::ops::cpu {

void decode_feed(const DecodeFeedParams& p) {
  for (int64_t b = 0; b < p.rows; ++b) {
    const int32_t chosen = p.chosen[b];
    const int64_t position = p.kv_lengths[b];  // this step wrote row position - 1
    p.ids[b] = chosen;
    if (p.history && position >= 1 && position <= p.capacity) p.history[b * p.capacity + position - 1] = chosen;
    if (position < 0 || position >= p.capacity) continue;  // full: the host refuses the next step
    p.write_rows[b] = static_cast<int32_t>(b * p.capacity + position);
    p.kv_lengths[b] = static_cast<int32_t>(position + 1);
    std::memcpy(p.cos + b * p.half, p.cos_table + position * p.half, static_cast<size_t>(p.half) * sizeof(float));
    std::memcpy(p.sin + b * p.half, p.sin_table + position * p.half, static_cast<size_t>(p.half) * sizeof(float));
  }
}

}  // namespace dsv::ops::cpu
