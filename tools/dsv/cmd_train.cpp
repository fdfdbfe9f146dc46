// dsv train --recipe FILE: the training loop around train::Trainer (console line, metrics file,
// final checkpoint), and --dry-run: the resolved recipe, model size, FLOPs and memory need.
#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli_util.h"
#include "commands.h"
#include "core/error.h"
#include "device.h"
#include "io/npy.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/flops.h"
#include "train/metrics.h"
#include "train/parallel_plan.h"
#include "train/recipe.h"
#include "train/sample_source.h"
#include "train/tensorboard.h"
#include "train/trainer.h"
#ifdef DSV_HAVE_CUDA
#include "backends/cuda/cuda_ops.h"
#endif

namespace dsv::cli {
namespace {

namespace fs = std::filesystem;

struct TrainArgs {
  std::string recipe;
  std::vector<std::string> sets;
  std::string init_from, data_tokens, metrics_jsonl, out_dir, device, save, load;
  int64_t steps = 0, save_interval = 0;
  bool dry_run = false;
  // Which flags were given: a flag overrides the recipe only when present.
  CLI::Option *init_from_opt = nullptr, *data_opt = nullptr, *metrics_opt = nullptr, *out_opt = nullptr,
              *device_opt = nullptr, *steps_opt = nullptr, *save_opt = nullptr, *save_interval_opt = nullptr,
              *load_opt = nullptr;
};


// Recipe file, then --set in order, then the dedicated flags (the most specific wins).
train::TrainConfig resolve_config(const TrainArgs& a) {
  std::vector<std::string> overrides = a.sets;
  if (a.init_from_opt->count()) overrides.push_back("model.init_from=" + a.init_from);
  if (a.data_opt->count()) overrides.push_back("data.tokens=" + a.data_tokens);
  if (a.metrics_opt->count()) overrides.push_back("output.metrics_jsonl=" + a.metrics_jsonl);
  if (a.out_opt->count()) overrides.push_back("output.out_dir=" + a.out_dir);
  if (a.device_opt->count()) overrides.push_back("train.device=" + a.device);
  if (a.steps_opt->count()) overrides.push_back(fmt::format("train.steps={}", a.steps));
  if (a.save_opt->count()) overrides.push_back("checkpoint.save=" + a.save);
  if (a.save_interval_opt->count()) overrides.push_back(fmt::format("checkpoint.save_interval={}", a.save_interval));
  if (a.load_opt->count()) overrides.push_back("checkpoint.load=" + a.load);
  return train::load_recipe(a.recipe, overrides);
}

std::string gpu_name() {
#ifdef DSV_HAVE_CUDA
  ops::cuda::DeviceInfo info;
  if (ops::cuda::query_device(0, &info) == cudaSuccess) return info.name;
#endif
  return {};
}

void dry_run(const train::TrainConfig& cfg, const ModelConfig& mc, int64_t depth) {
  fmt::print("# dsv train --dry-run: the resolved recipe\n{}\n", train::describe(cfg));
  const int64_t dense = std::min(mc.first_k_dense_replace, mc.num_hidden_layers);
  fmt::print("model        {}: {} layers ({} dense + {} MoE), hidden {}, vocab {}; {} MTP module(s) declared, "
             "{} trained\n",
             mc.model_type, mc.num_hidden_layers, dense, mc.num_hidden_layers - dense, mc.hidden_size, mc.vocab_size,
             mc.num_nextn_predict_layers, depth);
  const auto trained = static_cast<double>(train::trained_parameters(mc, depth));
  fmt::print("parameters   {} total, {} active per token, MTP {} per module ({} trained); the optimizer holds {}\n",
             human_count(static_cast<double>(mc.params_total())), human_count(static_cast<double>(mc.params_active())),
             human_count(static_cast<double>(mc.params_mtp())), human_count(static_cast<double>(depth * mc.params_mtp())),
             human_count(trained));

  const train::ParallelPlan plan = train::plan_parallel(cfg, mc, depth);
  const int64_t tokens_per_step = plan.tokens_per_step;
  const double flops_token = train::train_flops_per_token(mc, cfg.seq_len, depth);
  fmt::print("tokens       {} per step (global batch {} = micro_batch {} x grad_accum {} x data parallel {}; seq_len {}), "
             "{} over {} steps\n",
             tokens_per_step, plan.global_batch, cfg.micro_batch, cfg.grad_accum, plan.dp, cfg.seq_len,
             human_count(static_cast<double>(tokens_per_step * cfg.steps)), cfg.steps);
  fmt::print("flops        {:.4g} per token (6 x active params + causal attention + MTP), {:.4g} per step, "
             "{:.4g} for the run\n",
             flops_token, flops_token * static_cast<double>(tokens_per_step),
             flops_token * static_cast<double>(tokens_per_step * cfg.steps));

  const double state_bytes = trained * (cfg.bf16_moments ? 12.0 : 16.0);
  const double act_bytes = train::activation_bytes_estimate(mc, cfg.micro_batch, cfg.seq_len, depth, cfg.recompute);
  fmt::print("one device   ~{} if the whole model trained on one device: weights + gradients + Adam moments {} ({} "
             "bytes/param: fp32 weight and gradient, {} m and v), saved activations of one micro-batch ~{} "
             "(recompute {})\n",
             human_bytes(state_bytes + act_bytes), human_bytes(state_bytes), cfg.bf16_moments ? 12 : 16,
             cfg.bf16_moments ? "bf16" : "fp32", human_bytes(act_bytes), cfg.recompute);
  fmt::print("{}", train::describe_plan(plan));

  // A planning tool: a recipe whose dataset is not there yet still gets its plan; data that is there
  // is checked as a run would check it.
  std::vector<std::string> missing;
  for (const std::string& f : {cfg.data_tokens, cfg.sft_jsonl})
    if (!f.empty() && !fs::exists(f)) missing.push_back(f);
  for (const std::string& prefix : cfg.data_paths)
    if (!fs::exists(prefix + ".idx") || !fs::exists(prefix + ".bin")) missing.push_back(prefix + ".{bin,idx}");
  if (!missing.empty()) {
    std::string list;
    for (const std::string& f : missing) list += fmt::format("{}{}", list.empty() ? "" : ", ", f);
    fmt::print("data         not checked: {} not found (make it with `dsv preprocess`, then train)\n", list);
  } else {
    const double samples_read = static_cast<double>(cfg.steps * cfg.micro_batch * cfg.grad_accum);
    const auto data = train::make_sample_source(cfg, mc, train::Split::Train);
    fmt::print("data         {}; the run reads {:.0f} samples ({:.2f} epochs)\n", data->describe(), samples_read,
               samples_read / static_cast<double>(data->num_samples()));
    if (const auto valid = train::make_sample_source(cfg, mc, train::Split::Valid))
      fmt::print("validation   {}; {} samples every {} steps\n", valid->describe(), cfg.eval_iters * cfg.micro_batch,
                 cfg.eval_interval);
  }
  if (!cfg.save_dir.empty())
    fmt::print("checkpoints  {} every {} steps and at the end, keeping the last {}\n", cfg.save_dir,
               cfg.save_interval > 0 ? fmt::format("{}", cfg.save_interval) : std::string("(none)"),
               cfg.keep_last > 0 ? fmt::format("{}", cfg.keep_last) : std::string("all"));
  if (!cfg.load_dir.empty()) fmt::print("resume       from {}\n", cfg.load_dir);
  if (!cfg.out_dir.empty()) fmt::print("output       final weights to {}\n", cfg.out_dir);
}

void copy_tokenizer(const std::string& from, const std::string& to) {
  for (const char* name : kTokenizerFiles) {
    const fs::path src = fs::path(from) / name;
    if (!fs::exists(src)) continue;
    std::ifstream in(src, std::ios::binary);
    DSV_CHECK(in.good(), "output.tokenizer: cannot read {}", src.string());
    std::stringstream ss;
    ss << in.rdbuf();
    write_file_atomic((fs::path(to) / name).string(), ss.str());
  }
}

void run_train(const TrainArgs& a) {
  const train::TrainConfig cfg = resolve_config(a);
  const ModelConfig mc = train::recipe_model_config(cfg);
  train::check_recipe_fits(cfg, mc);
  const int64_t depth = train::resolved_mtp_depth(cfg, mc);
  if (a.dry_run) return dry_run(cfg, mc, depth);
  train::plan_parallel(cfg, mc, depth);  // an impossible layout is an error before anything loads

  // Fail before training, not after it.
  if (!cfg.tokenizer.empty())
    DSV_CHECK(fs::exists(fs::path(cfg.tokenizer) / "tokenizer.json"),
              "output.tokenizer {}: expected a directory with tokenizer.json", cfg.tokenizer);
  if (cfg.device == "cuda") ensure_cuda_backend();

  train::Trainer trainer(cfg);
  if (!cfg.load_dir.empty()) {
    // Restart scripts pass the same --load every time: nothing there yet means a fresh start.
    if (!fs::exists(fs::path(cfg.load_dir) / "latest") && !fs::exists(fs::path(cfg.load_dir) / "trainer_state.json")) {
      fmt::print(stderr, "dsv: warning: checkpoint.load {}: no checkpoint there (no `latest`); starting from step 0\n",
                 cfg.load_dir);
    } else {
      for (const std::string& w : trainer.load_checkpoint(cfg.load_dir)) fmt::print(stderr, "dsv: warning: {}\n", w);
      fmt::print(stderr, "dsv train: resumed from {} at step {}\n", train::find_checkpoint(cfg.load_dir),
                 trainer.steps_done());
    }
  }
  const double flops_token = train::train_flops_per_token(mc, cfg.seq_len, depth);
  const double peak = train::device_peak_flops(cfg.device, cfg.device == "cuda" ? gpu_name() : std::string());
  fmt::print(stderr, "dsv train: {} steps of {} x {} x {} tokens on {}, {} parameters\n", cfg.steps, cfg.micro_batch,
             cfg.grad_accum, cfg.seq_len, cfg.device, human_count(static_cast<double>(trainer.parameter_count())));

  std::unique_ptr<train::MetricsWriter> metrics;
  // A resumed run keeps the metrics of the steps before its checkpoint and rewrites the rest.
  const int64_t first_step = trainer.steps_done();
  if (!cfg.metrics_jsonl.empty())
    metrics = std::make_unique<train::MetricsWriter>(cfg.metrics_jsonl, first_step > 0 ? first_step : -1);
  std::unique_ptr<train::TensorBoardWriter> board;
  if (!cfg.tensorboard.empty()) board = std::make_unique<train::TensorBoardWriter>(cfg.tensorboard);
  train::ConsoleProgress progress(cfg.steps, cfg.log_interval);
  // Test hook (tests/cli/train_e2e.cmake): SIGKILL right after this optimizer step, before its save.
  const char* kill_after = std::getenv("DSV_TEST_KILL_AFTER_STEP");
  const auto save = [&](int64_t step) {
    progress.finish();
    const std::string dir = trainer.save_checkpoint(cfg.save_dir, cfg.tokenizer, cfg.keep_last);
    fmt::print(stderr, "dsv train: step {}: checkpoint saved to {}\n", step, dir);
  };
  const auto start = std::chrono::steady_clock::now();
  train::StepMetrics last;
  try {
    for (int64_t s = trainer.steps_done(); s < cfg.steps; ++s) {
      train::StepMetrics m = trainer.step();
      // Throughput and MFU from the step's own time when the trainer leaves them to the caller.
      if (m.tokens_per_second == 0.0 && m.step_seconds > 0.0)
        m.tokens_per_second = static_cast<double>(m.tokens) / m.step_seconds;
      if (m.mfu == 0.0 && peak > 0.0) m.mfu = flops_token * m.tokens_per_second / peak;
      if (m.skipped)
        progress.warn(fmt::format("step {} skipped: loss {}, gradient norm {} (not finite); no update applied",
                                  m.step, m.loss, m.grad_norm));
      if (metrics) metrics->write(m);
      if (board) board->write(m);
      progress.update(m, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      last = m;
      if (cfg.eval_interval > 0 && trainer.has_validation() &&
          (m.step % cfg.eval_interval == 0 || m.step == cfg.steps)) {
        const double val = trainer.evaluate();
        if (metrics) metrics->write_validation(m.step, val);
        if (board) board->write_validation(m.step, val);
        progress.finish();
        fmt::print(stderr, "dsv train: step {}: validation loss {:.4f}\n", m.step, val);
      }
      if (kill_after && std::to_string(m.step) == kill_after) std::raise(SIGKILL);
      if (!cfg.save_dir.empty() && (m.step == cfg.steps || (cfg.save_interval > 0 && m.step % cfg.save_interval == 0)))
        save(m.step);
    }
  } catch (...) {
    progress.finish();  // the error message starts on a line of its own
    throw;
  }
  progress.finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (last.step > 0)
    fmt::print(stderr, "dsv train: {} steps in {}{}, final loss {:.4f}\n", last.step - first_step,
               train::format_duration(seconds),
               first_step > 0 ? fmt::format(" (steps {}-{}, resumed)", first_step + 1, last.step) : std::string(),
               last.loss);
  else
    fmt::print(stderr, "dsv train: nothing to do: the checkpoint is at step {} of train.steps {}\n",
               trainer.steps_done(), cfg.steps);
  if (!cfg.out_dir.empty()) {
    trainer.save_hf(cfg.out_dir);
    if (!cfg.tokenizer.empty()) copy_tokenizer(cfg.tokenizer, cfg.out_dir);
    fmt::print(stderr, "dsv train: weights saved to {}\n", cfg.out_dir);
  }
}

}  // namespace

void register_train(CLI::App& app) {
  static TrainArgs a;
  auto* cmd = app.add_subcommand(
      "train", "Train a model from a recipe (recipes/*.toml); flags and --set override the recipe's keys");
  cmd->add_option("--recipe", a.recipe, "Recipe TOML file, e.g. recipes/debug.toml")->required();
  cmd->add_option("--set", a.sets, "Override a recipe key: section.key=value, e.g. optimizer.lr=1e-3 (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  a.init_from_opt = cmd->add_option("--init-from", a.init_from, "Start from this HF checkpoint (model.init_from)");
  a.data_opt = cmd->add_option("--data-tokens", a.data_tokens, "Flat int32 token file (data.tokens)");
  a.metrics_opt = cmd->add_option("--metrics-jsonl", a.metrics_jsonl, "Write one JSON line per step (output.metrics_jsonl)");
  a.out_opt = cmd->add_option("--out", a.out_dir, "Save the final weights as an HF checkpoint here (output.out_dir)");
  a.steps_opt = cmd->add_option("--steps", a.steps, "Optimizer steps (train.steps)");
  a.device_opt = cmd->add_option("--device", a.device, "cpu or cuda (train.device)");
  a.save_opt = cmd->add_option("--save", a.save,
                               "Save resumable checkpoints (weights, Adam state, data position) here (checkpoint.save)");
  a.save_interval_opt =
      cmd->add_option("--save-interval", a.save_interval, "Save every N steps, and always at the end (checkpoint.save_interval)");
  a.load_opt = cmd->add_option("--load", a.load,
                               "Resume from this directory's latest checkpoint (checkpoint.load); none there: start fresh");
  cmd->add_flag("--dry-run", a.dry_run,
                "Print the resolved recipe, parameter counts, FLOPs per token and the memory need, then exit");
  cmd->callback([] { run_train(a); });
}

}  // namespace dsv::cli
