// Tensor: a dense row-major fp32 view (the CPU compute type). It does not own memory: weights point
// into the mapped checkpoint or the model's arena, activations into a Workspace.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv {

struct Tensor {
  const float* data = nullptr;
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t dim(size_t i) const { return shape.at(i); }
  bool empty() const { return data == nullptr; }
};

std::string shape_string(const std::vector<int64_t>& shape);  // "[2, 3]"

}  // namespace dsv
