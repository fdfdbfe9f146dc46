// Writes a safetensors file (header + data), atomically: "<path>.tmp", fsync, rename.
#pragma once
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dsv {

struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // numel * dtype_size bytes
};

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::vector<std::pair<std::string, std::string>>& metadata = {});

}  // namespace dsv
