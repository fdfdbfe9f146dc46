#include "train/tensorboard.h"

#include <fmt/format.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace dsv::train {
namespace {

const std::array<uint32_t, 256>& crc32c_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  return table;
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Protocol buffer wire format: a key is (field << 3) | wire type; 0 varint, 1 fixed64, 2 bytes, 5 fixed32.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7Fu) | 0x80u));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_key(std::string& out, int field, int wire_type) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | static_cast<uint64_t>(wire_type));
}
static_assert(std::endian::native == std::endian::little, "put_le copies host bytes");
template <typename T>
void put_le(std::string& out, T v) {  // fixed-width little-endian (the host is little-endian; memcpy keeps it exact)
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  out.append(bytes, sizeof(T));
}
void put_bytes_field(std::string& out, int field, const std::string& bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}
void put_event_header(std::string& out, double wall_time, int64_t step) {
  put_key(out, 1, 1);  // Event.wall_time: double
  put_le(out, wall_time);
  put_key(out, 2, 0);  // Event.step: int64 (negative steps become ten-byte varints, as protobuf does)
  put_varint(out, static_cast<uint64_t>(step));
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  std::string name(buf);
  for (char& c : name)
    if (c == '/') c = '_';
  return name;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  const auto& table = crc32c_table();
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string event_file_version(double wall_time) {
  std::string e;
  put_key(e, 1, 1);
  put_le(e, wall_time);
  put_bytes_field(e, 3, "brain.Event:2");  // Event.file_version
  return e;
}

std::string event_scalars(double wall_time, int64_t step, const std::vector<std::pair<std::string, float>>& values) {
  std::string summary;
  for (const auto& [tag, value] : values) {
    std::string v;
    put_bytes_field(v, 1, tag);  // Summary.Value.tag
    put_key(v, 2, 5);            // Summary.Value.simple_value: float
    put_le(v, value);
    put_bytes_field(summary, 1, v);  // Summary.value (repeated)
  }
  std::string e;
  put_event_header(e, wall_time, step);
  put_bytes_field(e, 5, summary);  // Event.summary
  return e;
}

std::string tfrecord(const std::string& payload) {
  std::string r;
  put_le(r, static_cast<uint64_t>(payload.size()));
  put_le(r, masked_crc32c(r.data(), 8));
  r += payload;
  put_le(r, masked_crc32c(payload.data(), payload.size()));
  return r;
}

std::vector<std::pair<std::string, float>> step_scalars(const StepMetrics& m) {
  auto f = [](double v) { return static_cast<float>(v); };  // simple_value is a float; NaN stays NaN
  std::vector<std::pair<std::string, float>> s = {
      {"train/loss", f(m.loss)},
      {"train/mtp_loss", f(m.mtp_loss)},
      {"train/aux_loss", f(m.aux_loss)},
      {"train/grad_norm", f(m.grad_norm)},
      {"train/lr", f(m.lr)},
      {"train/tokens_per_second", f(m.tokens_per_second)},
      {"train/mfu", f(m.mfu)},
  };
  for (size_t l = 0; l < m.expert_imbalance.size(); ++l)
    s.emplace_back(fmt::format("train/expert_imbalance/layer_{}", l), f(m.expert_imbalance[l]));
  return s;
}

TensorBoardWriter::TensorBoardWriter(const std::string& log_dir) {
  std::error_code ec;
  std::filesystem::create_directories(log_dir, ec);
  DSV_CHECK(!ec && std::filesystem::is_directory(log_dir),
            "TensorBoard log directory {}: cannot create it ({})", log_dir,
            ec ? ec.message() : std::string("a file of that name is in the way"));
  const double now = unix_now();
  const std::string base = (std::filesystem::path(log_dir) /
                            fmt::format("events.out.tfevents.{}.{}", static_cast<int64_t>(now), host_name()))
                               .string();
  // "x": never append to or truncate another run's file started in the same second.
  for (int n = 0; !file_ && n < 1000; ++n) {
    path_ = n == 0 ? base : fmt::format("{}.{}", base, n);
    file_ = std::fopen(path_.c_str(), "wbx");
    DSV_CHECK(file_ || errno == EEXIST, "TensorBoard event file {}: cannot create ({})", path_, std::strerror(errno));
  }
  DSV_CHECK(file_, "TensorBoard event file {}: 1000 files of that name already exist", base);
  append(event_file_version(now));
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);
}

void TensorBoardWriter::append(const std::string& payload) {
  const std::string record = tfrecord(payload);
  DSV_CHECK(std::fwrite(record.data(), 1, record.size(), file_) == record.size(),
            "TensorBoard event file {}: write failed ({})", path_, std::strerror(errno));
}

void TensorBoardWriter::scalar(const std::string& tag, int64_t step, double value) {
  append(event_scalars(unix_now(), step, {{tag, static_cast<float>(value)}}));
}

void TensorBoardWriter::write(const StepMetrics& m) {
  append(event_scalars(unix_now(), m.step, step_scalars(m)));
  flush();
}

void TensorBoardWriter::write_validation(int64_t step, double loss) {
  append(event_scalars(unix_now(), step, {{"val/loss", static_cast<float>(loss)}}));
  flush();
}

void TensorBoardWriter::flush() {
  DSV_CHECK(std::fflush(file_) == 0, "TensorBoard event file {}: write failed ({})", path_, std::strerror(errno));
}

}  // namespace dsv::train
