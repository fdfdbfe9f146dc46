#include "data/indexed_dataset.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace dsv::data {

static_assert(std::endian::native == std::endian::little, "indexed datasets are little-endian, read in place");

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr size_t kHeaderBytes = 34;  // magic 9 + version 8 + dtype 1 + S 8 + K 8

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

bool known_dtype(uint8_t code) { return code >= 1 && code <= 8; }
bool integer_dtype(TokenDtype d) { return d != TokenDtype::Float32 && d != TokenDtype::Float64; }

// The largest id a dtype can hold as a token (ids are non-negative).
int64_t dtype_max_id(TokenDtype d) {
  switch (d) {
    case TokenDtype::UInt8: return 255;
    case TokenDtype::Int8: return 127;
    case TokenDtype::Int16: return 32767;
    case TokenDtype::UInt16: return 65535;
    case TokenDtype::Int32:
    case TokenDtype::Int64: return std::numeric_limits<int32_t>::max();  // we hand ids out as int32
    default: return -1;
  }
}

// Converts n elements of dtype d at src to int32 (the caller guarantees they fit).
void convert(TokenDtype d, const uint8_t* src, int64_t n, int32_t* out) {
  const auto un = static_cast<size_t>(n);
  switch (d) {
    case TokenDtype::UInt8: for (size_t i = 0; i < un; ++i) out[i] = src[i]; break;
    case TokenDtype::Int8: for (size_t i = 0; i < un; ++i) out[i] = static_cast<int8_t>(src[i]); break;
    case TokenDtype::Int16: for (size_t i = 0; i < un; ++i) out[i] = load<int16_t>(src + 2 * i); break;
    case TokenDtype::UInt16: for (size_t i = 0; i < un; ++i) out[i] = load<uint16_t>(src + 2 * i); break;
    case TokenDtype::Int32:
      if (un) std::memcpy(out, src, un * 4);  // an empty document may come with null pointers
      break;
    case TokenDtype::Int64:
      for (size_t i = 0; i < un; ++i) out[i] = static_cast<int32_t>(load<int64_t>(src + 8 * i));
      break;
    default: DSV_FAIL("internal: convert() on a float dtype");
  }
}

// Token value of element i (for the one-time vocabulary scan).
int64_t element(TokenDtype d, const uint8_t* base, int64_t i) {
  const auto u = static_cast<size_t>(i);
  switch (d) {
    case TokenDtype::UInt8: return base[u];
    case TokenDtype::Int8: return static_cast<int8_t>(base[u]);
    case TokenDtype::Int16: return load<int16_t>(base + 2 * u);
    case TokenDtype::UInt16: return load<uint16_t>(base + 2 * u);
    case TokenDtype::Int32: return load<int32_t>(base + 4 * u);
    case TokenDtype::Int64: return load<int64_t>(base + 8 * u);
    default: return -1;
  }
}

void write_all(int fd, const void* data, size_t bytes, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    DSV_CHECK(n > 0, "{}: write failed ({})", path, std::strerror(errno));
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void fsync_close(int fd, const std::string& path) {
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    DSV_FAIL("{}: could not flush to disk ({})", path, std::strerror(err));
  }
  DSV_CHECK(::close(fd) == 0, "{}: could not close ({})", path, std::strerror(errno));
}

int create_tmp(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DSV_CHECK(fd >= 0, "{}: cannot create ({})", path, std::strerror(errno));
  return fd;
}

void rename_into_place(const std::string& from, const std::string& to) {
  DSV_CHECK(std::rename(from.c_str(), to.c_str()) == 0, "{}: cannot rename from {} ({})", to, from,
            std::strerror(errno));
}

}  // namespace

size_t dtype_size(TokenDtype dtype) {
  switch (dtype) {
    case TokenDtype::UInt8:
    case TokenDtype::Int8: return 1;
    case TokenDtype::Int16:
    case TokenDtype::UInt16: return 2;
    case TokenDtype::Int32:
    case TokenDtype::Float32: return 4;
    case TokenDtype::Int64:
    case TokenDtype::Float64: return 8;
  }
  DSV_FAIL("unknown indexed-dataset dtype code {}", static_cast<int>(dtype));
}

const char* dtype_name(TokenDtype dtype) {
  switch (dtype) {
    case TokenDtype::UInt8: return "uint8";
    case TokenDtype::Int8: return "int8";
    case TokenDtype::Int16: return "int16";
    case TokenDtype::Int32: return "int32";
    case TokenDtype::Int64: return "int64";
    case TokenDtype::Float64: return "float64";
    case TokenDtype::Float32: return "float32";
    case TokenDtype::UInt16: return "uint16";
  }
  return "unknown";
}

