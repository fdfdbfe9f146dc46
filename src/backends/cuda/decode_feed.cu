// The next batched decode step's inputs from this step's choices (twin of backends/cpu/decode_feed.cpp):
// the last kernel of a decode graph, so the next replay can start without the host in between.
#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 32;

// One block per sequence: every thread reads the position before thread 0 moves it on.
__global__ void decode_feed_kernel(DecodeFeedParams p) {
  dependent_start();
  const int64_t b = blockIdx.x;
  const int32_t chosen = p.chosen[b];
  const int64_t position = p.kv_lengths[b];  // this step wrote row position - 1
  __syncthreads();
  if (threadIdx.x == 0) {
    p.ids[b] = chosen;
    if (p.history && position >= 1 && position <= p.capacity) p.history[b * p.capacity + position - 1] = chosen;
  }
  if (position < 0 || position >= p.capacity) return;  // full: the host refuses the next step
  for (int64_t i = threadIdx.x; i < p.half; i += kThreads) {
    p.cos[b * p.half + i] = p.cos_table[position * p.half + i];
    p.sin[b * p.half + i] = p.sin_table[position * p.half + i];
  }
  if (threadIdx.x == 0) {
    p.write_rows[b] = static_cast<int32_t>(b * p.capacity + position);
    p.kv_lengths[b] = static_cast<int32_t>(position + 1);
  }
}

}  // namespace

cudaError_t decode_feed(const DecodeFeedParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  if (p.rows > 0x7fffffff) return cudaErrorInvalidValue;
  return launch_dependent(decode_feed_kernel, static_cast<unsigned>(p.rows), kThreads, 0, stream, p);
}

}  // namespace dsv::ops::cuda
