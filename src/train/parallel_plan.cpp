#include "train/parallel_plan.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "train/flops.h"

namespace dsv::train {
namespace {

double d(int64_t v) { return static_cast<double>(v); }

// A group of parameters by how the ranks of one pipeline stage hold it.
struct ParamSplit {
  double sharded = 0;     // split over tp: column/row-parallel matrices, the vocab-parallel embedding and head
  double replicated = 0;  // whole on every tp rank: norms, the router, MLA's small down-projections
  double experts = 0;     // routed experts, split over ep (expert tensor parallel = 1)
  ParamSplit& operator+=(const ParamSplit& o) {
    sharded += o.sharded;
    replicated += o.replicated;
    experts += o.experts;
    return *this;
  }
};

// SwiGLU of width F (gate, up, down; V2's optional biases): tp-sharded (column-parallel gate/up,
// row-parallel down). The down bias would be replicated; it is D floats, counted with the rest.
double mlp_params(const ModelConfig& c, int64_t F) {
  return 3.0 * d(c.hidden_size) * d(F) + (c.mlp_bias ? 2.0 * d(F) + d(c.hidden_size) : 0.0);
}

// One decoder layer (layer == num_hidden_layers: an MTP module's block), the same total as
// config.cpp's layer_params, split by holder. MLA's q_a / kv_a down-projections and their norms
// are kept whole on every tp rank (Megatron-Core builds them "duplicated": the latent is small);
// the up-projections and o_proj are split by heads.
ParamSplit layer_split(const ModelConfig& c, int64_t layer) {
  const double D = d(c.hidden_size), H = d(c.num_attention_heads), Q = d(c.q_lora_rank), C = d(c.kv_lora_rank),
               R = d(c.qk_rope_head_dim), Dn = d(c.qk_nope_head_dim), Dv = d(c.v_head_dim),
               E = d(c.n_routed_experts), bias = c.attention_bias ? 1.0 : 0.0;
  ParamSplit p;
  p.replicated += 2 * D;  // input and post-attention norms
  if (c.q_lora_rank > 0) {
    p.replicated += D * Q + bias * Q + Q;  // q_a_proj (+ bias), q_a_layernorm
    p.sharded += Q * H * (Dn + R);         // q_b_proj
  } else {
    p.sharded += D * H * (Dn + R);  // q_proj
  }
  p.replicated += D * (C + R) + bias * (C + R) + C;  // kv_a_proj_with_mqa (+ bias), kv_a_layernorm
  p.sharded += C * H * (Dn + Dv) + H * Dv * D;       // kv_b_proj, o_proj
  p.replicated += bias * D;                          // o_proj bias (row-parallel: whole)
  if (!c.is_moe_layer(layer)) {
    p.sharded += mlp_params(c, c.intermediate_size);
    return p;
  }
  p.replicated += E * D + (c.family == ModelFamily::DeepseekV3 ? E : 0.0);  // router, e_score_correction_bias
  p.experts += E * mlp_params(c, c.moe_intermediate_size);
  p.sharded += mlp_params(c, c.moe_intermediate_size * c.n_shared_experts);
  return p;
}

// One MTP module: enorm, hnorm and shared_head.norm (whole), eh_proj [D, 2D] (split), its block.
ParamSplit mtp_split(const ModelConfig& c) {
  ParamSplit p = layer_split(c, c.num_hidden_layers);
  p.replicated += 3.0 * d(c.hidden_size);
  p.sharded += 2.0 * d(c.hidden_size) * d(c.hidden_size);
  return p;
}

// Decimal units (GB = 1e9 bytes, as GPU memory is sold) with three significant digits or so.
std::string bytes(double b) {
  if (b >= 1e9) return fmt::format("{:.1f} GB", b / 1e9);
  if (b >= 1e6) return fmt::format("{:.1f} MB", b / 1e6);
  if (b >= 1e3) return fmt::format("{:.1f} KB", b / 1e3);
  return fmt::format("{:.0f} B", b);
}

std::string count(double n) {
  if (n >= 1e9) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 1e3) return fmt::format("{:.1f}K", n / 1e3);
  return fmt::format("{:.0f}", n);
}

// "3 | 4 x 14 | 2": runs of equal layer counts.
std::string layer_runs(const std::vector<StagePlan>& stages) {
  std::string out;
  for (size_t i = 0; i < stages.size();) {
    size_t j = i;
    while (j < stages.size() && stages[j].num_layers == stages[i].num_layers) ++j;
    out += fmt::format("{}{}", out.empty() ? "" : " | ", stages[i].num_layers);
    if (j - i > 1) out += fmt::format(" x {}", j - i);
    i = j;
  }
  return out;
}

}  // namespace

