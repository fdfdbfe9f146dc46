// JSONL -> Megatron indexed dataset (what `dsv preprocess` runs; Megatron's tools/preprocess_data.py).
//
// One JSON object per line; the string under json_key is one document. It is encoded without special
// tokens (as Megatron's HuggingFace tokenizer does by default: text_to_ids without
// --tokenizer-hf-include-special-tokens, i.e. no BOS), then the tokenizer's EOS is appended as EOD
// (Megatron: --append-eod). A text that encodes to no tokens gets no EOD and becomes a document with no
// sequences, as in Megatron. Each document is one sequence. Tokens are uint16 when the vocabulary has
// fewer than 65500 ids, else int32. Whitespace-only lines are skipped.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "data/indexed_dataset.h"
#include "tokenizer/tokenizer.h"

namespace dsv::data {

struct PreprocessStats {
  int64_t documents = 0;        // documents written (lines with a text)
  int64_t empty_documents = 0;  // of which encoded to no tokens
  int64_t tokens = 0;           // tokens written, EOD included
  int64_t input_bytes = 0;      // bytes of input lines read
  double seconds = 0;           // wall time so far
  TokenDtype dtype = TokenDtype::Int32;
};

struct PreprocessOptions {
  std::string input;          // JSONL file
  std::string output_prefix;  // writes output_prefix.bin and output_prefix.idx
  std::string json_key = "text";
  bool append_eod = true;
  bool add_special_tokens = false;  // true: as Megatron's --tokenizer-hf-include-special-tokens
  int workers = 0;                  // encoding threads, 0: all cores
  size_t batch_bytes = size_t{8} << 20;  // text read and encoded per batch (memory stays ~ a few batches)
  std::function<void(const PreprocessStats&)> on_progress;  // after every batch
};

// Reads, tokenizes and writes; the output appears only when everything succeeded. Errors name the
// input line (invalid JSON, missing key, a key that is not a string).
PreprocessStats preprocess_jsonl(const Tokenizer& tokenizer, const PreprocessOptions& options);

}  // namespace dsv::data
