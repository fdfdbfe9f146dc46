#include "io/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"

namespace dsv {
namespace fs = std::filesystem;
using json = nlohmann::json;

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {
// A header larger than this is not a safetensors file (the format caps it at 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(std::make_unique<MappedFile>(path)) {
  const size_t size = file_->size();
  DSV_CHECK(size >= 8, "{}: truncated safetensors file ({} bytes; expected at least the 8-byte header length)",
            path, size);
  uint64_t header_len = 0;
  std::memcpy(&header_len, file_->data(), 8);  // little-endian on every platform we build for
  DSV_CHECK(header_len <= kMaxHeaderBytes, "{}: header length {} is not plausible (limit {} bytes)", path,
            header_len, kMaxHeaderBytes);
  DSV_CHECK(header_len <= size - 8, "{}: truncated safetensors file: header needs {} bytes, file has {} after the length",
            path, header_len, size - 8);
  const char* header_begin = reinterpret_cast<const char*>(file_->data() + 8);
  json header;
  try {
    header = json::parse(header_begin, header_begin + header_len);
  } catch (const json::parse_error& e) {
    DSV_FAIL("{}: safetensors header is not valid JSON ({})", path, e.what());
  }
  DSV_CHECK(header.is_object(), "{}: safetensors header must be a JSON object", path);
  const uint8_t* data_block = file_->data() + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string& name = it.key();
    const json& e = it.value();
    DSV_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"),
              "{}: tensor \"{}\": expected an object with dtype, shape and data_offsets", path, name);
    TensorEntry t;
    t.name = name;
    DSV_CHECK(e["dtype"].is_string(), "{}: tensor \"{}\": dtype must be a string", path, name);
    const std::string dtype = e["dtype"].get<std::string>();
    DSV_CHECK(parse_dtype(dtype, &t.dtype),
              "{}: tensor \"{}\": unsupported dtype \"{}\" (expected F32, BF16, F16, F8_E4M3, I32 or I64)", path,
              name, dtype);
    DSV_CHECK(e["shape"].is_array(), "{}: tensor \"{}\": shape must be an array", path, name);
    uint64_t numel = 1;
    for (const auto& d : e["shape"]) {
      DSV_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0),
                "{}: tensor \"{}\": shape entries must be non-negative integers, found {}", path, name, d.dump());
      const uint64_t dim = d.get<uint64_t>();
      DSV_CHECK(dim == 0 || numel <= (UINT64_MAX >> 8) / dim, "{}: tensor \"{}\": shape overflows", path, name);
      numel *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const json& off = e["data_offsets"];
    DSV_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
              "{}: tensor \"{}\": data_offsets must be [begin, end] of non-negative integers", path, name);
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    DSV_CHECK(begin <= end && end <= data_size,
              "{}: tensor \"{}\": data_offsets [{}, {}] lie outside the data block of {} bytes (file truncated?)",
              path, name, begin, end, data_size);
    const uint64_t expected = numel * dtype_size(t.dtype);
    DSV_CHECK(end - begin == expected,
              "{}: tensor \"{}\": {} {} elements need {} bytes, data_offsets span {}", path, name, numel, dtype,
              expected, end - begin);
    t.data = data_block + begin;
    t.nbytes = end - begin;
    t.file = &file_->path();
    tensors_.emplace(name, std::move(t));
  }
}

Checkpoint::Checkpoint(const std::string& dir) : dir_(dir) {
  const fs::path root(dir);
  DSV_CHECK(fs::is_directory(root), "{}: not a directory (expected a checkpoint directory)", dir);
  std::vector<std::string> shard_names;
  const fs::path index_path = root / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    std::ifstream in(index_path);
    std::stringstream ss;
    ss << in.rdbuf();
    json index;
    try {
      index = json::parse(ss.str());
    } catch (const json::parse_error& e) {
      DSV_FAIL("{}: not valid JSON ({})", index_path.string(), e.what());
    }
    DSV_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
              "{}: expected an object with a \"weight_map\" object", index_path.string());
    std::set<std::string> unique;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      DSV_CHECK(it.value().is_string(), "{}: weight_map[\"{}\"] must be a file name", index_path.string(), it.key());
      unique.insert(it.value().get<std::string>());
    }
    shard_names.assign(unique.begin(), unique.end());
    for (const auto& s : shard_names)
      DSV_CHECK(fs::exists(root / s), "{}: shard \"{}\" named in the index is missing", index_path.string(), s);
  } else if (fs::exists(root / "model.safetensors")) {
    shard_names.push_back("model.safetensors");
  } else {
    for (const auto& entry : fs::directory_iterator(root))
      if (entry.path().extension() == ".safetensors") shard_names.push_back(entry.path().filename().string());
    std::sort(shard_names.begin(), shard_names.end());
  }
  DSV_CHECK(!shard_names.empty(), "{}: no safetensors files (expected model.safetensors or an index with shards)",
            dir);
  for (const auto& s : shard_names) {
    files_.push_back(std::make_unique<SafetensorsFile>((root / s).string()));
    for (const auto& [name, entry] : files_.back()->tensors()) {
      auto [pos, inserted] = index_.emplace(name, &entry);
      DSV_CHECK(inserted, "{}: tensor \"{}\" appears in both {} and {}", dir, name, *pos->second->file,
                files_.back()->path());
    }
  }
}

const TensorEntry* Checkpoint::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

const TensorEntry& Checkpoint::get(const std::string& name) const {
  const TensorEntry* e = find(name);
  DSV_CHECK(e != nullptr, "{}: tensor \"{}\" is missing from the checkpoint", dir_, name);
  return *e;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, _] : index_) out.push_back(name);
  return out;
}

}  // namespace dsv
