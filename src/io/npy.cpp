#include "io/npy.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "core/error.h"
#include "core/tensor.h"

namespace dsv {

void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DSV_CHECK(fd >= 0, "{}: cannot create ({})", tmp, std::strerror(errno));
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      std::remove(tmp.c_str());
      DSV_FAIL("{}: write failed ({}); nothing was replaced", path, std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    std::remove(tmp.c_str());
    DSV_FAIL("{}: could not flush to disk ({}); nothing was replaced", path, std::strerror(errno));
  }
  DSV_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "{}: cannot rename from {} ({})", path, tmp,
            std::strerror(errno));
}

void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  int64_t n = 1;
  for (int64_t d : shape) {
    dims += std::to_string(d) + ",";
    n *= d;
  }
  if (shape.size() > 1) dims.pop_back();  // (3,) for 1-D, (2,3) otherwise
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // Pad so that magic(6) + version(2) + len(2) + header + '\n' is a multiple of 64.
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  const uint16_t len = static_cast<uint16_t>(header.size());
  out += static_cast<char>(len & 0xff);
  out += static_cast<char>(len >> 8);
  out += header;
  out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n) * 4);
  write_file_atomic(path, out);
}

NpyArray read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DSV_CHECK(in.good(), "{}: cannot open", path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();
  DSV_CHECK(bytes.size() >= 10 && bytes.compare(0, 6, "\x93NUMPY") == 0, "{}: not a .npy file", path);
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else {
    DSV_CHECK(bytes.size() >= 12, "{}: truncated .npy header", path);
    uint32_t l;
    std::memcpy(&l, bytes.data() + 8, 4);
    header_len = l;
    offset = 12;
  }
  DSV_CHECK(offset + header_len <= bytes.size(), "{}: truncated .npy header", path);
  const std::string header = bytes.substr(offset, header_len);
  std::smatch m;
  DSV_CHECK(std::regex_search(header, m, std::regex(R"('descr':\s*'([<|]?)([fi])(\d)')")),
            "{}: unsupported dtype in header {}", path, header);
  const char kind = m[2].str()[0];
  const int width = std::stoi(m[3].str());
  DSV_CHECK(header.find("'fortran_order': False") != std::string::npos, "{}: Fortran order is not supported", path);
  std::smatch sm;
  DSV_CHECK(std::regex_search(header, sm, std::regex(R"('shape':\s*\(([^)]*)\))")), "{}: no shape in header", path);
  NpyArray a;
  std::stringstream dims(sm[1].str());
  std::string item;
  int64_t n = 1;
  while (std::getline(dims, item, ','))
    if (item.find_first_not_of(' ') != std::string::npos) {
      a.shape.push_back(std::stoll(item));
      n *= a.shape.back();
    }
  const char* p = bytes.data() + offset + header_len;
  DSV_CHECK(offset + header_len + static_cast<size_t>(n) * width <= bytes.size(), "{}: truncated data", path);
  a.data.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (kind == 'f' && width == 4) { float v; std::memcpy(&v, p + i * 4, 4); a.data[i] = v; }
    else if (kind == 'f' && width == 8) { double v; std::memcpy(&v, p + i * 8, 8); a.data[i] = static_cast<float>(v); }
    else if (kind == 'i' && width == 4) { int32_t v; std::memcpy(&v, p + i * 4, 4); a.data[i] = static_cast<float>(v); }
    else if (kind == 'i' && width == 8) { int64_t v; std::memcpy(&v, p + i * 8, 8); a.data[i] = static_cast<float>(v); }
    else DSV_FAIL("{}: unsupported dtype {}{}", path, kind, width);
  }
  return a;
}

}  // namespace dsv
