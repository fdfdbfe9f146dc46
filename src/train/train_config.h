// TrainConfig: everything a training run needs, as resolved from a recipe (recipes/*.toml) plus
// `--set section.key=value` overrides and command-line flags. Parsing lives in recipe.cpp; the
// trainer only reads this struct. Keys in the TOML are `section.field` with the names below.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv::train {

struct TrainConfig {
  // [model]
  std::string model_config;  // model.config: path to an HF config.json (random init)
  std::string init_from;     // model.init_from: HF checkpoint directory (weights + config); wins over config
  uint64_t seed = 1234;      // model.seed: random init and data order
  double init_std = 0.02;    // model.init_std: N(0, init_std) for projections; norms 1, biases 0

  // [data]  exactly one source: data.tokens, data.paths (Megatron indexed datasets) or data.sft
  std::string data_tokens;   // data.tokens: flat little-endian int32 token ids
  bool shuffle = false;      // data.shuffle: false = windows in file order; true = seeded permutation
  std::vector<std::string> data_paths;  // data.paths: Megatron .bin/.idx prefixes (without the suffix), blended
  std::vector<double> data_weights;     // data.weights: blend weights, one per path (default: equal)
  std::string data_split = "100,0";     // data.split: "train,valid" shares of each dataset's documents
  std::string sft_jsonl;     // data.sft: chat conversations (JSONL, {"messages": [...]}) for fine-tuning
  std::string data_tokenizer;  // data.tokenizer: tokenizer directory for data.sft (chat template)

  // [train]
  int64_t micro_batch = 1;   // train.micro_batch: sequences per forward/backward
  int64_t seq_len = 64;      // train.seq_len: tokens per sequence (a window is seq_len + 1 tokens)
  int64_t grad_accum = 1;    // train.grad_accum: micro-batches per optimizer step
  int64_t steps = 100;       // train.steps: optimizer steps
  std::string device = "cpu";      // train.device: cpu | cuda
  std::string recompute = "none";  // train.recompute: none | selective | full
  int64_t max_bad_steps = 3;       // train.max_bad_steps: consecutive NaN/Inf steps before stopping
  bool tf32 = false;               // train.tf32: CUDA matrix products on TF32 tensor cores (fp32 accumulate)
  bool bf16 = false;               // train.bf16: CUDA matrix products and attention on bf16 tensor cores
                                   // (operands rounded to bf16, fp32 accumulate; fp32 master weights)
  int64_t eval_interval = 0;       // train.eval_interval: validation loss every N steps (0 = never)
  int64_t eval_iters = 10;         // train.eval_iters: validation micro-batches per evaluation

  // [optimizer]  AdamW, fp32 master weights
  double lr = 3e-4;            // optimizer.lr: peak learning rate
  double min_lr = 0.0;         // optimizer.min_lr: floor of the cosine / WSD decay
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;  // optimizer.beta1 / beta2 / eps
  double weight_decay = 0.1;   // optimizer.weight_decay: matrices only; norms, biases untouched
  double clip_grad = 1.0;      // optimizer.clip_grad: global L2 norm clip; 0 disables
  std::string schedule = "cosine";  // optimizer.schedule: constant | cosine | wsd
  int64_t warmup_steps = 0;    // optimizer.warmup_steps: linear from 0 to lr
  double decay_fraction = 0.1; // optimizer.decay_fraction: WSD, share of steps spent decaying
  bool bf16_moments = false;   // optimizer.bf16_moments: store Adam m, v in bf16

  // [loss]
  int64_t mtp_depth = -1;      // loss.mtp_depth: MTP modules trained (-1 = num_nextn_predict_layers)
  double mtp_lambda = 0.3;     // loss.mtp_lambda: weight of the mean MTP loss (DeepSeek-V3: 0.3 then 0.1)
  double seq_aux_alpha = 0.0;  // loss.seq_aux_alpha: V3 sequence-wise balance loss weight
  double expert_aux_alpha = 0.0;   // loss.expert_aux_alpha: V2 expert-level balance loss weight
  double bias_update_gamma = 0.0;  // loss.bias_update_gamma: aux-free bias speed (V3 routers); 0 disables

  // [parallel]  the layout a recipe is written for; this build trains on one device (gpus = 1)
  int64_t gpus = 1;            // parallel.gpus: total GPUs; data parallel = gpus / (tp * pp)
  int64_t tp = 1;              // parallel.tp: tensor parallel
  int64_t pp = 1;              // parallel.pp: pipeline parallel (stages)
  int64_t ep = 1;              // parallel.ep: expert parallel (routed experts split over ep ranks)

  // [checkpoint]  resumable training state (weights, Adam moments, router biases, data position)
  std::string save_dir;        // checkpoint.save: directory of step_NNNNNNNN/ checkpoints + `latest`
  int64_t save_interval = 0;   // checkpoint.save_interval: save every N steps (0: only at the end)
  std::string load_dir;        // checkpoint.load: resume from this directory's `latest` (or a step_ dir)
  int64_t keep_last = 2;       // checkpoint.keep_last: checkpoints kept (0 = all)

  // [output]
  std::string metrics_jsonl;   // output.metrics_jsonl: one JSON object per step
  std::string out_dir;         // output.out_dir: final weights as an HF checkpoint directory
  std::string tokenizer;       // output.tokenizer: tokenizer directory copied next to the weights
  int64_t log_interval = 1;    // output.log_interval: console line every N steps
  std::string tensorboard;     // output.tensorboard: directory for TensorBoard event files
};

}  // namespace dsv::train
