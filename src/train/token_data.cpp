#include "train/token_data.h"

#include <bit>
#include <cstring>

#include "core/error.h"
#include "ops/counter_rng.h"

namespace dsv::train {

static_assert(std::endian::native == std::endian::little, "token files are little-endian int32, read in place");

TokenData::TokenData(const std::string& path, int64_t seq_len, int64_t micro_batch, int64_t grad_accum,
                     bool shuffle, uint64_t seed, int64_t vocab_size)
    : file_(path), seq_len_(seq_len), micro_batch_(micro_batch), grad_accum_(grad_accum), shuffle_(shuffle),
      seed_(seed) {
  DSV_CHECK(seq_len >= 2 && micro_batch >= 1 && grad_accum >= 1,
            "{}: expected seq_len >= 2, micro_batch >= 1, grad_accum >= 1, found {}, {}, {}", path, seq_len,
            micro_batch, grad_accum);
  DSV_CHECK(file_.size() % 4 == 0,
            "{}: expected a flat file of int32 token ids (size a multiple of 4 bytes), found {} bytes", path,
            file_.size());
  num_tokens_ = static_cast<int64_t>(file_.size() / 4);
  DSV_CHECK(num_tokens_ >= seq_len + 1,
            "{}: has {} tokens, needs at least {} (one window of train.seq_len {} + 1)", path, num_tokens_,
            seq_len + 1, seq_len);
  tokens_ = reinterpret_cast<const int32_t*>(file_.data());  // mmap is page-aligned
  num_windows_ = (num_tokens_ - 1) / seq_len;
  // One pass at open, so a bad id is reported with its place in the file instead of failing mid-run.
  for (int64_t i = 0; i < num_tokens_; ++i) {
    const int32_t t = tokens_[i];
    DSV_CHECK(t >= 0 && t < vocab_size, "{}: token {} (byte offset {}) is {}, outside the vocabulary [0, {})", path,
              i, 4 * i, t, vocab_size);
  }
}

TokenData::TokenData(const TrainConfig& c, int64_t vocab_size)
    : TokenData(c.data_tokens, c.seq_len, c.micro_batch, c.grad_accum, c.shuffle, c.seed, vocab_size) {}

const int32_t* TokenData::window(int64_t j) const {
  DSV_CHECK(j >= 0 && j < num_windows_, "{}: window {} outside [0, {})", path(), j, num_windows_);
  return tokens_ + j * seq_len_;
}

std::vector<int64_t> TokenData::epoch_permutation(uint64_t seed, int64_t epoch, int64_t n) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) perm[static_cast<size_t>(i)] = i;
  // Fisher-Yates from the top: draw k of splitmix64(key + k) for i = n-1 .. 1, swap i with
  // (draw * (i + 1)) >> 64 (multiply-shift; its bias is below 2^-40 for any file we can map).
  const uint64_t key = ops::splitmix64(seed ^ ops::splitmix64(static_cast<uint64_t>(epoch) + 0x5851f42d4c957f2dull));
  uint64_t k = 0;
  for (int64_t i = n - 1; i > 0; --i) {
    const uint64_t r = ops::splitmix64(key + k++);
    const auto j = static_cast<int64_t>((static_cast<unsigned __int128>(r) * static_cast<uint64_t>(i + 1)) >> 64);
    std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(j)]);
  }
  return perm;
}

int64_t TokenData::window_in(int64_t position, int64_t first, int64_t count) {
  DSV_CHECK(position >= 0, "{}: sample position {} is negative", path(), position);
  DSV_CHECK(first >= 0 && count > 0 && first + count <= num_windows_, "{}: windows [{}, {}) outside [0, {})", path(),
            first, first + count, num_windows_);
  const int64_t k = position % count;
  if (!shuffle_) return first + k;
  const int64_t epoch = position / count;
  if (epoch != cached_epoch_ || count != cached_count_) {
    perm_ = epoch_permutation(seed_, epoch, count);
    cached_epoch_ = epoch;
    cached_count_ = count;
  }
  return first + perm_[static_cast<size_t>(k)];
}

void TokenData::fill_step(int64_t step, int64_t micro_batch_index, int32_t* out) {
  DSV_CHECK(step >= 0 && micro_batch_index >= 0 && micro_batch_index < grad_accum_,
            "{}: fill_step({}, {}): expected step >= 0 and a micro-batch index in [0, {})", path(), step,
            micro_batch_index, grad_accum_);
  const size_t row = static_cast<size_t>(seq_len_ + 1);
  for (int64_t i = 0; i < micro_batch_; ++i) {
    const int64_t p = (step * grad_accum_ + micro_batch_index) * micro_batch_ + i;
    std::memcpy(out + static_cast<size_t>(i) * row, window(window_at(p)), row * sizeof(int32_t));
  }
}

}  // namespace dsv::train
