// Megatron-LM's indexed dataset (megatron/core/datasets/indexed_dataset.py): PREFIX.bin holds every
// token of every sequence back to back; PREFIX.idx describes them. All integers little-endian:
//
//   offset 0   9 bytes  magic "MMIDIDX\0\0"
//          9   u64      version, 1
//         17   u8       dtype code of the tokens in .bin: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
//                       6 float64, 7 float32, 8 uint16
//         18   u64      S, the number of sequences
//         26   u64      K, the number of document indices (documents + 1)
//         34   int32[S] sequence lengths, in tokens
//              int64[S] sequence pointers, byte offsets into .bin (0, then running sums of length * itemsize)
//              int64[K] document indices: 0, then after each document the number of sequences so far;
//                       document d is sequences [doc[d], doc[d+1]) (an empty document repeats a value)
//              int8[S]  sequence modes, only in Megatron's multimodal files (accepted, ignored)
//
// Megatron's preprocessing writes one sequence per document (or one per sentence with
// --split-sentences), and the tokens as uint16 when the vocabulary has fewer than 65500 ids, else int32.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "io/mapped_file.h"

namespace dsv::data {

enum class TokenDtype : uint8_t { UInt8 = 1, Int8 = 2, Int16 = 3, Int32 = 4, Int64 = 5, Float64 = 6, Float32 = 7, UInt16 = 8 };

// Bytes per element of a dtype code (1..8).
size_t dtype_size(TokenDtype dtype);
// "uint16", "int32", ... (numpy's names, as Megatron's DType enum).
const char* dtype_name(TokenDtype dtype);
// Megatron's DType.optimal_dtype: uint16 when vocab_size < 65500, else int32.
TokenDtype optimal_token_dtype(int64_t vocab_size);

// A read-only indexed dataset, mapped in place. The constructor checks the structure once (magic,
// version, dtype, sizes, that pointers are contiguous and stay inside .bin, document indices) and,
// when vocab_size > 0, that every token id is in [0, vocab_size). Afterwards nothing can fail.
// The tokens of all sequences form one stream; document d is the token range
// [document_begin(d), document_end(d)) of it.
class IndexedDataset {
 public:
  explicit IndexedDataset(const std::string& prefix, int64_t vocab_size = 0);

  const std::string& prefix() const { return prefix_; }
  std::string bin_path() const { return prefix_ + ".bin"; }
  TokenDtype dtype() const { return dtype_; }
  int64_t num_sequences() const { return num_sequences_; }
  int64_t num_documents() const { return num_documents_; }
  int64_t num_tokens() const { return num_tokens_; }

  int32_t sequence_length(int64_t i) const;       // tokens of sequence i
  int64_t sequence_begin(int64_t i) const;        // first token of sequence i (i == S: num_tokens())
  int64_t document_first_sequence(int64_t d) const;  // doc[d], 0 <= d <= num_documents()
  int64_t document_begin(int64_t d) const { return sequence_begin(document_first_sequence(d)); }
  int64_t document_end(int64_t d) const { return sequence_begin(document_first_sequence(d + 1)); }

  // count tokens of the stream from token `first`, converted to int32 (range-checked).
  void read_tokens(int64_t first, int64_t count, int32_t* out) const;
  std::vector<int32_t> tokens(int64_t first, int64_t count) const;
  std::vector<int32_t> sequence(int64_t i) const { return tokens(sequence_begin(i), sequence_length(i)); }
  std::vector<int32_t> document(int64_t d) const {
    return tokens(document_begin(d), document_end(d) - document_begin(d));
  }

 private:
  std::string prefix_;
  MappedFile idx_, bin_;
  TokenDtype dtype_ = TokenDtype::Int32;
  size_t item_ = 4;
  int64_t num_sequences_ = 0, num_documents_ = 0, num_tokens_ = 0;
  const uint8_t* lengths_ = nullptr;   // int32[S], unaligned: read with memcpy
  const uint8_t* pointers_ = nullptr;  // int64[S]
  const uint8_t* doc_idx_ = nullptr;   // int64[K]
};

// Writes PREFIX.bin and PREFIX.idx. Both go to PREFIX.bin.tmp / PREFIX.idx.tmp first; finish()
// fsyncs them and renames .bin then .idx into place, so readers never see a half-written dataset
// (a builder destroyed without finish() removes its temporaries).
class IndexedDatasetBuilder {
 public:
  IndexedDatasetBuilder(const std::string& prefix, TokenDtype dtype);
  ~IndexedDatasetBuilder();
  IndexedDatasetBuilder(const IndexedDatasetBuilder&) = delete;
  IndexedDatasetBuilder& operator=(const IndexedDatasetBuilder&) = delete;

  // One document: `tokens` is its sequences back to back, `sequence_lengths` sums to tokens.size().
  // Every id must fit the dtype. Megatron writes an empty text as a document with no sequences.
  void add_document(std::span<const int32_t> tokens, std::span<const int64_t> sequence_lengths);
  // One document of one sequence (none when tokens is empty).
  void add_document(std::span<const int32_t> tokens);
  // Writes the index and moves both files into place. No documents may be added afterwards.
  void finish();

  int64_t num_documents() const { return static_cast<int64_t>(document_indices_.size()) - 1; }
  int64_t num_sequences() const { return static_cast<int64_t>(sequence_lengths_.size()); }
  int64_t num_tokens() const { return num_tokens_; }
  TokenDtype dtype() const { return dtype_; }

 private:
  void write_bin(const void* data, size_t bytes);
  void flush_bin();

  std::string prefix_;
  TokenDtype dtype_;
  int fd_bin_ = -1;
  bool finished_ = false;
  std::vector<uint8_t> buffer_;  // pending .bin bytes
  std::vector<int32_t> sequence_lengths_;
  std::vector<int64_t> document_indices_{0};
  int64_t num_tokens_ = 0;
};

}  // namespace dsv::data