std::vector<int64_t> split_layers(int64_t layers, int64_t pp, std::string* rule) {
  DSV_CHECK(pp >= 1 && layers >= pp, "split_layers: expected 1 <= pp <= layers, found pp {} for {} layers", pp,
            layers);
  const int64_t ceil = (layers + pp - 1) / pp, shortfall = pp * ceil - layers;
  std::vector<int64_t> n(static_cast<size_t>(pp), ceil);
  if (shortfall == 0) {
    if (rule) *rule = fmt::format("{} per stage", ceil);
    return n;
  }
  const int64_t last_gives = (shortfall + 1) / 2, first_gives = shortfall / 2;
  if (pp >= 2 && last_gives < ceil && first_gives < ceil) {
    n.front() -= first_gives;
    n.back() -= last_gives;
    if (rule)
      *rule = fmt::format(
          "{} does not divide {}: the middle stages hold ceil = {}, the first stage gives up {} and the last {} "
          "(they also hold the embedding, and the head with the MTP modules)",
          pp, layers, ceil, first_gives, last_gives);
    return n;
  }
  // Too short for the end stages alone: floor or ceil everywhere, the floors at the ends first.
  for (int64_t k = 0; k < shortfall; ++k) {
    const int64_t from_end = k / 2;
    const size_t stage = static_cast<size_t>(k % 2 == 0 ? pp - 1 - from_end : from_end);
    n[stage] -= 1;
  }
  if (rule)
    *rule = fmt::format("{} does not divide {}: {} stages hold {} and {} hold {}, the smaller ones at the ends", pp,
                        layers, pp - shortfall, ceil, shortfall, ceil - 1);
  return n;
}

