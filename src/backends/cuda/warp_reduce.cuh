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

}  // namespace dsv::ops::cuda
