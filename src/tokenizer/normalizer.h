// tokenizer.json "normalizer". Supported: null, Sequence, Replace (String or Regex pattern),
// Prepend, Strip. Unicode normalization forms (NFC, NFD, NFKC, NFKD), Lowercase, BertNormalizer,
// Precompiled, StripAccents and NMT are rejected at load with the field named.
#pragma once
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace dsv::tok {

class Normalizer {
 public:
  static Normalizer from_json(const nlohmann::json& j, const std::string& where);

  bool identity() const { return steps_.empty(); }
  std::string apply(std::string_view text) const;

 private:
  struct Step {
    enum Kind { kReplace, kPrepend, kStrip } kind;
    std::shared_ptr<Regex> pattern;  // kReplace
    std::string content;             // kReplace: replacement; kPrepend: prefix
    bool left = false, right = false;  // kStrip
  };
  void add(const nlohmann::json& j, const std::string& where);
  std::vector<Step> steps_;
};

}  // namespace dsv::tok
