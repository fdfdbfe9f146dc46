// dsv logits --model DIR --ids 1,2,3 --out FILE.npy: float32 logits [n_ids, vocab] of one forward pass.
#include <fmt/format.h>

#include <filesystem>

#include "cli_util.h"
#include "device.h"
#include "core/error.h"
#include "commands.h"
#include "io/npy.h"
#include "model/model.h"

namespace dsv::cli {
namespace {

struct LogitsArgs {
  std::string model, ids, out, mtp_out, dump_dir, device = "cpu", weights = "fp32";
};

void run_logits(const LogitsArgs& a) {
  const std::vector<int32_t> ids = parse_id_list(a.ids, "--ids");
  auto model = load_model_on(a.model, a.device, a.weights);
  const ModelConfig& c = model->config;
  const int64_t T = static_cast<int64_t>(ids.size());
  DSV_CHECK(T <= c.max_position_embeddings, "--ids: {} tokens exceed the model's context of {}", T,
            c.max_position_embeddings);
  std::vector<float> logits(static_cast<size_t>(T * c.vocab_size)), hidden(static_cast<size_t>(T * c.hidden_size));
  KvCache cache = make_kv_cache(*model, T);
  TapFn tap;
  int64_t dumped = 0;
  if (!a.dump_dir.empty()) {
    std::filesystem::create_directories(a.dump_dir);
    // Every named intermediate as <name>.<layer>.npy (layer -1 = outside the decoder layers).
    tap = [&](std::string_view name, int64_t layer, const float* data, const std::vector<int64_t>& shape) {
      write_npy_f32(fmt::format("{}/{}.{}.npy", a.dump_dir, name, layer), data, shape);
      ++dumped;
    };
  }
  forward(*model, ids.data(), T, cache,
          {.all_logits = true, .logits = logits.data(), .final_hidden = hidden.data(), .tap = tap});
  write_npy_f32(a.out, logits.data(), {T, c.vocab_size});
  fmt::print(stderr, "wrote {} logits [{}, {}] to {}\n", c.model_type, T, c.vocab_size, a.out);
  if (!a.mtp_out.empty()) {
    DSV_CHECK(!model->weights.mtp.empty(), "--mtp-out: {} has no MTP modules (model.layers.{}.*)", a.model,
              c.num_hidden_layers);
    DSV_CHECK(T >= 2, "--mtp-out needs at least 2 ids (MTP predicts the token after next)");
    const auto depths = mtp_logits(*model, ids.data(), T, hidden.data(), tap);
    write_npy_f32(a.mtp_out, depths[0].data(), {T - 1, c.vocab_size});
    fmt::print(stderr, "wrote MTP depth-1 logits [{}, {}] to {} (row i predicts ids[i + 2])\n", T - 1, c.vocab_size,
               a.mtp_out);
  }
  if (dumped) fmt::print(stderr, "dumped {} intermediates to {}/<name>.<layer>.npy\n", dumped, a.dump_dir);
}

}  // namespace

void register_logits(CLI::App& app) {
  static LogitsArgs a;
  auto* cmd = app.add_subcommand("logits", "Write the float32 logits [n_ids, vocab] of one forward pass as .npy");
  cmd->add_option("--model", a.model, "Hugging Face model directory")->required();
  cmd->add_option("--ids", a.ids, "Comma-separated token ids, e.g. 1,2,3")->required();
  cmd->add_option("--out", a.out, "Output .npy file (float32, C order)")->required();
  cmd->add_option("--mtp-out", a.mtp_out,
                  "Also write the first MTP module's logits [n_ids - 1, vocab] (row i predicts ids[i + 2])");
  cmd->add_option("--dump", a.dump_dir,
                  "Write every named intermediate (q, kv_latent, attn_out, router_logits, ffn_out, layer_out, ...) "
                  "as DIR/<name>.<layer>.npy, to diff against a PyTorch reference");
  cmd->add_option("--device", a.device, "cpu, or cuda (builds of the cuda preset)")->capture_default_str();
  cmd->add_option("--weights", a.weights, kWeightsHelp)->capture_default_str();
  cmd->callback([] { run_logits(a); });
}

}  // namespace dsv::cli