TokenDtype optimal_token_dtype(int64_t vocab_size) {
  return vocab_size < 65500 ? TokenDtype::UInt16 : TokenDtype::Int32;
}

// ---------------------------------------------------------------------------------------------
// Reader

IndexedDataset::IndexedDataset(const std::string& prefix, int64_t vocab_size)
    : prefix_(prefix), idx_(prefix + ".idx"), bin_(prefix + ".bin") {
  const std::string& ip = idx_.path();
  const std::string& bp = bin_.path();
  const uint8_t* d = idx_.data();
  const size_t size = idx_.size();
  DSV_CHECK(size >= kHeaderBytes, "{}: truncated index: {} bytes, the header alone is {}", ip, size, kHeaderBytes);
  DSV_CHECK(std::memcmp(d, kMagic, sizeof kMagic) == 0,
            "{}: bad magic: expected \"MMIDIDX\\0\\0\" (a Megatron indexed dataset index), found other bytes", ip);
  const auto version = load<uint64_t>(d + 9);
  DSV_CHECK(version == 1, "{}: unsupported index version {} (expected 1)", ip, version);
  const uint8_t code = d[17];
  DSV_CHECK(known_dtype(code), "{}: unknown dtype code {} (expected 1..8: Megatron's DType)", ip, code);
  dtype_ = static_cast<TokenDtype>(code);
  DSV_CHECK(integer_dtype(dtype_), "{}: dtype {} holds no token ids (expected an integer dtype)", ip,
            dtype_name(dtype_));
  item_ = dtype_size(dtype_);
  const auto S = load<uint64_t>(d + 18);
  const auto K = load<uint64_t>(d + 26);
  // Bounds first, so the size arithmetic below cannot overflow.
  const size_t body = size - kHeaderBytes;
  DSV_CHECK(S <= body / 12 && K <= body / 8,
            "{}: truncated index: header says {} sequences and {} document indices, file has {} bytes", ip, S, K,
            size);
  const size_t expected = kHeaderBytes + 12 * S + 8 * K;
  DSV_CHECK(size >= expected,
            "{}: truncated index: {} sequences and {} document indices need {} bytes, file has {}", ip, S, K,
            expected, size);
  DSV_CHECK(size == expected || size == expected + S,
            "{}: {} bytes, expected {} ({} sequences, {} document indices) or {} with multimodal sequence modes", ip,
            size, expected, S, K, expected + S);
  DSV_CHECK(K >= 1, "{}: no document indices (expected at least the leading 0)", ip);
  num_sequences_ = static_cast<int64_t>(S);
  num_documents_ = static_cast<int64_t>(K) - 1;
  lengths_ = d + kHeaderBytes;
  pointers_ = lengths_ + 4 * S;
  doc_idx_ = pointers_ + 8 * S;

  // Sequences: lengths >= 0, pointers contiguous from 0 (as Megatron writes them) and inside .bin.
  const auto bin_size = static_cast<int64_t>(bin_.size());
  int64_t expected_ptr = 0;
  for (int64_t i = 0; i < num_sequences_; ++i) {
    const int32_t len = load<int32_t>(lengths_ + 4 * i);
    const int64_t ptr = load<int64_t>(pointers_ + 8 * i);
    DSV_CHECK(len >= 0, "{}: sequence {} has negative length {}", ip, i, len);
    const int64_t bytes = static_cast<int64_t>(len) * static_cast<int64_t>(item_);
    DSV_CHECK(ptr >= 0 && ptr <= bin_size && bytes <= bin_size - ptr,
              "{}: sequence {} ({} tokens at byte {}) runs past the end of {} ({} bytes)", ip, i, len, ptr, bp,
              bin_size);
    DSV_CHECK(ptr == expected_ptr,
              "{}: sequence {} starts at byte {}, expected {} (sequences must follow each other in {})", ip, i, ptr,
              expected_ptr, bp);
    expected_ptr += bytes;
  }
  DSV_CHECK(expected_ptr == bin_size,
            "{}: {} bytes, but the index {} describes {} bytes of {} tokens (a .bin/.idx pair from different runs?)",
            bp, bin_size, ip, expected_ptr, dtype_name(dtype_));
  num_tokens_ = expected_ptr / static_cast<int64_t>(item_);

  // Documents: indices start at 0, never decrease and end at S.
  DSV_CHECK(load<int64_t>(doc_idx_) == 0, "{}: document indices start at {}, expected 0", ip, load<int64_t>(doc_idx_));
  for (int64_t k = 1; k <= num_documents_; ++k) {
    const int64_t prev = load<int64_t>(doc_idx_ + 8 * (k - 1)), cur = load<int64_t>(doc_idx_ + 8 * k);
    DSV_CHECK(cur >= prev && cur <= num_sequences_,
              "{}: document index {} is {} after {} (expected non-decreasing values in [0, {}])", ip, k, cur, prev,
              num_sequences_);
  }
  const int64_t last = load<int64_t>(doc_idx_ + 8 * num_documents_);
  DSV_CHECK(last == num_sequences_, "{}: the last document ends at sequence {}, expected {} (all sequences)", ip, last,
            num_sequences_);

  // Token ids: once here, so a bad id is found at open with its place in the file. A dtype that cannot
  // hold an id >= vocab_size (e.g. uint16 with a 129280 vocabulary) needs no scan; int64 is always
  // scanned because ids are handed out as int32.
  const int64_t limit = vocab_size > 0 ? vocab_size : int64_t{1} << 31;
  const bool can_exceed = dtype_max_id(dtype_) >= limit || dtype_ == TokenDtype::Int64;
  const bool can_be_negative = dtype_ == TokenDtype::Int8 || dtype_ == TokenDtype::Int16 ||
                               dtype_ == TokenDtype::Int32 || dtype_ == TokenDtype::Int64;
  if ((vocab_size > 0 && (can_exceed || can_be_negative)) || dtype_ == TokenDtype::Int64) {
    for (int64_t i = 0; i < num_tokens_; ++i) {
      const int64_t t = element(dtype_, bin_.data(), i);
      if (t < 0 || t >= limit) [[unlikely]] {
        if (vocab_size > 0)
          DSV_FAIL("{}: token {} (byte offset {}) is {}, outside the vocabulary [0, {})", bp, i,
                   i * static_cast<int64_t>(item_), t, vocab_size);
        DSV_FAIL("{}: token {} (byte offset {}) is {}, not a token id that fits int32", bp, i,
                 i * static_cast<int64_t>(item_), t);
      }
    }
  }
}

