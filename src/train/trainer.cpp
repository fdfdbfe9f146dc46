// Trainer: micro-batches through forward_backward, global-norm clipping, AdamW on the flat fp32
// master weights, the router bias update, and the per-step metrics (docs/TRAINING.md).
#include "train/trainer.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "ops/ops.h"
#include "train/checkpoint.h"
#include "train/flops.h"
#include "train/param_store.h"
#include "train/recipe.h"
#include "train/schedule.h"
#include "train/sample_source.h"

namespace dsv::train {
namespace {
std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DSV_CHECK(in.good(), "cannot read {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

PassOptions pass_options(const TrainConfig& cfg, int64_t mtp_depth) {
  return PassOptions{.mtp_depth = mtp_depth, .mtp_lambda = cfg.mtp_lambda,
                     .aux = AuxSpec{.seq_aux_alpha = cfg.seq_aux_alpha, .expert_aux_alpha = cfg.expert_aux_alpha,
                                    .sequence_weight = 1.0 / static_cast<double>(cfg.micro_batch * cfg.grad_accum)},
                     .micro_batches = cfg.grad_accum,
                     .recompute = cfg.recompute == "full"        ? Recompute::Full
                                   : cfg.recompute == "selective" ? Recompute::Selective
                                                                  : Recompute::None};
}

struct Trainer::Impl {
  TrainConfig cfg;
  std::string config_json;
  std::unique_ptr<ParamStore> store;
  std::unique_ptr<SampleSource> train_data, valid_data;
  int64_t mtp_depth = 0;
  int64_t steps_done = 0, adam_steps = 0, consecutive_bad = 0;
  double flops_per_token = 0.0, peak_flops = 0.0;
  // Bf16 products (train.bf16): bf16 compute copies of the master weights, registered with the ops so
  // that products read them, and current before every forward pass. AdamW writes the trainable part as
  // it updates it; the rest (router biases, changed by the bias update) and whatever a load replaced
  // are cast here.
  ops::Buffer<uint16_t> compute_copy;
  bool trainable_copy_current = false;  // AdamW's bf16 output matches the trainable master weights
  void refresh_compute_copy() const {
    if (compute_copy.size() == 0) return;
    const ops::Context ctx = store->model().context();
    const int64_t begin = trainable_copy_current ? store->trainable_end() : 0;
    ops::cast(ctx, {.x = store->params() + begin, .y = compute_copy.data() + begin, .n = store->total() - begin,
                    .to_bf16 = true});
  }
  ~Impl() {
    if (compute_copy.size()) ops::set_bf16_weight_copy(nullptr, nullptr, 0);
  }
};

Trainer::Trainer(const TrainConfig& config) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.cfg = config;
  const ops::Backend backend = config.device == "cuda" ? ops::Backend::Cuda : ops::Backend::Cpu;
  DSV_CHECK(ops::backend_available(backend), "train.device = {}: that backend is not available in this build",
            config.device);
  DSV_CHECK(config.gpus == 1,
            "parallel.gpus = {} (tp {}, pp {}, ep {}): this build trains on one device; multi-GPU training is not "
            "implemented yet. Use --dry-run to see the plan for that layout, or --set parallel.gpus=1 "
            "--set parallel.tp=1 --set parallel.pp=1 --set parallel.ep=1 to train on one device",
            config.gpus, config.tp, config.pp, config.ep);
  // Process-wide: the trainer owns the device's matrix-product precision while it runs.
  DSV_CHECK(!(config.tf32 && config.bf16), "train.tf32 and train.bf16 are both true: choose one product precision");
  ops::MatmulPrecision precision = ops::MatmulPrecision::Fp32;
  if (backend == ops::Backend::Cuda && config.tf32) precision = ops::MatmulPrecision::Tf32;
  if (backend == ops::Backend::Cuda && config.bf16) precision = ops::MatmulPrecision::Bf16;
  ops::set_matmul_precision(precision);
  const ModelConfig mc = recipe_model_config(config);
  s.mtp_depth = resolved_mtp_depth(config, mc);
  if (!config.init_from.empty()) {
    s.store = std::make_unique<ParamStore>(ParamStore::from_checkpoint(config.init_from, backend, s.mtp_depth,
                                                                       config.bf16_moments));
    // The master weights are fp32: a config of DeepSeek's FP8 release must not claim FP8 storage in
    // the checkpoints and HF directories written from them.
    nlohmann::ordered_json cj = nlohmann::ordered_json::parse(read_text(config.init_from + "/config.json"));
    if (cj.contains("quantization_config")) {
      cj.erase("quantization_config");
      s.config_json = cj.dump(2) + "\n";
    } else {
      s.config_json = read_text(config.init_from + "/config.json");
    }
  } else {
    s.store = std::make_unique<ParamStore>(ParamStore::random(mc, s.mtp_depth, backend, config.seed,
                                                              static_cast<float>(config.init_std), config.bf16_moments));
    s.config_json = read_text(config.model_config);
  }
  s.train_data = make_sample_source(config, mc, Split::Train);
  s.valid_data = make_sample_source(config, mc, Split::Valid);
  s.flops_per_token = train_flops_per_token(mc, config.seq_len, s.mtp_depth);
  s.peak_flops = device_peak_flops(config.device);
  if (precision == ops::MatmulPrecision::Bf16) {
    s.compute_copy = ops::Buffer<uint16_t>(backend, static_cast<size_t>(s.store->total()));
    ops::set_bf16_weight_copy(s.store->params(), s.compute_copy.data(), s.store->total());
  }
}

Trainer::~Trainer() = default;

int64_t Trainer::steps_done() const { return impl_->steps_done; }
const Model& Trainer::model() const { return impl_->store->model(); }
const ParamStore& Trainer::store() const { return *impl_->store; }
int64_t Trainer::parameter_count() const { return impl_->store->trainable_count(); }
void Trainer::save_hf(const std::string& dir) const { impl_->store->save_hf(dir, impl_->config_json); }
bool Trainer::has_validation() const { return impl_->valid_data != nullptr; }
const SampleSource& Trainer::train_data() const { return *impl_->train_data; }
const SampleSource* Trainer::valid_data() const { return impl_->valid_data.get(); }

namespace {
// The recipe keys that fix which samples step s reads (docs/TRAINING.md, Samples).
nlohmann::json data_order(const TrainConfig& c) {
  return {{"seq_len", c.seq_len},       {"micro_batch", c.micro_batch}, {"grad_accum", c.grad_accum},
          {"seed", c.seed},             {"shuffle", c.shuffle},         {"data.tokens", c.data_tokens},
          {"data.paths", c.data_paths}, {"data.weights", c.data_weights}, {"data.split", c.data_split},
          {"data.sft", c.sft_jsonl}};
}
}  // namespace

std::string Trainer::save_checkpoint(const std::string& save_dir, const std::string& tokenizer_dir,
                                     int64_t keep_last) const {
  const Impl& s = *impl_;
  TrainingState state;
  state.step = s.steps_done;
  state.adam_steps = s.adam_steps;
  state.consecutive_bad = s.consecutive_bad;
  state.extra = {{"recipe", describe(s.cfg)}, {"data_order", data_order(s.cfg)},
                 {"data", s.train_data->describe()}, {"mtp_depth", s.mtp_depth}};
  return dsv::train::save_checkpoint(save_dir, *s.store, state, s.config_json, tokenizer_dir, keep_last);
}

std::vector<std::string> Trainer::load_checkpoint(const std::string& dir) {
  Impl& s = *impl_;
  const std::string step_dir = find_checkpoint(dir);
  const TrainingState state = dsv::train::load_checkpoint(step_dir, *s.store);
  s.trainable_copy_current = false;  // the master weights were replaced
  s.steps_done = state.step;
  s.adam_steps = state.adam_steps;
  s.consecutive_bad = state.consecutive_bad;
  std::vector<std::string> warnings;
  if (state.extra.contains("data_order")) {
    const nlohmann::json now = data_order(s.cfg), then = state.extra["data_order"];
    for (const auto& [key, value] : now.items())
      if (!then.contains(key) || then[key] != value)
        warnings.push_back(fmt::format("{}: the checkpoint's run had {}, this run has {}; the resumed run reads "
                                       "other samples than the original would have",
                                       key, then.contains(key) ? then[key].dump() : "nothing", value.dump()));
  }
  return warnings;
}

double Trainer::evaluate() {
  Impl& s = *impl_;
  DSV_CHECK(s.valid_data, "evaluate(): the recipe has no validation split (data.split's valid share is 0)");
  const int64_t B = s.cfg.micro_batch, S = s.cfg.seq_len;
  const Model& m = s.store->model();
  PassOptions opt;  // forward only, main loss, no balance losses
  opt.forward_only = true;
  std::vector<int32_t> inputs(static_cast<size_t>(B * S)), targets(inputs.size());
  s.refresh_compute_copy();
  double sum = 0.0;
  int64_t count = 0;
  // The same eval_iters * B samples every time, so successive evaluations are comparable.
  for (int64_t a = 0; a < s.cfg.eval_iters; ++a) {
    for (int64_t i = 0; i < B; ++i)
      s.valid_data->sample(a * B + i, inputs.data() + i * S, targets.data() + i * S);
    const PassResult r = forward_backward(m, s.store->grads(), inputs.data(), targets.data(), Batch{B, S}, opt);
    sum += r.loss_sum;
    count += r.loss_count;
  }
  return sum / static_cast<double>(std::max<int64_t>(1, count));
}

StepMetrics Trainer::step() {
  Impl& s = *impl_;
  const TrainConfig& cfg = s.cfg;
  const ParamStore& store = *s.store;
  const Model& m = store.model();
  const ModelConfig& c = m.config;
  const ops::Context ctx = m.context();
  const auto start = std::chrono::steady_clock::now();
  const int64_t B = cfg.micro_batch, S = cfg.seq_len, A = cfg.grad_accum;

  StepMetrics out;
  out.step = s.steps_done + 1;
  out.lr = learning_rate(cfg, out.step);
  store.zero_grads(/*keep_routed_experts=*/true);  // the first micro-batch overwrites them
  s.refresh_compute_copy();  // the weights as the last update (or a resume) left them
  PassOptions opt = pass_options(cfg, s.mtp_depth);
  // The whole step's samples first: the losses are means over the step's loss-carrying targets.
  std::vector<int32_t> inputs(static_cast<size_t>(A * B * S)), targets(inputs.size());
  for (int64_t a = 0; a < A; ++a)
    for (int64_t i = 0; i < B; ++i) {
      const int64_t p = (s.steps_done * A + a) * B + i;
      s.train_data->sample(p, inputs.data() + (a * B + i) * S, targets.data() + (a * B + i) * S);
    }
  opt.mtp_targets.assign(static_cast<size_t>(s.mtp_depth), 0);
  for (int64_t a = 0; a < A; ++a) {
    const TargetCounts n = count_targets(targets.data() + a * B * S, Batch{B, S}, s.mtp_depth);
    opt.loss_targets += n.main;
    for (size_t k = 0; k < n.mtp.size(); ++k) opt.mtp_targets[k] += n.mtp[k];
  }
  double loss_sum = 0.0;
  int64_t loss_count = 0;
  std::vector<double> mtp_sum;
  std::vector<int64_t> mtp_count;
  std::vector<std::vector<int64_t>> load;
  for (int64_t a = 0; a < A; ++a) {
    opt.overwrite_expert_grads = a == 0;
    PassResult r = forward_backward(m, store.grads(), inputs.data() + a * B * S, targets.data() + a * B * S,
                                    Batch{B, S}, opt);
    loss_sum += r.loss_sum;
    loss_count += r.loss_count;
    out.aux_loss += r.aux_loss;
    mtp_sum.resize(r.mtp_sum.size());
    mtp_count.resize(r.mtp_sum.size());
    for (size_t k = 0; k < r.mtp_sum.size(); ++k) {
      mtp_sum[k] += r.mtp_sum[k];
      mtp_count[k] += r.mtp_count[k];
    }
    load.resize(r.load.size());
    for (size_t l = 0; l < r.load.size(); ++l) {
      load[l].resize(r.load[l].size());
      for (size_t e = 0; e < r.load[l].size(); ++e) load[l][e] += r.load[l][e];
    }
  }
  // A step without a loss-carrying target (possible in fine-tuning data) has loss 0 and zero gradients.
  out.loss = loss_sum / static_cast<double>(std::max<int64_t>(1, loss_count));
  out.loss_targets = loss_count;
  for (size_t k = 0; k < mtp_sum.size(); ++k)
    out.mtp_loss += mtp_sum[k] / static_cast<double>(std::max<int64_t>(1, mtp_count[k])) /
                    static_cast<double>(mtp_sum.size());
  out.tokens = B * S * A;

  // Global gradient norm over the trainable parameters: one contiguous range of the flat buffer.
  Buffer<float> norm_sq(ctx.backend, 1);
  ops::sum_squares(ctx, {.x = store.grad_data(), .out = norm_sq.data(), .n = store.trainable_end()});
  out.grad_norm = std::sqrt(static_cast<double>(norm_sq.to_host(ctx)[0]));

  const bool finite = std::isfinite(out.loss) && std::isfinite(out.mtp_loss) && std::isfinite(out.aux_loss) &&
                      std::isfinite(out.grad_norm);
  if (!finite) {
    out.skipped = true;
    ++s.consecutive_bad;
    DSV_CHECK(s.consecutive_bad < cfg.max_bad_steps,
              "step {}: loss or gradient is not finite ({} steps in a row; loss {}, grad norm {}); "
              "stopping (train.max_bad_steps = {})",
              out.step, s.consecutive_bad, out.loss, out.grad_norm, cfg.max_bad_steps);
  } else {
    s.consecutive_bad = 0;
    const float clip = cfg.clip_grad > 0.0
                           ? static_cast<float>(std::min(1.0, cfg.clip_grad / (out.grad_norm + 1e-6)))
                           : 1.0f;
    ++s.adam_steps;
    // Two launches: the decayed range and the rest of the trainable range (param_store.h).
    const int64_t ranges[2][2] = {{0, store.decay_end()}, {store.decay_end(), store.trainable_end()}};
    for (int r = 0; r < 2; ++r) {
      const int64_t begin = ranges[r][0], n = ranges[r][1] - ranges[r][0];
      if (n == 0) continue;
      ops::adamw(ctx, {.param = store.params() + begin, .grad = store.grad_data() + begin,
                       .m = store.bf16_moments() ? nullptr : store.adam_m() + begin,
                       .v = store.bf16_moments() ? nullptr : store.adam_v() + begin, .n = n, .step = s.adam_steps,
                       .lr = static_cast<float>(out.lr), .beta1 = static_cast<float>(cfg.beta1),
                       .beta2 = static_cast<float>(cfg.beta2), .eps = static_cast<float>(cfg.eps),
                       .weight_decay = r == 0 ? static_cast<float>(cfg.weight_decay) : 0.0f, .grad_scale = clip,
                       .param_bf16 = s.compute_copy.size() ? s.compute_copy.data() + begin : nullptr,
                       .m_bf16 = store.bf16_moments() ? store.adam_m_bf16() + begin : nullptr,
                       .v_bf16 = store.bf16_moments() ? store.adam_v_bf16() + begin : nullptr,
                       .offset = begin});
    }
    s.trainable_copy_current = s.compute_copy.size() > 0;
    // Auxiliary-loss-free balancing: bias_i += gamma * sign(mean load - load_i).
    if (cfg.bias_update_gamma > 0.0) {
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        const Tensor& bias = m.weights.layers[l].moe.score_correction_bias;
        if (bias.empty() || load[l].empty()) continue;
        std::vector<float> b = std::vector<float>(static_cast<size_t>(bias.numel()));
        ops::copy_to_host(ctx, b.data(), bias.data, b.size() * sizeof(float));
        double mean = 0.0;
        for (int64_t v : load[l]) mean += static_cast<double>(v);
        mean /= static_cast<double>(load[l].size());
        for (size_t e = 0; e < b.size(); ++e) {
          const double d = mean - static_cast<double>(load[l][e]);
          b[e] += static_cast<float>(cfg.bias_update_gamma * static_cast<double>((d > 0) - (d < 0)));
        }
        ops::copy_to_backend(ctx, mut(bias), b.data(), b.size() * sizeof(float));
      }
    }
  }
  for (const std::vector<int64_t>& l : load) {
    if (l.empty()) continue;
    int64_t total = 0, most = 0;
    for (int64_t v : l) {
      total += v;
      most = std::max(most, v);
    }
    out.expert_imbalance.push_back(total ? static_cast<double>(most) * static_cast<double>(l.size()) /
                                               static_cast<double>(total)
                                         : 0.0);
  }
  ++s.steps_done;
  out.step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out.tokens_per_second = static_cast<double>(out.tokens) / out.step_seconds;
  out.mfu = s.peak_flops > 0.0 ? s.flops_per_token * out.tokens_per_second / s.peak_flops : 0.0;
  return out;
}

}  // namespace dsv::train
