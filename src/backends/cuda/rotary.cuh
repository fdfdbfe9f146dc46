// One rotary pair turned by its angle, shared by rope.cu and latent_rows.cu so the two give the same
// bits. Each product and the difference rounded on their own (no fused multiply-add): the CPU's
// arithmetic exactly (cpu::rope, built without FMA contraction).
#pragma once
#include <cuda_runtime.h>

namespace dsv::ops::cuda {

__device__ __forceinline__ void rotate_pair(float x0, float x1, float c, float s, float& y0, float& y1) {
  y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
  y1 = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
}

}  // namespace dsv::ops::cuda
