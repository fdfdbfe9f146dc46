// Writes a safetensors file (header + data), atomically: "<path>.tmp", fsync, rename.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
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

// Streams one safetensors file whose tensors are known up front (names, dtypes, shapes; `data` is
// ignored): the header is written at construction, then the data block arrives through append() in
// the tensors' order, so a multi-GB shard never has to sit in memory whole. finish() checks that
// exactly the announced bytes came, fsyncs and renames "<path>.tmp" to path; a writer destroyed
// unfinished (an exception on the way) removes its temporary file and leaves path untouched.
class SafetensorsStreamWriter {
 public:
  SafetensorsStreamWriter(std::string path, const std::vector<TensorToWrite>& tensors,
                          const std::vector<std::pair<std::string, std::string>>& metadata = {});
  ~SafetensorsStreamWriter();
  SafetensorsStreamWriter(const SafetensorsStreamWriter&) = delete;
  SafetensorsStreamWriter& operator=(const SafetensorsStreamWriter&) = delete;

  void append(const void* bytes, size_t n);  // the next n bytes of the data block
  void finish();
  uint64_t data_bytes() const { return data_bytes_; }  // size of the whole data block

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t data_bytes_ = 0, written_ = 0;
};

}  // namespace dsv
