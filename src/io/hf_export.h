// Checkpoint -> Hugging Face model directory (dsv export): validated against the name table,
// converted to bf16 or fp32, sharded with model.safetensors.index.json, config and tokenizer
// alongside, written to a temporary directory and renamed into place. See docs/EXPORT.md.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace dsv {

// "5GB" (5 * 10^9), "500MB", "2GiB" (2 * 2^30), "64KiB", "123" or "123B" (bytes); units are
// case-insensitive, as transformers' max_shard_size. Throws naming `text` for anything else or 0.
uint64_t parse_byte_size(const std::string& text);

// What --checkpoint names -> the directory holding config.json and the weights: a training save
// directory (its text file `latest` names the step subdirectory), a step directory, or any HF dir.
std::string resolve_checkpoint_dir(const std::string& path);

// One tensor of the output, in output order.
struct ExportTensor {
  std::string name;                        // HF name written
  std::vector<int64_t> shape;
  const TensorEntry* source = nullptr;     // null: an empty tensor (numel 0) the source omitted
  const TensorEntry* scale_inv = nullptr;  // FP8 sources: the block scales to dequantize with
  bool copied = false;                     // an MTP module's copy of embed_tokens / lm_head the source lacked
  int64_t numel() const;
};

struct ExportPlan {
  std::vector<ExportTensor> tensors;  // the name table's order, MTP copies next to their module
  int64_t mtp_modules = 0;            // stored in the source (and written)
  int64_t copies_added = 0;           // MTP embed_tokens / shared_head.head copies written from the main model
  int64_t fp8_tensors = 0;            // dequantized
  std::vector<std::string> dropped;   // source tensors deliberately not written (a tied model's lm_head)
};

// Matches every tensor of `checkpoint` against hf_weight_table(config): a missing, unexpected,
// misshapen or integer tensor, an FP8 weight without valid block scales, or more MTP modules than
// config.json declares -> one dsv::Error listing the problems. Nothing is read beyond the headers.
ExportPlan plan_export(const ModelConfig& config, const Checkpoint& checkpoint);

// Groups consecutive tensors (sizes in bytes, in output order) into shards of at most max_bytes;
// a tensor larger than max_bytes gets a shard of its own. Returns each shard's tensor indices.
std::vector<std::vector<size_t>> plan_shards(const std::vector<uint64_t>& sizes, uint64_t max_bytes);

// config.json text for the export: torch_dtype (and dtype, when present) set to `dtype`'s torch
// name, quantization_config removed (the weights written are never quantized); the rest kept in order.
std::string export_config_json(const std::string& config_text, DType dtype, const std::string& origin);

struct ExportOptions {
  std::string checkpoint;                    // see resolve_checkpoint_dir
  std::string out_dir;
  DType dtype = DType::BF16;                 // BF16 or F32
  uint64_t max_shard_bytes = 5'000'000'000;  // transformers' default "5GB"
  std::string tokenizer_dir;                 // empty: the tokenizer files of the source directory
  bool force = false;                        // replace an existing non-empty out_dir
  bool progress = false;                     // per-shard lines on stderr for exports over 1 GiB
};

struct ExportResult {
  std::string source_dir, out_dir;
  ExportPlan plan;  // names and counts; its source pointers are cleared (the checkpoint is closed by then)
  int64_t shards = 0;
  uint64_t total_bytes = 0;                // tensor data written (the index's total_size)
  std::vector<std::string> companion_files;  // tokenizer / generation config files copied
  std::vector<std::string> warnings;
  double seconds = 0;
};

ExportResult export_hf(const ExportOptions& options);

}  // namespace dsv
