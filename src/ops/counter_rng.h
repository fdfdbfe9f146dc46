// A counter-based normal generator usable from host and device code (no state, no headers beyond
// <cstdint>/<cmath> and core/host_device.h): splitmix64 of (seed, index) -> two uniforms -> Box-Muller. Identical results
// on every backend, so random-weight benchmarks and tests are reproducible.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/host_device.h"

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

// Stochastic rounding of x to bf16: the 16 bits dropped by truncation are compared against `noise16`
// (16 uniform random bits) by adding them, so x rounds away from zero with probability equal to its
// distance from the truncated value, in units of the bf16 step: unbiased, E[round(x)] = x. NaN and
// infinities are kept; a finite x never becomes infinite.
DSV_HOST_DEVICE inline uint16_t stochastic_round_bf16(float x, uint32_t noise16) {
  const uint32_t bits = float_as_bits(x);
  if ((bits & 0x7f800000u) == 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | ((bits & 0x7fffffu) ? 0x40u : 0u));
  const uint32_t rounded = (bits + (noise16 & 0xffffu)) >> 16;
  return static_cast<uint16_t>((rounded & 0x7f80u) == 0x7f80u ? bits >> 16 : rounded);
}

// The 32 noise bits AdamW's bf16 moments use for element `index` at `step` (low half for m, high for v).
DSV_HOST_DEVICE inline uint32_t moment_noise(int64_t step, int64_t index) {
  return static_cast<uint32_t>(
      splitmix64(static_cast<uint64_t>(step) * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(index)) >> 32);
}

}  // namespace dsv::ops
