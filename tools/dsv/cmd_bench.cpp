// dsv bench infer: a random-weight model of a config on the device; prefill and decode speed,
// latent-cache size, and decode bandwidth against the measured memory roofline.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "commands.h"
#include "core/error.h"
#include "device.h"
#include "infer/sampler.h"
#include "io/npy.h"
#include "model/model.h"
#include "ops/counter_rng.h"
#include "train/flops.h"
#include "train/trainer.h"
#ifdef DSV_HAVE_CUDA
#include <cuda_runtime.h>

#include "backends/cuda/cuda_ops.h"
#endif

namespace dsv::cli {
namespace {

struct BenchArgs {
  std::string config, json_out, device =
#ifdef DSV_HAVE_CUDA
      "cuda";
#else
      "cpu";
#endif
  std::string weights = "bf16";
  int64_t batch = 1, prompt_len = 512, gen_len = 64;
  uint64_t seed = 1;
  bool tf32 = false, bf16_products = false, eager = false, host_turn = false;
};

// --tf32 / --bf16: the device's precision for fp32 matrix products and the prefill/training attention.
ops::MatmulPrecision products_precision(bool tf32, bool bf16) {
  return bf16 ? ops::MatmulPrecision::Bf16 : tf32 ? ops::MatmulPrecision::Tf32 : ops::MatmulPrecision::Fp32;
}
const char* products_name(bool tf32, bool bf16) { return bf16 ? "bf16" : tf32 ? "tf32" : "fp32"; }

void run_bench_infer(const BenchArgs& a) {
  const ModelConfig c = load_model_config_file(a.config, "--config " + a.config);
  DSV_CHECK(a.batch >= 1 && a.batch <= 4096, "--batch {}: expected 1 .. 4096 sequences", a.batch);
  DSV_CHECK(a.prompt_len >= 1 && a.gen_len >= 1, "--prompt-len and --gen-len must be >= 1");
  const int64_t context = a.prompt_len + a.gen_len;
  // Each sequence's cache also holds the two untimed warm-up steps of the decoder (eager, capture).
  constexpr int64_t kWarmSteps = 2;
  const int64_t capacity = context + kWarmSteps, B = a.batch;
  DSV_CHECK(context <= c.max_position_embeddings,
            "--prompt-len {} + --gen-len {} exceeds the model's context of {} tokens", a.prompt_len, a.gen_len,
            c.max_position_embeddings);
  const bool bf16 = bf16_weights_option(a.weights);
  const double elt = bf16 ? 2.0 : 4.0;  // bytes per stored matrix value and per cached latent value
  const int64_t V = c.vocab_size, D = c.hidden_size, L = c.num_hidden_layers, width = c.kv_lora_rank + c.qk_rope_head_dim;
  // Kept fp32 in bf16 storage: the embedding table and the MoE routers (store_weights_bf16); norms
  // and biases are counted as matrices (a rounding error in these totals).
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < L; ++l) moe_layers += c.is_moe_layer(l);
  const int64_t router_params = moe_layers * c.n_routed_experts * D;
  const double fp32_params = static_cast<double>(router_params + V * D);
  [[maybe_unused]] const double weight_bytes = elt * (static_cast<double>(c.params_total()) - fp32_params) +
                                               4.0 * fp32_params;
  [[maybe_unused]] const double cache_bytes = elt * static_cast<double>(L * width * capacity * B);
  double roofline = 0;  // bytes/s
  ops::set_matmul_precision(products_precision(a.tf32, a.bf16_products));
  ops::Backend backend = ops::Backend::Cpu;
  if (a.device == "cuda") {
#ifdef DSV_HAVE_CUDA
    ensure_cuda_backend();
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    // Weights + cache + activations of one prefill (a generous 64 floats per token per hidden unit;
    // sequences are prefilled one at a time) + logits and expert scratch of a decode step.
    const double step_bytes = 4.0 * static_cast<double>(B) *
                              (2.0 * V + c.num_experts_per_tok * (c.moe_intermediate_size + D) + 64.0 * D);
    const double needed = weight_bytes + cache_bytes + 4.0 * 64 * static_cast<double>(a.prompt_len * D) + step_bytes;
    DSV_CHECK(needed < 0.95 * static_cast<double>(free_bytes),
              "this run needs about {} of GPU memory ({} weights {}, cache of {} x {} tokens {}); {} are free: "
              "refused before any work", human_bytes(needed), a.weights, human_bytes(weight_bytes), B, capacity,
              human_bytes(cache_bytes), human_bytes(static_cast<double>(free_bytes)));
    roofline = ops::cuda::measure_copy_bandwidth(size_t{1} << 30);
    backend = ops::Backend::Cuda;
#else
    DSV_FAIL("--device cuda: this dsv was built without CUDA (configure with `cmake --preset cuda`)");
#endif
  } else {
    DSV_CHECK(a.device == "cpu", "--device {}: expected cpu or cuda", a.device);
  }
  fmt::print(stderr, "building a random {} model ({} parameters, {} weights) on {}...\n", c.model_type,
             human_count(static_cast<double>(c.params_total())), a.weights, a.device);
  auto model = random_model(c, backend, a.seed, 0.02f, bf16);

