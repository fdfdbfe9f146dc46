// The BPE model of tokenizer.json: vocab, ranked merges, and the merge loop that turns one
// pre-tokenized piece into ids (lowest-rank pair first, leftmost on ties, as tokenizers does).
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/flat_map.h"

namespace dsv::tok {

struct BpeOptions {
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class Bpe {
 public:
  Bpe() = default;
  // vocab: (token, id) pairs; merges: (left, right) pairs in rank order. `where` prefixes errors.
  Bpe(std::vector<std::pair<std::string, int32_t>> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
      BpeOptions opt, const std::string& where);

  // Appends the ids of one piece. byte_level: the piece is raw bytes to be read through the
  // byte alphabet (ByteLevel pre-tokenizer); otherwise its UTF-8 characters are the symbols.
  void encode_piece(std::string_view piece, bool byte_level, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string_view> id_to_token(int32_t id) const;  // nullopt when id is not in the vocab
  int32_t max_id() const { return static_cast<int32_t>(tok_len_.size()) - 1; }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  void initial_symbols(std::string_view piece, bool byte_level, std::vector<int32_t>& syms) const;
  void merge(std::vector<int32_t>& syms) const;

  int32_t find(std::string_view token) const;  // -1 when absent
  std::string_view text(int32_t id) const { return std::string_view(arena_).substr(tok_off_[id], tok_len_[id]); }

  // All token strings in one arena (loading 128k tokens must not cost 128k allocations), and an
  // open-addressing index from token text to id over it.
  std::string arena_;
  std::vector<uint32_t> tok_off_, tok_len_;  // by id; tok_len_ = kAbsent for ids the vocab skips
  std::vector<int32_t> index_;               // slots holding ids, -1 empty
  static constexpr uint32_t kAbsent = ~uint32_t{0};
  FlatMap64<Merge> merges_;
  std::array<int32_t, 256> byte_ids_{};  // id of each byte's alphabet character, -1 if absent
  std::array<int32_t, 256> fallback_ids_{};  // id of "<0xXX>" for byte_fallback, -1 if absent
  BpeOptions opt_;
  std::optional<int32_t> unk_id_;
};

}  // namespace dsv::tok
