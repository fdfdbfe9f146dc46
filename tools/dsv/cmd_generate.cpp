// dsv generate: prefill + token-by-token decode over the latent KV cache, greedy or sampled.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>

#include "cli_util.h"
#include "core/error.h"
#include "commands.h"
#include "infer/generate.h"
#include "model/model.h"

namespace dsv::cli {
namespace {

struct GenerateArgs {
  std::string model, prompt, prompt_ids, device = "cpu";
  int64_t max_new_tokens = 32;
  float temperature = 0.0f, top_p = 1.0f;
  int64_t top_k = 0;
  uint64_t seed = 0;
  bool ignore_eos = false;
};

void run_generate(const GenerateArgs& a) {
  DSV_CHECK(a.device == "cpu", "--device {}: only \"cpu\" is available in this build", a.device);
  DSV_CHECK(!a.prompt.empty() || !a.prompt_ids.empty(), "give the prompt as --prompt TEXT or --prompt-ids 1,2,3");
  DSV_CHECK(a.prompt.empty() || a.prompt_ids.empty(), "give either --prompt or --prompt-ids, not both");
  DSV_CHECK(a.max_new_tokens >= 0, "--max-new-tokens must be >= 0, found {}", a.max_new_tokens);
  DSV_CHECK(a.temperature >= 0.0f, "--temperature must be >= 0, found {}", a.temperature);
  DSV_CHECK(a.top_p > 0.0f && a.top_p <= 1.0f, "--top-p must be in (0, 1], found {}", a.top_p);
  DSV_CHECK(a.prompt.empty(), "--prompt needs the tokenizer, which is not in this build yet; use --prompt-ids");
  auto model = load_model(a.model);
  const std::vector<int32_t> prompt = parse_id_list(a.prompt_ids, "--prompt-ids");
  GenerateOptions opt;
  opt.max_new_tokens = a.max_new_tokens;
  opt.sampling = {.temperature = a.temperature, .top_k = a.top_k, .top_p = a.top_p, .seed = a.seed};
  if (!a.ignore_eos) opt.stop_ids = model->config.eos_token_ids;
  bool first = true;
  const GenerateResult r = generate(*model, prompt, opt, [&](int32_t id) {
    std::printf(first ? "%d" : ",%d", id);
    std::fflush(stdout);
    first = false;
  });
  std::printf("\n");
  const double decode_tps = r.tokens.size() > 1 ? (r.tokens.size() - 1) / r.decode_seconds : 0.0;
  fmt::print(stderr, "prompt {} tokens, prefill {:.1f} ms; generated {} tokens, {:.1f} tokens/s{}\n", prompt.size(),
             r.prefill_seconds * 1e3, r.tokens.size(), decode_tps, r.stopped_at_eos ? " (stopped at EOS)" : "");
}

}  // namespace

void register_generate(CLI::App& app) {
  static GenerateArgs a;
  auto* cmd = app.add_subcommand("generate", "Generate a continuation of a prompt (greedy or sampled)");
  cmd->add_option("--model", a.model, "Hugging Face model directory")->required();
  cmd->add_option("--prompt", a.prompt, "Prompt text (encoded with the model directory's tokenizer)");
  cmd->add_option("--prompt-ids", a.prompt_ids, "Prompt as comma-separated token ids, e.g. 0,15,27");
  cmd->add_option("--max-new-tokens", a.max_new_tokens, "Tokens to generate at most")->capture_default_str();
  cmd->add_option("--temperature", a.temperature, "Sampling temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", a.top_k, "Sample among the k most likely tokens; 0 = all")->capture_default_str();
  cmd->add_option("--top-p", a.top_p, "Nucleus sampling: smallest set with this probability mass")
      ->capture_default_str();
  cmd->add_option("--seed", a.seed, "Random seed for sampling")->capture_default_str();
  cmd->add_flag("--ignore-eos", a.ignore_eos, "Keep generating after the end-of-sequence token");
  cmd->add_option("--device", a.device, "cpu (cuda arrives with the CUDA backend)")->capture_default_str();
  cmd->callback([] { run_generate(a); });
}

}  // namespace dsv::cli