  // One random prompt per sequence.
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(B), std::vector<int32_t>(static_cast<size_t>(a.prompt_len)));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < a.prompt_len; ++i)
      prompts[b][i] = static_cast<int32_t>(ops::splitmix64(a.seed + b * 1000003 + i) % static_cast<uint64_t>(V));
  std::vector<float> logits(static_cast<size_t>(B * V));
  using clock = std::chrono::steady_clock;
  auto seconds = [](auto t0) { return std::chrono::duration<double>(clock::now() - t0).count(); };

  {  // warm-up on the timed prefill shape: kernels are loaded on first use, library handles made and the
     // allocator's cache filled before anything is timed (the decoder warms up on its own cache below)
    KvCache warm = make_kv_cache(*model, a.prompt_len);
    forward(*model, prompts[0].data(), a.prompt_len, warm, {.all_logits = false, .logits = logits.data()});
  }
  ops::op_profile_reset();
  KvCache cache = make_kv_cache(*model, capacity, B);
  std::vector<int32_t> next(static_cast<size_t>(B));
  double ttft_s = 0;
  auto t0 = clock::now();
  for (int64_t b = 0; b < B; ++b) {  // one prefill per sequence (forward() returns logits on the host: done)
    forward(*model, prompts[b].data(), a.prompt_len, cache, {.all_logits = false, .logits = logits.data(), .sequence = b});
    next[b] = argmax(logits.data(), V);
    if (b == 0) ttft_s = seconds(t0);
  }
  const double prefill_s = seconds(t0);
  if (ops::op_profile_enabled())
    fmt::print(stderr, "# op profile of the prefill (DSV_OP_PROFILE: synchronized ops)\n{}", ops::op_profile_summary());
  BatchDecoder decoder(*model, cache, /*use_graph=*/!a.eager);
  std::vector<int32_t> chosen(static_cast<size_t>(B));
  // Greedy on the device, as `dsv generate` decodes: each step feeds the next on the device and the host
  // reads the tokens one step behind (--host-turn: the tokens come back before the next step is issued).
  auto sync_step = [&] {
    decoder.step(next.data(), nullptr, chosen.data());
    next.swap(chosen);
  };
  for (int64_t w = 0; w < kWarmSteps; ++w) sync_step();  // eager step, then the graph's capture
  ops::op_profile_reset();
  t0 = clock::now();
  if (a.host_turn) {
    for (int64_t g = 0; g < a.gen_len; ++g) sync_step();
  } else {
    decoder.enqueue_greedy(next.data());
    for (int64_t g = 1; g <= a.gen_len; ++g) {
      if (g < a.gen_len) decoder.enqueue_greedy(nullptr);
      decoder.read_greedy(next.data());
    }
  }
  const double decode_s = seconds(t0);
  if (ops::op_profile_enabled())
    fmt::print(stderr, "# op profile of the {} decode steps (DSV_OP_PROFILE: synchronized ops)\n{}", a.gen_len,
               ops::op_profile_summary());

  // Fewest bytes one decode step must read: the weights it uses (embedding rows, the whole head, the
  // experts B tokens reach: under uniform routing E (1 - (1 - K/E)^B) of each MoE layer's E) and the
  // latent cache rows attended (mean length over the timed steps), for all B sequences.
  // The embedding rows and the routers are fp32; the head and every other matrix `elt` bytes a value.
  const double E = static_cast<double>(c.n_routed_experts), K = static_cast<double>(c.num_experts_per_tok);
  const double expert_params = 3.0 * static_cast<double>(D * c.moe_intermediate_size);
  const double experts_reached = E > 0 ? E * (1.0 - std::pow(1.0 - K / E, static_cast<double>(B))) : 0.0;
  const double active = static_cast<double>(c.params_active()) - double(V * D) - double(router_params) +
                        (c.tie_word_embeddings ? double(V * D) : 0.0) +
                        double(moe_layers) * (experts_reached - K) * expert_params;
  const double mean_len = a.prompt_len + kWarmSteps + (a.gen_len - 1) / 2.0;
  const double bytes_per_step = elt * active + 4.0 * double(B * D + router_params) +
                                elt * static_cast<double>(L * width) * mean_len * static_cast<double>(B);
  const double step_s = decode_s / a.gen_len;
  const double decode_tps = static_cast<double>(B) * a.gen_len / decode_s;
  const double achieved = bytes_per_step / step_s;
  const double per_head_cache = static_cast<double>(c.num_attention_heads * (c.qk_head_dim() + c.v_head_dim));
  const bool graph = decoder.graph_captured();

  fmt::print("config            {} ({} layers, {} total / {} active parameters), device {}, {} weights\n", a.config,
             L, human_count(double(c.params_total())), human_count(double(c.params_active())), a.device, a.weights);
  fmt::print("prefill           {} x {} tokens in {:.2f} ms: {:.0f} tokens/s (time to first token {:.2f} ms)\n",
             B, a.prompt_len, prefill_s * 1e3, static_cast<double>(B * a.prompt_len) / prefill_s, ttft_s * 1e3);
  fmt::print("decode            {} steps x {} sequences in {:.2f} ms: {:.1f} tokens/s, {:.3f} ms per output token "
             "({})\n", a.gen_len, B, decode_s * 1e3, decode_tps, step_s * 1e3,
             fmt::format("{}, {}", graph ? "CUDA graph replays" : "eager steps",
                         a.host_turn ? "host turn between steps" : "fed on the device"));
  fmt::print("kv cache          {} values per token per layer, stored {}: {} B (a per-head cache: {:.0f} values, {:.0f} "
             "B, {:.1f}x more)\n", width, bf16 ? "bf16" : "fp32", cache.bytes_per_token_per_layer(), per_head_cache,
             per_head_cache * elt, per_head_cache / width);
  fmt::print("decode bandwidth  {} per step -> {}/s achieved", human_bytes(bytes_per_step), human_bytes(achieved));
  if (roofline > 0)
    fmt::print(" of {}/s measured copy bandwidth ({:.1f}% of the roofline)\n", human_bytes(roofline),
               100.0 * achieved / roofline);
  else
    fmt::print("\n");
  if (!a.json_out.empty()) {
    nlohmann::json j = {{"config", a.config}, {"device", a.device}, {"batch", a.batch}, {"prompt_len", a.prompt_len},
                        {"gen_len", a.gen_len},
                        {"prefill_tokens_per_s", static_cast<double>(B * a.prompt_len) / prefill_s},
                        {"ttft_ms", ttft_s * 1e3}, {"decode_tokens_per_s", decode_tps},
                        {"tpot_ms", step_s * 1e3}, {"bytes_per_decode_step", bytes_per_step}, {"cuda_graph", graph},
                        {"host_turn", a.host_turn},
                        {"achieved_bytes_per_s", achieved}, {"roofline_bytes_per_s", roofline},
                        {"kv_values_per_token_per_layer", width},
                        {"kv_bytes_per_token_per_layer", cache.bytes_per_token_per_layer()},
                        {"weights_dtype", a.weights},
                        {"precision", products_name(a.tf32, a.bf16_products)}};
    write_file_atomic(a.json_out, j.dump(2) + "\n");
  }
}