int32_t IndexedDataset::sequence_length(int64_t i) const {
  DSV_CHECK(i >= 0 && i < num_sequences_, "{}: sequence {} outside [0, {})", prefix_, i, num_sequences_);
  return load<int32_t>(lengths_ + 4 * i);
}

int64_t IndexedDataset::sequence_begin(int64_t i) const {
  DSV_CHECK(i >= 0 && i <= num_sequences_, "{}: sequence {} outside [0, {}]", prefix_, i, num_sequences_);
  if (i == num_sequences_) return num_tokens_;
  return load<int64_t>(pointers_ + 8 * i) / static_cast<int64_t>(item_);
}

int64_t IndexedDataset::document_first_sequence(int64_t d) const {
  DSV_CHECK(d >= 0 && d <= num_documents_, "{}: document {} outside [0, {}]", prefix_, d, num_documents_);
  return load<int64_t>(doc_idx_ + 8 * d);
}

void IndexedDataset::read_tokens(int64_t first, int64_t count, int32_t* out) const {
  DSV_CHECK(first >= 0 && count >= 0 && count <= num_tokens_ - first, "{}: tokens [{}, {}) outside [0, {})", prefix_,
            first, first + count, num_tokens_);
  convert(dtype_, bin_.data() + static_cast<size_t>(first) * item_, count, out);
}

