// Butterfly reductions over the 32 lanes of a warp: every lane ends with the result. Shared by the
// attention kernels, the GEMVs and the expert kernels, so their sums have one order.
#pragma once
#include <cuda_runtime.h>

namespace dsv::ops::cuda {

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The sum of `v` over a block of kThreads threads (a multiple of 32, at most 1024): each warp's
// butterfly, then warp 0 adds the warps' sums in warp order. Every thread gets the result. `scratch`
// holds kThreads / 32 + 1 floats of shared memory; the call contains the block's barriers, so all
// threads must reach it. One order for RMSNorm's sum of squares wherever it is computed.
template <int kThreads>
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps");
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kThreads / 32 ? scratch[threadIdx.x] : 0.0f;
    v = warp_sum(v);
    if (threadIdx.x == 0) scratch[kThreads / 32] = v;
  }
  __syncthreads();
  return scratch[kThreads / 32];
}

}  // namespace dsv::ops::cuda