struct TrainBenchArgs {
  std::string config, json_out, recompute = "none", device =
#ifdef DSV_HAVE_CUDA
      "cuda";
#else
      "cpu";
#endif
  int64_t batch = 2, seq = 4096, steps = 5, warmup = 2;
  uint64_t seed = 1;
  bool tf32 = false, bf16 = false, bf16_moments = false;
};

// Random tokens in a temporary file, removed when the benchmark ends.
struct TempTokens {
  std::string path;
  TempTokens(int64_t n, int64_t vocab, uint64_t seed) {
    path = (std::filesystem::temp_directory_path() / fmt::format("dsv-bench-train-{}.bin", ops::splitmix64(seed)))
               .string();
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(ops::splitmix64(seed * 7 + i) % uint64_t(vocab));
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 4));
    DSV_CHECK(out.good(), "cannot write the benchmark's token file {}", path);
  }
  ~TempTokens() { std::filesystem::remove(path); }
};

void run_bench_train(const TrainBenchArgs& a) {
  const ModelConfig c = load_model_config_file(a.config, "--config " + a.config);
  DSV_CHECK(a.batch >= 1 && a.seq >= 2 && a.steps >= 1 && a.warmup >= 0,
            "--batch >= 1, --seq >= 2, --steps >= 1 and --warmup >= 0 expected; found {}, {}, {}, {}", a.batch, a.seq,
            a.steps, a.warmup);
  DSV_CHECK(a.seq <= c.max_position_embeddings, "--seq {} exceeds the model's context of {} tokens", a.seq,
            c.max_position_embeddings);
  const int64_t params = train::trained_parameters(c, 0);
  // fp32 weights and grads, Adam m and v in fp32 or bf16
  [[maybe_unused]] const double state_bytes = (a.bf16_moments ? 12.0 : 16.0) * static_cast<double>(params);
  [[maybe_unused]] const double act_bytes = train::activation_bytes_estimate(c, a.batch, a.seq, 0, a.recompute);
  if (a.device == "cuda") {
#ifdef DSV_HAVE_CUDA
    ensure_cuda_backend();
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    DSV_CHECK(state_bytes + act_bytes < 0.95 * static_cast<double>(free_bytes),
              "this run needs about {} of GPU memory (weights, grads and Adam moments {}, activations {}); {} are "
              "free: refused before any work (try a smaller --batch or --seq, or --recompute selective or full)",
              human_bytes(state_bytes + act_bytes), human_bytes(state_bytes), human_bytes(act_bytes),
              human_bytes(static_cast<double>(free_bytes)));
#else
    DSV_FAIL("--device cuda: this dsv was built without CUDA (configure with `cmake --preset cuda`)");
#endif
  } else {
    DSV_CHECK(a.device == "cpu", "--device {}: expected cpu or cuda", a.device);
  }
  const int64_t total_steps = a.warmup + a.steps;
  const TempTokens tokens(total_steps * a.batch * a.seq + 1, c.vocab_size, a.seed);
  train::TrainConfig cfg;
  cfg.model_config = a.config;
  cfg.seed = a.seed;
  cfg.data_tokens = tokens.path;
  cfg.micro_batch = a.batch;
  cfg.seq_len = a.seq;
  cfg.steps = total_steps;
  cfg.device = a.device;
  cfg.recompute = a.recompute;
  cfg.tf32 = a.tf32;
  cfg.bf16 = a.bf16;
  cfg.bf16_moments = a.bf16_moments;
  cfg.schedule = "constant";
  cfg.lr = 1e-4;
  cfg.mtp_depth = 0;
  fmt::print(stderr, "building a random {} model ({} trained parameters, fp32 master weights) on {}...\n",
             c.model_type, human_count(static_cast<double>(params)), a.device);
  train::Trainer trainer(cfg);
  std::vector<double> seconds;
  double loss = 0.0, mfu = 0.0;
  for (int64_t s = 0; s < total_steps; ++s) {
#ifdef DSV_HAVE_CUDA
    if (a.device == "cuda" && s == a.warmup) ops::cuda::reset_peak_memory();
#endif
    if (s == a.warmup) ops::op_profile_reset();
    const train::StepMetrics m = trainer.step();
    fmt::print(stderr, "step {}/{}{}: loss {:.4f}, {:.3f} s, {:.0f} tokens/s, MFU {:.1f}%\n", s + 1, total_steps,
               s < a.warmup ? " (warm-up)" : "", m.loss, m.step_seconds, m.tokens_per_second, 100.0 * m.mfu);
    if (s >= a.warmup) {
      seconds.push_back(m.step_seconds);
      loss = m.loss;
      mfu += m.mfu / static_cast<double>(a.steps);
    }
  }
  if (ops::op_profile_enabled())
    fmt::print(stderr, "# op profile over the timed steps (DSV_OP_PROFILE: synchronized ops, slower than a normal run)\n{}",
               ops::op_profile_summary());
  double total_s = 0.0;
  for (double x : seconds) total_s += x;
  const double tps = static_cast<double>(a.batch * a.seq * a.steps) / total_s;
  const double flops = train::train_flops_per_token(c, a.seq, 0);
  double peak_bytes = 0.0;
#ifdef DSV_HAVE_CUDA
  if (a.device == "cuda") peak_bytes = static_cast<double>(ops::cuda::allocator_stats().peak_in_use);
#endif
  fmt::print("config        {} ({} layers, {} trained parameters), device {}, fp32 master weights, {} Adam moments, "
             "{} products\n",
             a.config, c.num_hidden_layers, human_count(static_cast<double>(params)), a.device,
             a.bf16_moments ? "bf16" : "fp32", a.bf16 ? "bf16" : a.tf32 ? "TF32" : "fp32");
  fmt::print("batch         {} x {} tokens, recompute {}, {} timed steps after {} warm-up\n", a.batch, a.seq,
             a.recompute, a.steps, a.warmup);
  fmt::print("speed         {:.0f} tokens/s, {:.3f} s per step, {:.2f} GFLOP per token, MFU {:.2f}% (of dense bf16 "
             "peak)\n", tps, total_s / static_cast<double>(a.steps), flops / 1e9, 100.0 * mfu);
  if (peak_bytes > 0) fmt::print("memory        peak {} in live buffers\n", human_bytes(peak_bytes));
  if (!a.json_out.empty()) {
    nlohmann::json j = {{"config", a.config}, {"device", a.device}, {"batch", a.batch}, {"seq", a.seq},
                        {"steps", a.steps}, {"warmup", a.warmup}, {"recompute", a.recompute},
                        {"tokens_per_second", tps}, {"step_seconds", total_s / static_cast<double>(a.steps)},
                        {"mfu", mfu}, {"flops_per_token", flops}, {"peak_memory_bytes", peak_bytes},
                        {"trained_parameters", params}, {"last_loss", loss},
                        {"precision", products_name(a.tf32, a.bf16)},
                        {"adam_moments", a.bf16_moments ? "bf16" : "fp32"}};
    write_file_atomic(a.json_out, j.dump(2) + "\n");
  }
}

}  // namespace

