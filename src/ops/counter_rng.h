// A counter-based normal generator usable from host and device code (no state, no headers beyond
// <cstdint>/<cmath>): splitmix64 of (seed, index) -> two uniforms -> Box-Muller. Identical results
// on every backend, so random-weight benchmarks and tests are reproducible.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DSV_HOST_DEVICE __host__ __device__
#else
#define DSV_HOST_DEVICE
#endif

namespace dsv::ops {

DSV_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

DSV_HOST_DEVICE inline float counter_normal(uint64_t seed, uint64_t index) {
  const uint64_t bits = splitmix64(seed * 0xd1342543de82ef95ull + index);
  // Two 24-bit uniforms in (0, 1].
  const float u1 = (static_cast<float>(bits >> 40) + 1.0f) * (1.0f / 16777216.0f);
  const float u2 = static_cast<float>((bits >> 16) & 0xffffffu) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307f * u2);
}

}  // namespace dsv::ops
