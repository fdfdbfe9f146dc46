// dsv generate: prefill + token-by-token decode over the latent KV cache, greedy or sampled.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <optional>

#include "cli_util.h"
#include "device.h"
#include "core/error.h"
#include "commands.h"
#include "infer/generate.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>

namespace dsv::cli {
namespace {

struct GenerateArgs {
  std::string model, prompt, prompt_ids, tokenizer, system, device = "cpu", weights = "fp32";
  bool chat = false;
  int64_t max_new_tokens = 32;
  float temperature = 0.0f, top_p = 1.0f;
  int64_t top_k = 0;
  uint64_t seed = 0;
  bool ignore_eos = false;
};

void run_generate(const GenerateArgs& a) {
  DSV_CHECK(!a.prompt.empty() || !a.prompt_ids.empty(), "give the prompt as --prompt TEXT or --prompt-ids 1,2,3");
  DSV_CHECK(a.prompt.empty() || a.prompt_ids.empty(), "give either --prompt or --prompt-ids, not both");
  DSV_CHECK(a.max_new_tokens >= 0, "--max-new-tokens must be >= 0, found {}", a.max_new_tokens);
  DSV_CHECK(a.temperature >= 0.0f, "--temperature must be >= 0, found {}", a.temperature);
  DSV_CHECK(a.top_p > 0.0f && a.top_p <= 1.0f, "--top-p must be in (0, 1], found {}", a.top_p);
  DSV_CHECK(!a.chat || !a.prompt.empty(), "--chat wraps --prompt TEXT as a user message; give --prompt");
  auto model = load_model_on(a.model, a.device, a.weights);
  const bool text_mode = !a.prompt.empty();
  std::optional<Tokenizer> tok;
  std::vector<int32_t> prompt;
  if (text_mode) {
    tok = Tokenizer::load(a.tokenizer.empty() ? a.model : a.tokenizer);
    if (a.chat) {
      nlohmann::ordered_json messages = nlohmann::ordered_json::array();
      if (!a.system.empty()) messages.push_back({{"role", "system"}, {"content", a.system}});
      messages.push_back({{"role", "user"}, {"content", a.prompt}});
      // The template writes BOS itself: encode without adding special tokens.
      prompt = tok->encode(tok->apply_chat_template(messages, true, nlohmann::ordered_json::object()), false);
    } else {
      prompt = tok->encode(a.prompt, true);
    }
  } else {
    prompt = parse_id_list(a.prompt_ids, "--prompt-ids");
  }
  GenerateOptions opt;
  opt.max_new_tokens = a.max_new_tokens;
  opt.sampling = {.temperature = a.temperature, .top_k = a.top_k, .top_p = a.top_p, .seed = a.seed};
  if (!a.ignore_eos) {
    opt.stop_ids = model->config.eos_token_ids;
    if (tok && tok->eos_id()) opt.stop_ids.push_back(*tok->eos_id());
  }
  bool first = true;
  std::vector<int32_t> generated;
  size_t printed = 0;  // bytes of decoded text already written
  if (text_mode) std::printf("%s", a.prompt.c_str());
  const GenerateResult r = generate(*model, prompt, opt, [&](int32_t id) {
    if (!text_mode) {
      std::printf(first ? "%d" : ",%d", id);
    } else {
      // Stream text: decode everything so far and print what is new, holding back an incomplete
      // UTF-8 sequence (decoded as U+FFFD) until its remaining bytes arrive.
      generated.push_back(id);
      const std::string text = tok->decode(generated, /*skip_special_tokens=*/true);
      const bool partial = text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
      if (!partial && text.size() > printed) {
        std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
        printed = text.size();
      }
    }
    std::fflush(stdout);
    first = false;
  });
  std::printf("\n");
  std::fflush(stdout);
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
  cmd->add_flag("--chat", a.chat, "Wrap --prompt as a user message with the tokenizer's chat template");
  cmd->add_option("--system", a.system, "System prompt for --chat");
  cmd->add_option("--tokenizer", a.tokenizer, "Tokenizer directory (default: --model)");
  cmd->add_option("--prompt-ids", a.prompt_ids, "Prompt as comma-separated token ids, e.g. 0,15,27");
  cmd->add_option("--max-new-tokens", a.max_new_tokens, "Tokens to generate at most")->capture_default_str();
  cmd->add_option("--temperature", a.temperature, "Sampling temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", a.top_k, "Sample among the k most likely tokens; 0 = all")->capture_default_str();
  cmd->add_option("--top-p", a.top_p, "Nucleus sampling: smallest set with this probability mass")
      ->capture_default_str();
  cmd->add_option("--seed", a.seed, "Random seed for sampling")->capture_default_str();
  cmd->add_flag("--ignore-eos", a.ignore_eos, "Keep generating after the end-of-sequence token");
  cmd->add_option("--device", a.device, "cpu, or cuda (builds of the cuda preset)")->capture_default_str();
  cmd->add_option("--weights", a.weights, kWeightsHelp)->capture_default_str();
  cmd->callback([] { run_generate(a); });
}

}  // namespace dsv::cli
