// NumPy .npy files (format 1.0): float32 arrays out, float32/int arrays in (tests read fixtures).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv {

// Writes a C-order little-endian float32 array; written to "<path>.tmp" then renamed.
void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape);

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // converted to float32
};
NpyArray read_npy(const std::string& path);  // accepts <f4, <f8, <i4, <i8

// Writes `content` to path atomically (temporary file + fsync + rename).
void write_file_atomic(const std::string& path, const std::string& content);

}  // namespace dsv
