// Open-addressing hash map from 64-bit keys to small values: the merge table sits on the BPE hot
// path, where std::unordered_map's node chasing costs more than the merge work itself.
#pragma once
#include <cstdint>
#include <vector>

namespace dsv::tok {

template <typename V>
class FlatMap64 {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    keys_.assign(cap, kEmpty);
    vals_.assign(cap, V{});
    mask_ = cap - 1;
    size_ = 0;
  }
  // Inserts or overwrites (a later merge of the same pair wins, as in tokenizers' HashMap).
  void put(uint64_t key, const V& v) {
    if (keys_.empty() || (size_ + 1) * 2 > keys_.size()) grow();
    size_t i = slot(key);
    while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask_;
    if (keys_[i] == kEmpty) ++size_;
    keys_[i] = key;
    vals_[i] = v;
  }
  const V* get(uint64_t key) const {
    if (keys_.empty()) return nullptr;
    size_t i = slot(key);
    while (true) {
      if (keys_[i] == key) return &vals_[i];
      if (keys_[i] == kEmpty) return nullptr;
      i = (i + 1) & mask_;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // (-1, -1): never a real id pair
  size_t slot(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 32) & mask_; }
  void grow() {
    std::vector<uint64_t> k = std::move(keys_);
    std::vector<V> v = std::move(vals_);
    reserve(k.empty() ? 8 : k.size());
    for (size_t i = 0; i < k.size(); ++i)
      if (k[i] != kEmpty) put(k[i], v[i]);
  }
  std::vector<uint64_t> keys_;
  std::vector<V> vals_;
  size_t mask_ = 0, size_ = 0;
};

}  // namespace dsv::tok