std::vector<int32_t> IndexedDataset::tokens(int64_t first, int64_t count) const {
  std::vector<int32_t> out(static_cast<size_t>(std::max<int64_t>(count, 0)));
  read_tokens(first, count, out.data());
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {
constexpr size_t kBufferBytes = size_t{4} << 20;
}

IndexedDatasetBuilder::IndexedDatasetBuilder(const std::string& prefix, TokenDtype dtype)
    : prefix_(prefix), dtype_(dtype) {
  DSV_CHECK(known_dtype(static_cast<uint8_t>(dtype)) && integer_dtype(dtype),
            "{}: cannot write tokens as dtype code {} (expected an integer dtype)", prefix,
            static_cast<int>(dtype));
  fd_bin_ = create_tmp(prefix_ + ".bin.tmp");
  buffer_.reserve(kBufferBytes);
}

IndexedDatasetBuilder::~IndexedDatasetBuilder() {
  if (finished_) return;
  if (fd_bin_ >= 0) ::close(fd_bin_);
  std::remove((prefix_ + ".bin.tmp").c_str());
  std::remove((prefix_ + ".idx.tmp").c_str());
}

void IndexedDatasetBuilder::flush_bin() {
  write_all(fd_bin_, buffer_.data(), buffer_.size(), prefix_ + ".bin.tmp");
  buffer_.clear();
}

void IndexedDatasetBuilder::write_bin(const void* data, size_t bytes) {
  if (buffer_.size() + bytes > kBufferBytes) flush_bin();
  if (bytes >= kBufferBytes) {
    write_all(fd_bin_, data, bytes, prefix_ + ".bin.tmp");
    return;
  }
  const auto* p = static_cast<const uint8_t*>(data);
  buffer_.insert(buffer_.end(), p, p + bytes);
}

void IndexedDatasetBuilder::add_document(std::span<const int32_t> tokens, std::span<const int64_t> sequence_lengths) {
  DSV_CHECK(!finished_, "{}: add_document after finish()", prefix_);
  const int64_t doc = num_documents();
  int64_t total = 0;
  for (const int64_t len : sequence_lengths) {
    DSV_CHECK(len >= 0 && len <= std::numeric_limits<int32_t>::max(),
              "{}: document {}: sequence length {} outside [0, 2^31)", prefix_, doc, len);
    total += len;
  }
  DSV_CHECK(total == static_cast<int64_t>(tokens.size()), "{}: document {}: sequence lengths sum to {}, it has {} tokens",
            prefix_, doc, total, tokens.size());
  const int64_t max_id = dtype_max_id(dtype_);
  for (size_t i = 0; i < tokens.size(); ++i)
    DSV_CHECK(tokens[i] >= 0 && tokens[i] <= max_id, "{}: document {}: token {} is {}, does not fit {} (0..{})",
              prefix_, doc, i, tokens[i], dtype_name(dtype_), max_id);

  // Narrow into a small staging buffer, chunk by chunk.
  const size_t item = dtype_size(dtype_);
  uint8_t staging[8192];
  const size_t per_chunk = sizeof staging / item;
  for (size_t i = 0; i < tokens.size(); i += per_chunk) {
    const size_t n = std::min(per_chunk, tokens.size() - i);
    for (size_t j = 0; j < n; ++j) {
      const int32_t t = tokens[i + j];
      switch (dtype_) {
        case TokenDtype::UInt8:
        case TokenDtype::Int8: staging[j] = static_cast<uint8_t>(t); break;
        case TokenDtype::Int16:
        case TokenDtype::UInt16: {
          const auto v = static_cast<uint16_t>(t);
          std::memcpy(staging + 2 * j, &v, 2);
          break;
        }
        case TokenDtype::Int32: std::memcpy(staging + 4 * j, &t, 4); break;
        default: {
          const auto v = static_cast<int64_t>(t);
          std::memcpy(staging + 8 * j, &v, 8);
        }
      }
    }
    write_bin(staging, n * item);
  }
  for (const int64_t len : sequence_lengths) sequence_lengths_.push_back(static_cast<int32_t>(len));
  document_indices_.push_back(static_cast<int64_t>(sequence_lengths_.size()));
  num_tokens_ += static_cast<int64_t>(tokens.size());
}

void IndexedDatasetBuilder::add_document(std::span<const int32_t> tokens) {
  const int64_t len = static_cast<int64_t>(tokens.size());
  add_document(tokens, tokens.empty() ? std::span<const int64_t>() : std::span<const int64_t>(&len, 1));
}

void IndexedDatasetBuilder::finish() {
  DSV_CHECK(!finished_, "{}: finish() called twice", prefix_);
  const std::string bin_tmp = prefix_ + ".bin.tmp", idx_tmp = prefix_ + ".idx.tmp";
  flush_bin();
  const int fd = fd_bin_;
  fd_bin_ = -1;
  fsync_close(fd, bin_tmp);

  const int fdi = create_tmp(idx_tmp);
  try {
    std::vector<uint8_t> out;
    out.reserve(kBufferBytes);
    auto put = [&](const void* p, size_t n) {
      if (out.size() + n > kBufferBytes) {
        write_all(fdi, out.data(), out.size(), idx_tmp);
        out.clear();
      }
      const auto* b = static_cast<const uint8_t*>(p);
      out.insert(out.end(), b, b + n);
    };
    const uint64_t version = 1, S = sequence_lengths_.size(), K = document_indices_.size();
    const auto code = static_cast<uint8_t>(dtype_);
    put(kMagic, sizeof kMagic);
    put(&version, 8);
    put(&code, 1);
    put(&S, 8);
    put(&K, 8);
    for (const int32_t len : sequence_lengths_) put(&len, 4);
    int64_t ptr = 0;
    for (const int32_t len : sequence_lengths_) {
      put(&ptr, 8);
      ptr += static_cast<int64_t>(len) * static_cast<int64_t>(dtype_size(dtype_));
    }
    for (const int64_t k : document_indices_) put(&k, 8);
    write_all(fdi, out.data(), out.size(), idx_tmp);
  } catch (...) {
    ::close(fdi);
    throw;
  }
  fsync_close(fdi, idx_tmp);
  // .bin first: a visible .idx always has its complete .bin beside it.
  rename_into_place(bin_tmp, prefix_ + ".bin");
  rename_into_place(idx_tmp, prefix_ + ".idx");
  finished_ = true;
}

}  // namespace dsv::data
