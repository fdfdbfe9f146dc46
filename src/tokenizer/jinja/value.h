// Values of the chat-template language: Python's None/bool/int/float/str/list/dict as Jinja2
// sees them, plus Undefined and namespace(). Lists and dicts are shared (Python reference semantics).
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace dsv::jinja {

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion order, like Python dicts

struct Value {
  enum Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kNamespace };
  Kind kind = kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;                 // kString; for kUndefined the name that was looked up
  std::shared_ptr<List> list;    // kList
  std::shared_ptr<Dict> dict;    // kDict, kNamespace

  static Value undefined(std::string name = {}) { Value v; v.s = std::move(name); return v; }
  static Value none() { Value v; v.kind = kNone; return v; }
  static Value boolean(bool x) { Value v; v.kind = kBool; v.b = x; return v; }
  static Value integer(int64_t x) { Value v; v.kind = kInt; v.i = x; return v; }
  static Value number(double x) { Value v; v.kind = kFloat; v.f = x; return v; }
  static Value str(std::string x) { Value v; v.kind = kString; v.s = std::move(x); return v; }
  static Value make_list(List x = {}) { Value v; v.kind = kList; v.list = std::make_shared<List>(std::move(x)); return v; }
  static Value make_dict(Dict x = {}) { Value v; v.kind = kDict; v.dict = std::make_shared<Dict>(std::move(x)); return v; }

  bool is_undefined() const { return kind == kUndefined; }
  bool is_number() const { return kind == kInt || kind == kFloat || kind == kBool; }
  double as_double() const { return kind == kFloat ? f : kind == kBool ? (b ? 1 : 0) : static_cast<double>(i); }
  const Value* find(const std::string& key) const;  // dict/namespace member or nullptr
  void set(const std::string& key, Value v);         // dict/namespace member
};

const char* type_name(const Value& v);  // Python's name for the type, for error messages
bool truthy(const Value& v);
bool equal(const Value& a, const Value& b);
std::string to_str(const Value& v);   // Python str()
std::string to_repr(const Value& v);  // Python repr()
// json.dumps(v, ensure_ascii=False, indent=indent (<0: none), sort_keys=sort_keys) with
// Python's default separators.
std::string to_json(const Value& v, int indent, bool sort_keys);
Value from_json(const nlohmann::json& j);
Value from_json(const nlohmann::ordered_json& j);

// Code points of a UTF-8 string (Python indexes and measures str by code point).
// What a for-loop (and the list filter) iterates: list items, dict keys, a string's characters;
// Undefined iterates as empty (Jinja2). Anything else is an error naming the template line.
List iterate(const Value& v, int line);

std::vector<uint32_t> code_points(const std::string& s);
std::string from_code_points(const std::vector<uint32_t>& cps, size_t begin, size_t end);

}  // namespace dsv::jinja
