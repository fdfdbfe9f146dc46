// For the few helpers that CPU ops and their CUDA twins share (ops/counter_rng.h, core/dtype.h's
// bf16 conversions, ops/adamw_element.h): callable from host and device code.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define DSV_HOST_DEVICE __host__ __device__
#else
#define DSV_HOST_DEVICE
#endif

namespace dsv {

DSV_HOST_DEVICE inline uint32_t float_as_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  __builtin_memcpy(&bits, &f, 4);
  return bits;
#endif
}

DSV_HOST_DEVICE inline float bits_as_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
#endif
}

}  // namespace dsv
