// Tensor: a dense row-major view of fp32 values (the CPU compute type) or, for weights a model keeps
// in bf16 (store_weights_bf16), of bf16 bit patterns. It does not own memory: weights point into the
// mapped checkpoint, the model's arena or its device storage.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv {

struct Tensor {
  const float* data = nullptr;
  const uint16_t* bf16 = nullptr;  // set instead of data when the weight is stored in bf16
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t dim(size_t i) const { return shape.at(i); }
  bool empty() const { return data == nullptr && bf16 == nullptr; }
  // The storage that is set, `offset` elements in (the other one stays null): for op parameters.
  const float* f32_at(int64_t offset = 0) const { return data ? data + offset : nullptr; }
  const uint16_t* bf16_at(int64_t offset = 0) const { return bf16 ? bf16 + offset : nullptr; }
};

std::string shape_string(const std::vector<int64_t>& shape);  // "[2, 3]"

}  // namespace dsv
