// libFuzzer target for the tokenizer: arbitrary bytes as text to encode, as ids to decode, as a
// chat template, and as tokenizer.json. Any crash, sanitizer report or exception other than
// dsv::Error is a bug. Build with clang (tests/fuzz/CMakeLists.txt), run e.g.
//   ./fuzz_tokenizer -max_total_time=60 -max_len=4096
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace {

const dsv::Tokenizer& tiny() {
  static const dsv::Tokenizer tk = dsv::Tokenizer::load(DSV_SOURCE_DIR "/models/tiny");
  return tk;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 4;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  const dsv::Tokenizer& tk = tiny();
  try {
    switch (mode) {
      case 0: {  // encode, then decode must give the lossy form of the input back
        const auto ids = tk.encode(body, true);
        if (tk.decode(ids, true) != dsv::tok::utf8_lossy(body)) std::abort();
        break;
      }
      case 1: {  // decode of arbitrary ids
        std::vector<int32_t> ids;
        for (size_t i = 0; i + 4 <= body.size(); i += 4) {
          int32_t v;
          __builtin_memcpy(&v, body.data() + i, 4);
          ids.push_back(v % 1024);
        }
        (void)tk.decode(ids, (data[0] & 4) != 0);
        break;
      }
      case 2: {  // arbitrary template text
        nlohmann::ordered_json vars = {{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                                       {"add_generation_prompt", true}, {"bos_token", "<s>"}};
        (void)dsv::render_chat_template(body, vars);
        break;
      }
      case 3:  // arbitrary tokenizer.json
        (void)dsv::Tokenizer::from_json_text(body, "", "fuzz");
        break;
    }
  } catch (const dsv::Error&) {
    // expected for bad input
  }
  return 0;
}
