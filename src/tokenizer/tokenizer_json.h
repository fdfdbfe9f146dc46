// Fast reading of tokenizer.json: a small JSON reader that streams model.vocab and model.merges
// (almost all of the file) straight into vectors and builds an ordinary nlohmann DOM for the
// rest. nlohmann's own lexer alone takes about half the 200 ms load budget on this file.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dsv::tok {

struct TokenizerJson {
  nlohmann::json doc;  // the file without model.vocab and model.merges
  std::vector<std::pair<std::string, int32_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;
  bool has_vocab = false, has_merges = false;
};

// Strict JSON (RFC 8259). `where` names the file in error messages.
TokenizerJson parse_tokenizer_json(std::string_view text, const std::string& where);

}  // namespace dsv::tok
