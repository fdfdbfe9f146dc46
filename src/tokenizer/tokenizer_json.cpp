#include "tokenizer/tokenizer_json.h"

#include <charconv>
#include <cstring>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace dsv::tok {

namespace {

using json = nlohmann::json;

class Reader {
 public:
  Reader(std::string_view text, const std::string& where, TokenizerJson& out) : s_(text), where_(where), out_(out) {}

  void run() {
    ws();
    out_.doc = value(0, nullptr);
    ws();
    if (p_ != s_.size()) fail("unexpected data after the top-level value");
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    size_t line = 1;
    for (size_t k = 0; k < p_ && k < s_.size(); ++k) line += s_[k] == '\n';
    DSV_FAIL("{}: invalid JSON at line {} (byte {}): {}", where_, line, p_, what);
  }
  void ws() {
    while (p_ < s_.size() && (s_[p_] == ' ' || s_[p_] == '\n' || s_[p_] == '\r' || s_[p_] == '\t')) ++p_;
  }
  void expect(char c) {
    ws();
    if (p_ >= s_.size() || s_[p_] != c) fail(fmt::format("expected '{}'", c));
    ++p_;
  }
  bool peek_is(char c) {
    ws();
    return p_ < s_.size() && s_[p_] == c;
  }

  unsigned hex4() {
    if (p_ + 4 > s_.size()) fail("truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[p_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
      else fail("bad \\u escape");
    }
    return v;
  }