void register_bench(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks with random weights (no checkpoint needed)");
  bench->require_subcommand(1);
  static BenchArgs a;
  auto* infer = bench->add_subcommand("infer", "Prefill and decode speed of a config on the device");
  infer->add_option("--config", a.config, "A config.json (e.g. ../shared/configs/bench/bench-16b-l4.json)")->required();
  infer->add_option("--batch", a.batch, "Sequences decoded together (each prefilled on its own)")->capture_default_str();
  infer->add_option("--prompt-len", a.prompt_len, "Prompt tokens (prefill)")->capture_default_str();
  infer->add_option("--gen-len", a.gen_len, "Generated tokens (decode steps)")->capture_default_str();
  infer->add_option("--device", a.device, "cuda or cpu")->capture_default_str();
  infer->add_option("--weights", a.weights, kWeightsHelp)->capture_default_str();
  infer->add_option("--seed", a.seed, "Seed of the random weights and prompt")->capture_default_str();
  infer->add_option("--json", a.json_out, "Also write the results as JSON");
  auto* infer_tf32 = infer->add_flag(
      "--tf32", a.tf32, "CUDA: matrix products and prefill attention on TF32 tensor cores (fp32 storage and accumulation)");
  infer->add_flag("--bf16", a.bf16_products,
                  "CUDA: fp32-weight products and prefill attention on bf16 tensor cores (operands rounded to bf16, "
                  "fp32 accumulation; bf16 weights always use bf16 tensor cores)")
      ->excludes(infer_tf32);
  infer->add_flag("--eager", a.eager, "CUDA: launch every decode op from the host instead of replaying a CUDA graph");
  infer->add_flag("--host-turn", a.host_turn,
                  "Decode with the host in the loop: each step's tokens come back before the next step is issued "
                  "(by default the device feeds each step's choices to the next and the host reads one step behind)");
  infer->callback([] { run_bench_infer(a); });

  static TrainBenchArgs t;
  auto* train = bench->add_subcommand("train", "Training step speed (tokens/s, MFU, peak memory) of a config");
  train->add_option("--config", t.config, "A config.json (e.g. ../shared/configs/bench/bench-16b-l4.json)")->required();
  train->add_option("--batch", t.batch, "Sequences per step")->capture_default_str();
  train->add_option("--seq", t.seq, "Tokens per sequence")->capture_default_str();
  train->add_option("--steps", t.steps, "Timed optimizer steps")->capture_default_str();
  train->add_option("--warmup", t.warmup, "Untimed steps first")->capture_default_str();
  train->add_option("--recompute", t.recompute,
                    "Activation recomputation: none, selective (norms, MLA queries, keys and values) or full")
      ->check(CLI::IsMember({"none", "selective", "full"}))
      ->capture_default_str();
  train->add_option("--device", t.device, "cuda or cpu")->capture_default_str();
  auto* train_tf32 = train->add_flag(
      "--tf32", t.tf32, "Matrix products and attention on TF32 tensor cores (fp32 storage and accumulation)");
  train->add_flag("--bf16", t.bf16,
                  "Matrix products and attention on bf16 tensor cores (operands rounded to bf16 as autocast does, "
                  "fp32 accumulation, fp32 master weights)")
      ->excludes(train_tf32);
  train->add_flag("--bf16-moments", t.bf16_moments,
                  "Adam moments in bf16 with stochastic rounding (optimizer.bf16_moments; master weights stay fp32)");
  train->add_option("--seed", t.seed, "Seed of the random weights and tokens")->capture_default_str();
  train->add_option("--json", t.json_out, "Also write the results as JSON");
  train->callback([] { run_bench_train(t); });
}

}  // namespace dsv::cli
