#include "tokenizer/bpe.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/utf8.h"

namespace dsv::tok {

namespace {
uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull ^ s.size();
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h ^ (h >> 29);
}
}  // namespace

int32_t Bpe::find(std::string_view token) const {
  if (index_.empty()) return -1;
  const size_t mask = index_.size() - 1;
  for (size_t i = hash_bytes(token) & mask;; i = (i + 1) & mask) {
    const int32_t id = index_[i];
    if (id < 0) return -1;
    if (text(id) == token) return id;
  }
}

Bpe::Bpe(std::vector<std::pair<std::string, int32_t>> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
         BpeOptions opt, const std::string& where)
    : opt_(std::move(opt)) {
  int32_t max_id = -1;
  size_t bytes = 0;
  for (const auto& [tok, id] : vocab) {
    DSV_CHECK(id >= 0, "{}.vocab: token '{}' has negative id {}", where, tok, id);
    max_id = std::max(max_id, id);
    bytes += tok.size();
  }
  DSV_CHECK(max_id < (1 << 30), "{}.vocab: id {} is implausibly large", where, max_id);
  DSV_CHECK(bytes < kAbsent, "{}.vocab: {} bytes of token text is too much", where, bytes);
  tok_off_.assign(static_cast<size_t>(max_id + 1), 0);
  tok_len_.assign(static_cast<size_t>(max_id + 1), kAbsent);
  arena_.reserve(bytes);
  size_t slots = 16;
  while (slots < vocab.size() * 2) slots <<= 1;
  index_.assign(slots, -1);
  const size_t mask = slots - 1;
  for (const auto& [tok, id] : vocab) {
    if (tok_len_[id] != kAbsent) DSV_FAIL("{}.vocab: id {} is given to both '{}' and '{}'", where, id, text(id), tok);
    tok_off_[id] = static_cast<uint32_t>(arena_.size());
    tok_len_[id] = static_cast<uint32_t>(tok.size());
    arena_ += tok;
    size_t i = hash_bytes(tok) & mask;
    while (index_[i] >= 0 && text(index_[i]) != tok) i = (i + 1) & mask;
    index_[i] = id;  // a duplicate token keeps the last id, like serde's map
  }
  merges_.reserve(merges.size());
  std::string joined;
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    const int32_t ia = find(a), ib = find(b);
    DSV_CHECK(ia >= 0, "{}.merges[{}]: token '{}' is not in the vocab", where, r, a);
    DSV_CHECK(ib >= 0, "{}.merges[{}]: token '{}' is not in the vocab", where, r, b);
    joined.assign(a).append(b);
    const int32_t ij = find(joined);
    DSV_CHECK(ij >= 0, "{}.merges[{}]: merged token '{}' is not in the vocab", where, r, joined);
    merges_.put(key(ia, ib), Merge{static_cast<int32_t>(r), ij});
  }
  const ByteAlphabet& abc = byte_alphabet();
  for (int b = 0; b < 256; ++b) {
    byte_ids_[b] = find(abc.byte_to_utf8[b]);
    fallback_ids_[b] = find(fmt::format("<0x{:02X}>", b));
  }
  if (opt_.unk_token) {
    const int32_t id = find(*opt_.unk_token);
    DSV_CHECK(id >= 0, "{}.unk_token: '{}' is not in the vocab", where, *opt_.unk_token);
    unk_id_ = id;
  }
}

std::optional<int32_t> Bpe::token_to_id(std::string_view token) const {
  const int32_t id = find(token);
  if (id < 0) return std::nullopt;
  return id;
}

std::optional<std::string_view> Bpe::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= tok_len_.size() || tok_len_[id] == kAbsent) return std::nullopt;
  return text(id);
}

