// Element types the engine reads and stores, with exact conversions to fp32 (the CPU compute type).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "core/host_device.h"

namespace dsv {

enum class DType : uint8_t { F32, BF16, F16, F8_E4M3, I32, I64 };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // safetensors spelling: "F32", "BF16", ...
// Parses the safetensors spelling; returns false for a dtype the engine does not read.
bool parse_dtype(std::string_view name, DType* out);

// The bf16 conversions are also device code (core/host_device.h): the CUDA twins of CPU ops use them.
DSV_HOST_DEVICE inline float bf16_to_f32(uint16_t h) { return bits_as_float(static_cast<uint32_t>(h) << 16); }

// Round to nearest even, NaN stays NaN (as torch's .to(bfloat16)).
DSV_HOST_DEVICE inline uint16_t f32_to_bf16(float f) {
  const uint32_t bits = float_as_bits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

// The fp32 value of f rounded to bf16 (what a bf16 product input holds).
DSV_HOST_DEVICE inline float round_to_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

float f16_to_f32(uint16_t h);
// OCP FP8 E4M3 (fn variant: no infinities, 0x7f/0xff are NaN), as torch.float8_e4m3fn.
float e4m3_to_f32(uint8_t v);

// Converts n elements of type `from` at src to fp32 at dst.
void convert_to_f32(DType from, const void* src, float* dst, size_t n);

}  // namespace dsv
