#include "io/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "io/npy.h"

namespace dsv {
namespace {

uint64_t tensor_bytes(const TensorToWrite& t) {
  uint64_t n = 1;
  for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
  return n * dtype_size(t.dtype);
}

// The 8-byte length plus the JSON header, padded so the data block starts 8-byte aligned
// (zero-copy fp32 views when read back). Sets *data_bytes to the size of the data block.
std::string encode_header(const std::vector<TensorToWrite>& tensors,
                          const std::vector<std::pair<std::string, std::string>>& metadata, uint64_t* data_bytes) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    const uint64_t bytes = tensor_bytes(t);
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t len = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  out += h;
  *data_bytes = offset;
  return out;
}

void write_all(int fd, const void* bytes, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(bytes);
  while (n > 0) {
    const ssize_t k = ::write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    DSV_CHECK(k > 0, "{}: write failed ({})", path, std::strerror(errno));
    p += k;
    n -= static_cast<size_t>(k);
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::vector<std::pair<std::string, std::string>>& metadata) {
  uint64_t data_bytes = 0;
  std::string out = encode_header(tensors, metadata, &data_bytes);
  out.reserve(out.size() + data_bytes);
  for (const auto& t : tensors) out.append(static_cast<const char*>(t.data), tensor_bytes(t));
  write_file_atomic(path, out);
}

SafetensorsStreamWriter::SafetensorsStreamWriter(std::string path, const std::vector<TensorToWrite>& tensors,
                                                 const std::vector<std::pair<std::string, std::string>>& metadata)
    : path_(std::move(path)), tmp_(path_ + ".tmp") {
  const std::string header = encode_header(tensors, metadata, &data_bytes_);
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DSV_CHECK(fd_ >= 0, "{}: cannot create ({})", tmp_, std::strerror(errno));
  write_all(fd_, header.data(), header.size(), tmp_);
}

SafetensorsStreamWriter::~SafetensorsStreamWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    std::remove(tmp_.c_str());
  }
}

void SafetensorsStreamWriter::append(const void* bytes, size_t n) {
  DSV_CHECK(fd_ >= 0, "{}: append after finish", path_);
  DSV_CHECK(written_ + n <= data_bytes_, "{}: {} more bytes would exceed the {}-byte data block the header announces",
            path_, n, data_bytes_);
  write_all(fd_, bytes, n, tmp_);
  written_ += n;
}

void SafetensorsStreamWriter::finish() {
  DSV_CHECK(fd_ >= 0, "{}: finished twice", path_);
  DSV_CHECK(written_ == data_bytes_, "{}: {} of the {} data bytes the header announces were written", path_, written_,
            data_bytes_);
  const bool synced = ::fsync(fd_) == 0;
  const int err = errno;
  const bool closed = ::close(fd_) == 0;
  fd_ = -1;
  if (!synced || !closed) {
    std::remove(tmp_.c_str());
    DSV_FAIL("{}: could not flush to disk ({}); nothing was replaced", path_, std::strerror(synced ? errno : err));
  }
  DSV_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, "{}: cannot rename from {} ({})", path_, tmp_,
            std::strerror(errno));
}

}  // namespace dsv
