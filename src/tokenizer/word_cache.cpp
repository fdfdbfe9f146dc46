#include "tokenizer/word_cache.h"

#include <cstring>

namespace dsv::tok {

void WordCache::reset(size_t slots) {
  slots_.assign(slots, Slot{});
  keys_.clear();
  ids_.clear();
  used_ = 0;
}

uint64_t WordCache::hash(std::string_view s) {
  // FNV-1a over 8-byte words then the tail: cheap and good enough for short words.
  uint64_t h = 0xcbf29ce484222325ull ^ s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 29;
  }
  for (; i < s.size(); ++i) h = (h ^ static_cast<unsigned char>(s[i])) * 0x100000001b3ull;
  return h ^ (h >> 32);
}

bool WordCache::lookup(std::string_view word, uint64_t h, std::vector<int32_t>& out) const {
  const size_t mask = slots_.size() - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (!s.used) return false;
    if (s.hash == h && s.key_len == word.size() && std::memcmp(keys_.data() + s.key_off, word.data(), word.size()) == 0) {
      out.insert(out.end(), ids_.begin() + s.ids_off, ids_.begin() + s.ids_off + s.ids_len);
      return true;
    }
  }
}

void WordCache::insert(std::string_view word, uint64_t h, const int32_t* ids, size_t n) {
  // Keep the table at most half full and the arenas bounded; when either fills, start over.
  if ((used_ + 1) * 2 > slots_.size() || keys_.size() + word.size() > (64u << 20)) reset(slots_.size());
  const size_t mask = slots_.size() - 1;
  size_t i = h & mask;
  while (slots_[i].used) i = (i + 1) & mask;
  Slot& s = slots_[i];
  s.used = true;
  s.hash = h;
  s.key_off = static_cast<uint32_t>(keys_.size());
  s.key_len = static_cast<uint32_t>(word.size());
  s.ids_off = static_cast<uint32_t>(ids_.size());
  s.ids_len = static_cast<uint32_t>(n);
  keys_.append(word);
  ids_.insert(ids_.end(), ids, ids + n);
  ++used_;
}

}  // namespace dsv::tok