ParallelPlan plan_parallel(const TrainConfig& cfg, const ModelConfig& c, int64_t mtp_depth) {
  const int64_t L = c.num_hidden_layers, H = c.num_attention_heads, E = c.n_routed_experts;
  DSV_CHECK(cfg.tp >= 1 && cfg.pp >= 1 && cfg.ep >= 1 && cfg.gpus >= 1,
            "parallel: expected gpus, tp, pp and ep >= 1, found gpus {} tp {} pp {} ep {}", cfg.gpus, cfg.tp, cfg.pp,
            cfg.ep);
  DSV_CHECK(cfg.gpus % (cfg.tp * cfg.pp) == 0,
            "parallel.gpus: expected a multiple of tp * pp = {} * {} = {} (data parallel = gpus / (tp * pp)), found {}",
            cfg.tp, cfg.pp, cfg.tp * cfg.pp, cfg.gpus);
  DSV_CHECK(H % cfg.tp == 0, "parallel.tp: expected a divisor of num_attention_heads ({}), found {}", H, cfg.tp);
  const bool has_dense = c.first_k_dense_replace > 0;
  const bool has_moe = c.first_k_dense_replace < L || mtp_depth > 0;
  DSV_CHECK(!has_dense || c.intermediate_size % cfg.tp == 0,
            "parallel.tp: expected a divisor of intermediate_size ({}, the dense FFN split over tp), found {}",
            c.intermediate_size, cfg.tp);
  const int64_t shared_width = c.moe_intermediate_size * c.n_shared_experts;
  DSV_CHECK(!has_moe || shared_width % cfg.tp == 0,
            "parallel.tp: expected a divisor of moe_intermediate_size * n_shared_experts ({}, the shared experts "
            "split over tp), found {}",
            shared_width, cfg.tp);
  DSV_CHECK(cfg.pp <= L, "parallel.pp: expected at most num_hidden_layers ({}) pipeline stages, found {}", L, cfg.pp);
  DSV_CHECK(has_moe || cfg.ep == 1, "parallel.ep: the model has no MoE layer, so expected ep = 1, found {}", cfg.ep);
  DSV_CHECK(E % cfg.ep == 0, "parallel.ep: expected a divisor of n_routed_experts ({}), found {}", E, cfg.ep);

  ParallelPlan p;
  p.gpus = cfg.gpus;
  p.tp = cfg.tp;
  p.pp = cfg.pp;
  p.ep = cfg.ep;
  p.dp = cfg.gpus / (cfg.tp * cfg.pp);
  // Megatron-Core (expert tensor parallel 1): the tp * dp ranks of a pipeline stage are regrouped
  // as ep x expert_dp, so ep must divide them.
  DSV_CHECK((p.dp * p.tp) % p.ep == 0,
            "parallel.ep: expert parallel is carved out of data x tensor parallel (dp {} x tp {} = {} GPUs per "
            "pipeline stage), so ep must divide {}; found {}",
            p.dp, p.tp, p.dp * p.tp, p.dp * p.tp, p.ep);
  p.expert_dp = p.dp * p.tp / p.ep;
  p.micro_batch = cfg.micro_batch;
  p.grad_accum = cfg.grad_accum;
  p.seq_len = cfg.seq_len;
  p.global_batch = cfg.micro_batch * cfg.grad_accum * p.dp;
  p.tokens_per_step = p.global_batch * cfg.seq_len;
  p.num_layers = L;
  p.num_heads = H;
  p.routed_experts = E;
  p.mtp_depth = mtp_depth;
  p.heads_per_tp_rank = H / p.tp;
  p.experts_per_ep_rank = E / p.ep;
  p.bf16_moments = cfg.bf16_moments;
  p.recompute = cfg.recompute;
  p.trained_params = d(trained_parameters(c, mtp_depth));
  p.flops_per_token = train_flops_per_token(c, cfg.seq_len, mtp_depth);

  const std::vector<int64_t> per_stage = split_layers(L, p.pp, &p.layer_split);
  const ActivationFloats act = activation_floats_per_token(c, cfg.seq_len, mtp_depth, cfg.recompute);
  const double optimizer_bytes_per_param = cfg.bf16_moments ? 8.0 : 12.0;  // fp32 master + m, v (fp32 or bf16)
  // Bytes per saved float per token of one micro-batch on one GPU: fp32, B * S tokens, / tp (sequence parallel).
  const double act_scale = 4.0 * d(cfg.micro_batch) * d(cfg.seq_len) / d(p.tp);
  const double V = d(c.vocab_size), D = d(c.hidden_size);

  int64_t first = 0;
  for (int64_t s = 0; s < p.pp; ++s) {
    StagePlan st;
    st.first_layer = first;
    st.num_layers = per_stage[static_cast<size_t>(s)];
    first += st.num_layers;
    st.embedding = s == 0;
    st.head = s == p.pp - 1;
    st.in_flight = std::min(p.pp - s, cfg.grad_accum);

    ParamSplit params;
    double saved = 0, working = 0;  // activation floats per token
    for (int64_t l = st.first_layer; l < st.first_layer + st.num_layers; ++l) {
      params += layer_split(c, l);
      const bool moe = c.is_moe_layer(l);
      st.moe_layers += moe ? 1 : 0;
      saved += moe ? act.moe_layer : act.dense_layer;
      working = std::max(working, moe ? act.moe_working : act.dense_working);
    }
    // The embedding matrix is vocab-parallel. A tied one is the head too: with pp > 1 the last stage
    // keeps a copy (its gradient is summed with the first stage's), as Megatron does.
    if (st.embedding) params.sharded += V * D;
    if (st.head) {
      if (!c.tie_word_embeddings || p.pp > 1) params.sharded += V * D;  // pp == 1 and tied: the one matrix above
      params.replicated += D;  // final norm
      for (int64_t k = 0; k < mtp_depth; ++k) params += mtp_split(c);
      saved += act.head + act.mtp;
    }

    st.dense_params = params.sharded / d(p.tp) + params.replicated;
    st.expert_params = params.experts / d(p.ep);
    const double held = st.dense_params + st.expert_params;
    st.weight_bytes = 2.0 * held;
    st.grad_bytes = 4.0 * held;
    st.optimizer_bytes =
        optimizer_bytes_per_param * (st.dense_params / d(p.dp) + st.expert_params / d(p.expert_dp));
    st.activation_bytes = act_scale * (d(st.in_flight) * saved + working);
    p.stages.push_back(st);
  }
  for (int64_t s = 1; s < p.pp; ++s)
    if (p.stages[static_cast<size_t>(s)].total_bytes() > p.stages[static_cast<size_t>(p.busiest_stage)].total_bytes())
      p.busiest_stage = s;

  const StagePlan& busiest = p.stages[static_cast<size_t>(p.busiest_stage)];
  if (busiest.total_bytes() > kH100MemoryBytes)
    p.warnings.push_back(fmt::format(
        "the busiest GPU (stage {}) needs ~{}, more than the {} of an H100: raise parallel.pp or parallel.ep, "
        "set train.recompute = \"full\" or optimizer.bf16_moments = true, or lower train.micro_batch",
        p.busiest_stage, bytes(busiest.total_bytes()), bytes(kH100MemoryBytes)));
  if (p.pp > 1 && cfg.grad_accum < p.pp)
    p.warnings.push_back(fmt::format(
        "train.grad_accum {} < pp {}: fewer micro-batches per step than pipeline stages, most stages idle",
        cfg.grad_accum, p.pp));
  return p;
}

