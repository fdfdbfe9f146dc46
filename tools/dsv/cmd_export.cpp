// dsv export --checkpoint DIR --out HF_DIR: a training checkpoint (or any HF checkpoint, FP8 included)
// as a Hugging Face model directory: config.json, sharded safetensors + index, tokenizer files.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "cli_util.h"
#include "commands.h"
#include "core/error.h"
#include "io/hf_export.h"

namespace dsv::cli {
namespace {

struct ExportArgs {
  std::string checkpoint, out, dtype = "bf16", max_shard_size = "5GB", tokenizer;
  bool force = false;
};

void run_export(const ExportArgs& a) {
  ExportOptions o;
  o.checkpoint = a.checkpoint;
  o.out_dir = a.out;
  if (a.dtype == "bf16" || a.dtype == "bfloat16") o.dtype = DType::BF16;
  else if (a.dtype == "fp32" || a.dtype == "float32") o.dtype = DType::F32;
  else DSV_FAIL("--dtype: expected bf16 or fp32, found \"{}\"", a.dtype);
  o.max_shard_bytes = parse_byte_size(a.max_shard_size);
  o.tokenizer_dir = a.tokenizer;
  o.force = a.force;
  o.progress = true;
  const ExportResult r = export_hf(o);
  for (const std::string& w : r.warnings) fmt::print(stderr, "warning: {}\n", w);
  const ExportPlan& p = r.plan;
  std::string notes;
  if (p.mtp_modules) notes += fmt::format(", {} MTP module(s)", p.mtp_modules);
  if (p.copies_added) notes += fmt::format(", {} MTP embed/head copies added", p.copies_added);
  if (p.fp8_tensors) notes += fmt::format(", {} FP8 tensors dequantized", p.fp8_tensors);
  if (!p.dropped.empty()) notes += fmt::format(", dropped {}", fmt::join(p.dropped, " "));
  std::vector<std::string> files{"config.json", "model.safetensors.index.json"};
  files.insert(files.end(), r.companion_files.begin(), r.companion_files.end());
  fmt::print(stderr, "exported {} ({} tensors{}) to {}: {} shard(s), {} as {}, {:.1f} s ({:.0f} MB/s); also {}\n",
             r.source_dir, p.tensors.size(), notes, r.out_dir, r.shards, human_bytes(static_cast<double>(r.total_bytes)),
             a.dtype, r.seconds, static_cast<double>(r.total_bytes) / 1e6 / std::max(r.seconds, 1e-9), fmt::join(files, " "));
}

}  // namespace

void register_export(CLI::App& app) {
  static ExportArgs a;
  auto* cmd = app.add_subcommand(
      "export", "Write a checkpoint as a Hugging Face model directory: config.json, sharded safetensors with "
                "model.safetensors.index.json, tokenizer files (see docs/EXPORT.md)");
  cmd->add_option("--checkpoint", a.checkpoint,
                  "A dsv training save directory (follows its `latest`), one step directory, or any Hugging Face "
                  "checkpoint directory (bf16, fp32, or FP8 with block scales, which is dequantized)")
      ->required();
  cmd->add_option("--out", a.out, "Output directory (written as OUT.tmp-<pid>, then renamed)")->required();
  cmd->add_option("--dtype", a.dtype, "bf16 (fp32 rounds to nearest even) or fp32")->capture_default_str();
  cmd->add_option("--max-shard-size", a.max_shard_size,
                  "Largest shard: 5GB, 500MB (powers of 1000), 2GiB (powers of 1024) or bytes; a larger tensor gets "
                  "a shard of its own")
      ->capture_default_str();
  cmd->add_option("--tokenizer", a.tokenizer, "Copy the tokenizer files from this directory instead of the checkpoint's");
  cmd->add_flag("--force", a.force, "Replace --out if it exists and is not empty (the old one is removed only "
                                    "after the new one is complete)");
  cmd->callback([] { run_export(a); });
}

}  // namespace dsv::cli
