#include "core/dtype.h"

#include <cmath>

#include "core/error.h"

namespace dsv {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::F8_E4M3: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  return 0;
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::F8_E4M3: return "F8_E4M3";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}

bool parse_dtype(std::string_view name, DType* out) {
  if (name == "F32") *out = DType::F32;
  else if (name == "BF16") *out = DType::BF16;
  else if (name == "F16") *out = DType::F16;
  else if (name == "F8_E4M3") *out = DType::F8_E4M3;
  else if (name == "I32") *out = DType::I32;
  else if (name == "I64") *out = DType::I64;
  else return false;
  return true;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1u, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  float magnitude;
  if (exponent == 0) magnitude = std::ldexp(static_cast<float>(mantissa), -24);          // subnormal
  else if (exponent == 31) magnitude = mantissa ? NAN : INFINITY;
  else magnitude = std::ldexp(static_cast<float>(mantissa | 0x400u), static_cast<int>(exponent) - 25);
  return sign ? -magnitude : magnitude;
}

float e4m3_to_f32(uint8_t v) {
  const uint32_t sign = v >> 7, exponent = (v >> 3) & 0xfu, mantissa = v & 0x7u;
  float magnitude;
  if (exponent == 0xf && mantissa == 0x7) magnitude = NAN;                                // only NaN code
  else if (exponent == 0) magnitude = std::ldexp(static_cast<float>(mantissa), -9);      // subnormal: m/8 * 2^-6
  else magnitude = std::ldexp(static_cast<float>(mantissa | 0x8u), static_cast<int>(exponent) - 10);  // bias 7
  return sign ? -magnitude : magnitude;
}

void convert_to_f32(DType from, const void* src, float* dst, size_t n) {
  switch (from) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::BF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::F8_E4M3: {
      const auto* s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = e4m3_to_f32(s[i]);
      return;
    }
    default: DSV_FAIL("cannot convert {} to F32", dtype_name(from));
  }
}

}  // namespace dsv
