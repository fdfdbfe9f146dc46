#include "tokenizer/normalizer.h"

#include "tokenizer/json_util.h"
#include "tokenizer/utf8.h"

namespace dsv::tok {

Normalizer Normalizer::from_json(const nlohmann::json& j, const std::string& where) {
  Normalizer n;
  if (!j.is_null()) n.add(j, where);
  return n;
}

void Normalizer::add(const nlohmann::json& j, const std::string& where) {
  const std::string type = jstring(j, "type", where);
  if (type == "Sequence") {
    const auto& list = jfield(j, "normalizers", where);
    DSV_CHECK(list.is_array(), "{}.normalizers: expected an array", where);
    for (size_t i = 0; i < list.size(); ++i) add(list[i], fmt::format("{}.normalizers[{}]", where, i));
  } else if (type == "Replace") {
    const auto& pat = jfield(j, "pattern", where);
    Step s{Step::kReplace, nullptr, jstring(j, "content", where)};
    if (pat.contains("String")) {
      s.pattern = std::make_shared<Regex>(regex_escape(pat["String"].get<std::string>()), where + ".pattern");
    } else if (pat.contains("Regex")) {
      s.pattern = std::make_shared<Regex>(pat["Regex"].get<std::string>(), where + ".pattern");
    } else {
      DSV_FAIL("{}.pattern: expected {{\"String\": ...}} or {{\"Regex\": ...}}, found {}", where, pat.dump());
    }
    steps_.push_back(std::move(s));
  } else if (type == "Prepend") {
    steps_.push_back({Step::kPrepend, nullptr, jstring(j, "prepend", where)});
  } else if (type == "Strip") {
    Step s{Step::kStrip, nullptr, {}};
    s.left = jbool(j, "strip_left", where, false);
    s.right = jbool(j, "strip_right", where, false);
    steps_.push_back(std::move(s));
  } else {
    DSV_FAIL("{}.type: normalizer \"{}\" is not supported (supported: Sequence, Replace, Prepend, Strip; "
             "Unicode normalization forms and Lowercase are not implemented)", where, type);
  }
}

// Unicode White_Space, as Rust's char::is_whitespace (used by the Strip normalizer).
static bool is_white_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string Normalizer::apply(std::string_view text) const {
  std::string cur(text);
  for (const Step& s : steps_) {
    switch (s.kind) {
      case Step::kReplace: {
        std::string out;
        size_t prev = 0;
        s.pattern->find_all(cur, [&](size_t a, size_t b) {
          out.append(cur, prev, a - prev);
          out += s.content;
          prev = b;
        });
        out.append(cur, prev, std::string::npos);
        cur = std::move(out);
        break;
      }
      case Step::kPrepend:
        if (!cur.empty()) cur = s.content + cur;  // tokenizers leaves empty strings alone
        break;
      case Step::kStrip: {
        size_t b = 0, e = cur.size();
        if (s.left) {
          while (b < e) {
            size_t i = b;
            if (!is_white_space(utf8_next(cur, i))) break;
            b = i;
          }
        }
        if (s.right) {
          while (e > b) {
            size_t start = e - 1;
            while (start > b && (static_cast<unsigned char>(cur[start]) & 0xC0) == 0x80) --start;
            size_t i = start;
            if (!is_white_space(utf8_next(cur, i))) break;
            e = start;
          }
        }
        cur = cur.substr(b, e - b);
        break;
      }
    }
  }
  return cur;
}

}  // namespace dsv::tok
