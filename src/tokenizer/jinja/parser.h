// Lexer and parser of the chat-template language, with the whitespace rules transformers uses
// (trim_blocks, lstrip_blocks, no trailing newline). Unsupported syntax fails naming the construct.
#pragma once
#include <string_view>

#include "tokenizer/jinja/ast.h"

namespace dsv::jinja {

Body parse_template(std::string_view source);

}  // namespace dsv::jinja
