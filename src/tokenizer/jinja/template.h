// A parsed chat template and its renderer: the Jinja2 subset that Hugging Face chat templates use,
// with the environment transformers' apply_chat_template sets up (trim_blocks, lstrip_blocks,
// loop controls, raise_exception, strftime_now, a tojson that keeps non-ASCII text).
#pragma once
#include <string>
#include <string_view>
#include <unordered_map>

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/value.h"

namespace dsv::jinja {

class Template {
 public:
  explicit Template(std::string_view source);
  // Renders with the given top-level variables.
  std::string render(const std::unordered_map<std::string, Value>& variables) const;

 private:
  Body body_;
};

// Filters, tests and methods (builtins.cpp). `line` locates errors.
Value apply_filter(const std::string& name, const Value& input, std::vector<Value>& args,
                   std::vector<std::pair<std::string, Value>>& kwargs, int line);
bool apply_test(const std::string& name, const Value& input, const std::vector<Value>& args, int line);
Value call_method(const Value& self, const std::string& name, std::vector<Value>& args,
                  std::vector<std::pair<std::string, Value>>& kwargs, int line);
bool has_method(const Value& self, const std::string& name);

}  // namespace dsv::jinja
