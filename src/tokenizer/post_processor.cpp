#include "tokenizer/post_processor.h"

#include "tokenizer/json_util.h"

namespace dsv::tok {

PostProcessor PostProcessor::from_json(const nlohmann::json& j, const std::string& where) {
  PostProcessor p;
  if (!j.is_null()) p.add(j, where);
  return p;
}

// [token, id] pairs of Bert/Roberta processors.
static int32_t pair_id(const nlohmann::json& j, const char* key, const std::string& where) {
  const auto& v = jfield(j, key, where);
  DSV_CHECK(v.is_array() && v.size() == 2 && v[1].is_number_integer(), "{}.{}: expected [\"token\", id], found {}", where,
            key, v.dump());
  return v[1].get<int32_t>();
}

void PostProcessor::add(const nlohmann::json& j, const std::string& where) {
  const std::string type = jstring(j, "type", where);
  std::vector<int32_t> pre, post;
  if (type == "ByteLevel") {
    return;  // adjusts offsets only
  } else if (type == "Sequence") {
    const auto& list = jfield(j, "processors", where);
    DSV_CHECK(list.is_array(), "{}.processors: expected an array", where);
    for (size_t i = 0; i < list.size(); ++i) add(list[i], fmt::format("{}.processors[{}]", where, i));
    return;
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    pre.push_back(pair_id(j, "cls", where));
    post.push_back(pair_id(j, "sep", where));
  } else if (type == "TemplateProcessing") {
    const auto& single = jfield(j, "single", where);
    const auto& specials = jfield(j, "special_tokens", where);
    DSV_CHECK(single.is_array(), "{}.single: expected an array", where);
    bool seen_a = false;
    for (size_t i = 0; i < single.size(); ++i) {
      const auto& piece = single[i];
      const std::string at = fmt::format("{}.single[{}]", where, i);
      if (piece.contains("Sequence")) {
        const std::string id = jstring(piece["Sequence"], "id", at + ".Sequence");
        DSV_CHECK(id == "A" && !seen_a, "{}: the single template must hold $A exactly once, found {}", at, piece.dump());
        seen_a = true;
      } else if (piece.contains("SpecialToken")) {
        const std::string name = jstring(piece["SpecialToken"], "id", at + ".SpecialToken");
        DSV_CHECK(specials.contains(name), "{}: special token '{}' is not listed in {}.special_tokens", at, name, where);
        const auto& ids = jfield(specials[name], "ids", where + ".special_tokens." + name);
        for (const auto& id : ids) (seen_a ? post : pre).push_back(id.get<int32_t>());
      } else {
        DSV_FAIL("{}: expected {{\"Sequence\": ...}} or {{\"SpecialToken\": ...}}, found {}", at, piece.dump());
      }
    }
    DSV_CHECK(seen_a, "{}.single: the template has no $A sequence", where);
  } else {
    DSV_FAIL("{}.type: post-processor \"{}\" is not supported (supported: ByteLevel, TemplateProcessing, "
             "BertProcessing, RobertaProcessing, Sequence)", where, type);
  }
  // A later processor wraps what the earlier ones produced.
  prefix.insert(prefix.begin(), pre.begin(), pre.end());
  suffix.insert(suffix.end(), post.begin(), post.end());
}

}  // namespace dsv::tok
