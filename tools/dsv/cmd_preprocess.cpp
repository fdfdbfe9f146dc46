// dsv preprocess: a JSONL corpus to a Megatron indexed dataset (PREFIX.bin + PREFIX.idx) for
// data.paths in a training recipe (docs/DATA.md). The work is data::preprocess_jsonl.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

#include "commands.h"
#include "core/error.h"
#include "data/preprocess.h"
#include "tokenizer/tokenizer.h"

namespace dsv::cli {

namespace {

struct PreprocessArgs {
  data::PreprocessOptions options;
  std::string tokenizer;
  bool no_eod = false;
};

std::string rate_line(const data::PreprocessStats& s) {
  const double t = s.seconds > 0 ? s.seconds : 1e-9;
  return fmt::format("{} documents, {} tokens, {:.1f} MB in {:.1f} s: {:.2f} MB/s, {:.0f} docs/s, {:.0f} tokens/s",
                     s.documents, s.tokens, s.input_bytes / 1e6, s.seconds, s.input_bytes / 1e6 / t, s.documents / t,
                     s.tokens / t);
}

void run(PreprocessArgs& a) {
  data::PreprocessOptions& o = a.options;
  o.append_eod = !a.no_eod;
  const Tokenizer tk = Tokenizer::load(a.tokenizer);
  // One progress line on stderr at most every second: rewritten in place on a terminal, one per update otherwise.
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  auto last = std::chrono::steady_clock::now();
  bool printed = false;
  o.on_progress = [&](const data::PreprocessStats& s) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last < std::chrono::seconds(1)) return;
    last = now;
    printed = true;
    std::fprintf(stderr, "%spreprocess: %s%s", tty ? "\r" : "", rate_line(s).c_str(), tty ? "" : "\n");
    std::fflush(stderr);
  };
  const data::PreprocessStats s = data::preprocess_jsonl(tk, o);
  if (printed && tty) std::fprintf(stderr, "\n");
  const unsigned threads = o.workers > 0 ? static_cast<unsigned>(o.workers) : std::thread::hardware_concurrency();
  const std::string empty = s.empty_documents ? fmt::format("; {} empty documents", s.empty_documents) : "";
  fmt::print(stderr, "preprocess: wrote {0}.bin and {0}.idx ({1} tokens, {2} EOD): {3} on {4} thread(s){5}\n",
             o.output_prefix, data::dtype_name(s.dtype), o.append_eod ? "with" : "without", rate_line(s), threads,
             empty);
}

}  // namespace

void register_preprocess(CLI::App& app) {
  auto a = std::make_shared<PreprocessArgs>();
  CLI::App* cmd = app.add_subcommand(
      "preprocess",
      "JSONL corpus to a Megatron indexed dataset (PREFIX.bin + PREFIX.idx) for data.paths.\n"
      "Each line is a JSON object; its text is encoded WITHOUT special tokens (no BOS; as Megatron's "
      "preprocess_data.py with a HuggingFace tokenizer by default), then the tokenizer's EOS is appended as "
      "end-of-document. Tokens are uint16 for vocabularies under 65500 ids, else int32. Blank lines are skipped; "
      "a line that is not a JSON object with a string under --json-key is an error naming the line. The output "
      "is written to temporary names and renamed when complete.");
  cmd->add_option("--input", a->options.input, "JSONL file, one JSON object per line")->required();
  cmd->add_option("--tokenizer", a->tokenizer, "Folder with tokenizer.json (and tokenizer_config.json)")->required();
  cmd->add_option("--output-prefix", a->options.output_prefix,
                  "Output path without suffix: writes PREFIX.bin and PREFIX.idx")
      ->required();
  cmd->add_option("--workers", a->options.workers, "Encoding threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--json-key", a->options.json_key, "The field holding each document's text")
      ->capture_default_str();
  cmd->add_flag("--no-eod", a->no_eod, "Do not append EOS after each document");
  cmd->add_flag("--add-special-tokens", a->options.add_special_tokens,
                "Encode with the tokenizer's special tokens (BOS for DeepSeek), as Megatron's "
                "--tokenizer-hf-include-special-tokens");
  cmd->callback([a] { run(*a); });
}

}  // namespace dsv::cli
