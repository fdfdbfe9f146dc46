// Per-thread cache of word -> token ids. Text repeats words constantly, so most pieces skip BPE.
// Each thread owns its cache (no locks on the hot path); it empties itself when full.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv::tok {

class WordCache {
 public:
  explicit WordCache(size_t slots = 1 << 15) { reset(slots); }

  // Returns true and appends the cached ids to out when `word` is cached.
  bool lookup(std::string_view word, uint64_t hash, std::vector<int32_t>& out) const;
  void insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t n);

  static uint64_t hash(std::string_view s);

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_off = 0, key_len = 0;
    uint32_t ids_off = 0, ids_len = 0;
    bool used = false;
  };
  void reset(size_t slots);
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t used_ = 0;
};

}  // namespace dsv::tok