  // Reads a string (p_ at the opening quote) into out.
  void string(std::string& out) {
    out.clear();
    if (p_ >= s_.size() || s_[p_] != '"') fail("expected a string");
    ++p_;
    while (true) {
      const size_t start = p_;
      while (p_ < s_.size() && s_[p_] != '"' && s_[p_] != '\\' && static_cast<unsigned char>(s_[p_]) >= 0x20) ++p_;
      out.append(s_.data() + start, p_ - start);
      if (p_ >= s_.size()) fail("unterminated string");
      const char c = s_[p_++];
      if (c == '"') return;
      if (c != '\\') fail("control character inside a string");
      if (p_ >= s_.size()) fail("unterminated escape");
      switch (s_[p_++]) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (p_ + 2 > s_.size() || s_[p_] != '\\' || s_[p_ + 1] != 'u') fail("lone high surrogate in \\u escape");
            p_ += 2;
            const unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("bad low surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("lone low surrogate in \\u escape");
          }
          utf8_append(out, cp);
          break;
        }
        default: fail("unknown escape");
      }
    }
  }

  json number() {
    const size_t start = p_;
    if (p_ < s_.size() && s_[p_] == '-') ++p_;
    bool is_float = false;
    while (p_ < s_.size()) {
      const char c = s_[p_];
      if (c >= '0' && c <= '9') ++p_;
      else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') ++p_, is_float = true;
      else break;
    }
    const char* b = s_.data() + start;
    const char* e = s_.data() + p_;
    if (!is_float) {
      int64_t v = 0;
      auto r = std::from_chars(b, e, v);
      if (r.ec == std::errc() && r.ptr == e && (e - b == 1 || b[b[0] == '-'] != '0')) return v;
    }
    double d = 0;
    auto r = std::from_chars(b, e, d);
    if (r.ec != std::errc() || r.ptr != e || b == e) fail("malformed number");
    return d;
  }

  bool literal(const char* word) {
    const size_t n = std::strlen(word);
    if (s_.compare(p_, n, word) != 0) return false;
    p_ += n;
    return true;
  }

  // depth: nesting level; key: the key this value is stored under in its parent object.
  json value(int depth, const std::string* key) {
    if (depth > 512) fail("nesting deeper than 512");
    ws();
    if (p_ >= s_.size()) fail("unexpected end of input");
    const char c = s_[p_];
    if (c == '{') return object(depth, key);
    if (c == '[') return array(depth);
    if (c == '"') {
      std::string str;
      string(str);
      return str;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    if (literal("true")) return true;
    if (literal("false")) return false;
    if (literal("null")) return nullptr;
    fail("unexpected character");
  }

  json object(int depth, const std::string* key) {
    const bool is_model = depth == 1 && key && *key == "model";
    ++p_;
    json obj = json::object();
    if (peek_is('}')) {
      ++p_;
      return obj;
    }
    std::string k;
    while (true) {
      ws();
      string(k);
      expect(':');
      ws();
      if (is_model && k == "vocab" && p_ < s_.size() && s_[p_] == '{') {
        vocab();
      } else if (is_model && k == "merges" && p_ < s_.size() && s_[p_] == '[') {
        merges();
      } else {
        obj[k] = value(depth + 1, &k);
      }
      ws();
      if (p_ < s_.size() && s_[p_] == ',') {
        ++p_;
        continue;
      }
      expect('}');
      return obj;
    }
  }

  json array(int depth) {
    ++p_;
    json arr = json::array();
    if (peek_is(']')) {
      ++p_;
      return arr;
    }
    while (true) {
      arr.push_back(value(depth + 1, nullptr));
      ws();
      if (p_ < s_.size() && s_[p_] == ',') {
        ++p_;
        continue;
      }
      expect(']');
      return arr;
    }
  }

  void vocab() {
    out_.has_vocab = true;
    ++p_;
    out_.vocab.reserve(s_.size() / 32);
    if (peek_is('}')) {
      ++p_;
      return;
    }
    std::string k;
    while (true) {
      ws();
      string(k);
      expect(':');
      ws();
      const json v = value(3, nullptr);
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= (int64_t{1} << 30))
        DSV_FAIL("{}: model.vocab[\"{}\"]: expected a non-negative integer id, found {}", where_, k, v.dump());
      out_.vocab.emplace_back(k, static_cast<int32_t>(v.get<int64_t>()));
      ws();
      if (p_ < s_.size() && s_[p_] == ',') {
        ++p_;
        continue;
      }
      expect('}');
      return;
    }
  }

  // Either spelling: "left right" strings or ["left", "right"] pairs.
  void merges() {
    out_.has_merges = true;
    ++p_;
    out_.merges.reserve(s_.size() / 32);
    if (peek_is(']')) {
      ++p_;
      return;
    }
    std::string a, b;
    while (true) {
      ws();
      const size_t r = out_.merges.size();
      if (p_ < s_.size() && s_[p_] == '"') {
        string(a);
        const size_t sp = a.find(' ');
        if (sp == std::string::npos || a.find(' ', sp + 1) != std::string::npos)
          DSV_FAIL("{}: model.merges[{}]: expected \"left right\" (two tokens and one space), found \"{}\"", where_, r, a);
        out_.merges.emplace_back(a.substr(0, sp), a.substr(sp + 1));
      } else if (p_ < s_.size() && s_[p_] == '[') {
        ++p_;
        ws();
        if (p_ >= s_.size() || s_[p_] != '"') DSV_FAIL("{}: model.merges[{}]: expected [\"left\", \"right\"]", where_, r);
        string(a);
        expect(',');
        ws();
        if (p_ >= s_.size() || s_[p_] != '"') DSV_FAIL("{}: model.merges[{}]: expected [\"left\", \"right\"]", where_, r);
        string(b);
        ws();
        if (p_ >= s_.size() || s_[p_] != ']') DSV_FAIL("{}: model.merges[{}]: expected exactly two strings", where_, r);
        ++p_;
        out_.merges.emplace_back(a, b);
      } else {
        DSV_FAIL("{}: model.merges[{}]: expected \"left right\" or [\"left\", \"right\"]", where_, r);
      }
      ws();
      if (p_ < s_.size() && s_[p_] == ',') {
        ++p_;
        continue;
      }
      expect(']');
      return;
    }
  }

  std::string_view s_;
  const std::string& where_;
  TokenizerJson& out_;
  size_t p_ = 0;
};

}  // namespace

TokenizerJson parse_tokenizer_json(std::string_view text, const std::string& where) {
  DSV_CHECK(utf8_valid(text), "{}: the file is not valid UTF-8", where);
  TokenizerJson out;
  Reader(text, where, out).run();
  DSV_CHECK(out.doc.is_object(), "{}: expected a JSON object at the top level, found {}", where, out.doc.type_name());
  return out;
}

}  // namespace dsv::tok
