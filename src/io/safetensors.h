// safetensors reading: one mapped file, or a directory of shards with model.safetensors.index.json.
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
// then the data block; offsets are relative to the data block.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/mapped_file.h"

namespace dsv {

struct TensorEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the mapped file
  size_t nbytes = 0;
  const std::string* file = nullptr;  // path of the file holding it (for error messages)

  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps and validates the whole header: every entry's dtype, shape and offsets.
  explicit SafetensorsFile(const std::string& path);
  const std::map<std::string, TensorEntry>& tensors() const { return tensors_; }
  const std::string& path() const { return file_->path(); }

 private:
  std::unique_ptr<MappedFile> file_;
  std::map<std::string, TensorEntry> tensors_;
};

// All tensors of a checkpoint directory (single file or sharded).
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir);
  const TensorEntry* find(const std::string& name) const;
  const TensorEntry& get(const std::string& name) const;  // throws naming the tensor when absent
  std::vector<std::string> names() const;
  const std::string& dir() const { return dir_; }
  size_t file_count() const { return files_.size(); }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorEntry*> index_;
};

}  // namespace dsv
