// tokenizer.json "post_processor" for single sequences, reduced to the ids it puts before and
// after the text. Supported: null, ByteLevel (offsets only: no ids), TemplateProcessing,
// BertProcessing, RobertaProcessing, and Sequence of these.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace dsv::tok {

struct PostProcessor {
  std::vector<int32_t> prefix, suffix;

  static PostProcessor from_json(const nlohmann::json& j, const std::string& where);
  void add(const nlohmann::json& j, const std::string& where);
};

}  // namespace dsv::tok