// Starting symbols: one per character, with tokenizers' rules for characters missing from the
// vocab: byte fallback (<0xXX> per byte), else the unk token (consecutive ones fused when
// fuse_unk), else dropped.
void Bpe::initial_symbols(std::string_view piece, bool byte_level, std::vector<int32_t>& syms) const {
  syms.clear();
  if (byte_level) {
    bool all = true;
    for (unsigned char c : piece) {
      syms.push_back(byte_ids_[c]);
      all &= byte_ids_[c] >= 0;
    }
    if (all) return;
  }
  // General path (and byte-level pieces whose alphabet the vocab lacks): character by character.
  std::string mapped;
  if (byte_level) {
    const ByteAlphabet& abc = byte_alphabet();
    for (unsigned char c : piece) mapped += abc.byte_to_utf8[c];
    piece = mapped;
  }
  syms.clear();
  bool last_unk = false;
  size_t i = 0;
  while (i < piece.size()) {
    const size_t start = i;
    i += utf8_len(static_cast<unsigned char>(piece[i]));
    const std::string_view ch = piece.substr(start, i - start);
    if (const int32_t id = find(ch); id >= 0) {
      syms.push_back(id);
      last_unk = false;
      continue;
    }
    if (opt_.byte_fallback) {
      bool ok = true;
      for (unsigned char c : ch) ok &= fallback_ids_[c] >= 0;
      if (ok) {
        for (unsigned char c : ch) syms.push_back(fallback_ids_[c]);
        last_unk = false;
        continue;
      }
    }
    if (unk_id_) {
      if (!(opt_.fuse_unk && last_unk)) syms.push_back(*unk_id_);
      last_unk = true;
    }
  }
}

void Bpe::merge(std::vector<int32_t>& syms) const {
  const size_t n = syms.size();
  if (n < 2) return;
  // Doubly linked list over symbol slots plus a min-heap of candidate merges ordered by
  // (rank, position); stale heap entries are recognised and skipped when popped.
  struct Cand {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  thread_local std::vector<int32_t> prev, next;
  thread_local std::vector<Cand> heap;
  prev.resize(n);
  next.resize(n);
  heap.clear();
  auto worse = [](const Cand& x, const Cand& y) { return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos; };
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
  }
  for (size_t i = 0; i + 1 < n; ++i) {
    if (const Merge* m = merges_.get(key(syms[i], syms[i + 1]))) heap.push_back({m->rank, static_cast<int32_t>(i), m->new_id});
  }
  std::make_heap(heap.begin(), heap.end(), worse);
  constexpr int32_t kGone = -2;  // a slot merged into its left neighbour
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const Cand c = heap.back();
    heap.pop_back();
    if (syms[c.pos] == kGone || next[c.pos] < 0) continue;
    const int32_t right = next[c.pos];
    const Merge* m = merges_.get(key(syms[c.pos], syms[right]));
    if (!m || m->new_id != c.new_id) continue;  // the pair changed since this entry was pushed
    syms[c.pos] = c.new_id;
    syms[right] = kGone;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    if (prev[c.pos] >= 0) {
      if (const Merge* pm = merges_.get(key(syms[prev[c.pos]], c.new_id))) {
        heap.push_back({pm->rank, prev[c.pos], pm->new_id});
        std::push_heap(heap.begin(), heap.end(), worse);
      }
    }
    if (next[c.pos] >= 0) {
      if (const Merge* nm = merges_.get(key(c.new_id, syms[next[c.pos]]))) {
        heap.push_back({nm->rank, c.pos, nm->new_id});
        std::push_heap(heap.begin(), heap.end(), worse);
      }
    }
  }
  syms.erase(std::remove(syms.begin(), syms.end(), kGone), syms.end());
}

void Bpe::encode_piece(std::string_view piece, bool byte_level, std::vector<int32_t>& out) const {
  if (opt_.ignore_merges) {
    // A piece that is itself a vocab token is emitted whole, merges or not.
    std::string mapped;
    if (byte_level) {
      const ByteAlphabet& abc = byte_alphabet();
      for (unsigned char c : piece) mapped += abc.byte_to_utf8[c];
    } else {
      mapped = piece;
    }
    if (const int32_t id = find(mapped); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  thread_local std::vector<int32_t> syms;
  initial_symbols(piece, byte_level, syms);
  merge(syms);
  out.insert(out.end(), syms.begin(), syms.end());
}

}  // namespace dsv::tok
