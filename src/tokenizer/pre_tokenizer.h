// tokenizer.json "pre_tokenizer": cuts normalized text into pieces that BPE encodes separately.
// Supported: null, Sequence, Split (String or Regex pattern; behaviours Isolated, Removed,
// MergedWithPrevious, MergedWithNext, Contiguous; invert) and ByteLevel (add_prefix_space,
// use_regex) as the last step. Anything else fails at load naming the field.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/function_ref.h"
#include "tokenizer/regex.h"

namespace dsv::tok {

class PreTokenizer {
 public:
  static PreTokenizer from_json(const nlohmann::json& j, const std::string& where);

  // Streams the non-empty pieces of `text` to emit, in order. Pieces are raw (not yet byte-mapped)
  // UTF-8; when byte_level() is true the model maps their bytes through the byte alphabet.
  void run(std::string_view text, FunctionRef<void(std::string_view)> emit) const;

  bool byte_level() const { return byte_level_; }

 private:
  enum class Behavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };
  struct Split {
    Regex re;
    Behavior behavior;
    bool invert;
  };
  void add(const nlohmann::json& j, const std::string& where);
  void run_stage(size_t stage, std::string_view text, FunctionRef<void(std::string_view)> emit) const;
  void run_byte_level(std::string_view text, FunctionRef<void(std::string_view)> emit) const;

  std::vector<Split> splits_;
  bool byte_level_ = false;
  bool add_prefix_space_ = false;
  std::vector<Regex> byte_level_regex_;  // empty, or the GPT-2 pattern when use_regex is true
};

}  // namespace dsv::tok