std::string describe_plan(const ParallelPlan& p) {
  std::string out;
  out += fmt::format("layout       {} GPU(s) = tp {} x pp {} x dp {}; ep {} carved from dp x tp = {} "
                     "(expert-data-parallel groups of {}), expert tensor parallel 1\n",
                     p.gpus, p.tp, p.pp, p.dp, p.ep, p.dp * p.tp, p.expert_dp);
  out += fmt::format("batch        global {} sequences per step = micro_batch {} x grad_accum {} x dp {}; "
                     "{} tokens per step ({} x seq_len {})\n",
                     p.global_batch, p.micro_batch, p.grad_accum, p.dp, p.tokens_per_step, p.global_batch, p.seq_len);
  out += fmt::format("compute      {:.4g} FLOPs per token, {:.4g} per step, {:.4g} per GPU per step\n",
                     p.flops_per_token, p.flops_per_token * d(p.tokens_per_step),
                     p.flops_per_token * d(p.tokens_per_step) / d(p.gpus));
  out += fmt::format("attention    {} heads, {} per tp rank\n", p.num_heads, p.heads_per_tp_rank);
  if (p.routed_experts > 0)
    out += fmt::format("experts      {} routed per MoE layer, {} per ep rank (shared experts split over tp)\n",
                       p.routed_experts, p.experts_per_ep_rank);
  out += fmt::format("pipeline     {} layers over {} stage(s): {}; {}\n", p.num_layers, p.pp, layer_runs(p.stages),
                     p.layer_split);
  if (p.pp > 1) {
    const double bubble = d(p.pp - 1) / d(p.grad_accum + p.pp - 1);
    out += fmt::format("             1F1B schedule: stage s keeps min(pp - s, grad_accum) micro-batches in flight; "
                       "bubble (pp - 1) / (grad_accum + pp - 1) = {:.1f}% of a step\n",
                       100.0 * bubble);
  }
  out += fmt::format("optimizer    assumption: distributed optimizer (ZeRO-1): bf16 weights (2 B/param) and fp32 "
                     "gradients (4 B/param) whole on every GPU; fp32 master + Adam m, v ({} B/param, {} moments) "
                     "sharded over dp {} (dense) and expert-dp {} (routed experts)\n",
                     p.bf16_moments ? 8 : 12, p.bf16_moments ? "bf16" : "fp32", p.dp, p.expert_dp);
  out += fmt::format("activations  the trainer's fp32 estimate per micro-batch of {} x {} tokens (recompute {}){}; "
                     "balanced routing\n",
                     p.micro_batch, p.seq_len, p.recompute,
                     p.tp > 1 ? fmt::format(", / tp {} (sequence parallel)", p.tp) : "");
  // One row per stage; the header goes through the same widths as the rows.
  auto row = [](const std::string& stage, const std::string& layers, const std::string& params,
                const std::string& in_flight, const std::string& w, const std::string& g, const std::string& o,
                const std::string& a, const std::string& total) {
    return fmt::format("{:>5}  {:<12}  {:<20}  {:>9}  {:>9}  {:>9}  {:>9}  {:>11}  {:>9}", stage, layers, params,
                       in_flight, w, g, o, a, total);
  };
  out += "per GPU      " + row("stage", "layers", "params dense + expert", "in flight", "weights", "grads",
                              "optimizer", "activations", "total") + "\n";
  for (size_t s = 0; s < p.stages.size(); ++s) {
    const StagePlan& st = p.stages[s];
    std::string layers = st.num_layers == 1 ? fmt::format("{}", st.first_layer)
                                            : fmt::format("{}-{}", st.first_layer, st.first_layer + st.num_layers - 1);
    if (st.embedding) layers += "+E";
    if (st.head) layers += p.mtp_depth > 0 ? "+H+M" : "+H";
    out += "             " +
           row(fmt::format("{}", s), layers, count(st.dense_params) + " + " + count(st.expert_params),
               fmt::format("{}", st.in_flight), bytes(st.weight_bytes), bytes(st.grad_bytes),
               bytes(st.optimizer_bytes), bytes(st.activation_bytes), bytes(st.total_bytes())) +
           (static_cast<int64_t>(s) == p.busiest_stage ? "  <- busiest" : "") + "\n";
  }
  out += "             (GB = 1e9 bytes; layers +E embedding, +H final norm and LM head, +M MTP modules)\n";
  const StagePlan& b = p.stages[static_cast<size_t>(p.busiest_stage)];
  out += fmt::format("memory       busiest GPU (stage {}): ~{} = weights {} + gradients {} + optimizer {} + "
                     "activations {}; {} of {} trained parameters on it\n",
                     p.busiest_stage, bytes(b.total_bytes()), bytes(b.weight_bytes), bytes(b.grad_bytes),
                     bytes(b.optimizer_bytes), bytes(b.activation_bytes), count(b.dense_params + b.expert_params), count(p.trained_params));
  if (p.gpus > 1)
    out += "note         this build trains on one device; the plan sizes the layout for a parallel trainer\n";
  for (const std::string& w : p.warnings) out += fmt::format("warning      {}\n", w);
  return out;
}

}  // namespace dsv::train
