// Training forward/backward of the SwiGLU MLP (dense layers, experts, shared experts) and of the
// DeepSeekMoE layer: router -> top-K -> experts grouped by token lists -> weighted combine + shared.
// The routing is read back to the host to group tokens per expert; the balance losses are computed
// there too, from the same logits and choices. With bf16 products on a device the routed experts of a
// layer run as grouped GEMMs (ops::moe_train_forward / _backward); otherwise one expert at a time.
#include <cmath>
#include <map>

#include "core/error.h"
#include "ops/ops.h"
#include "train/param_store.h"
#include "train/train_layers.h"

namespace dsv::train {

void mlp_forward(const ops::Context& ctx, const MlpWeights& w, const float* x, int64_t T, int64_t D, float* out,
                 bool accumulate, MlpSaved& s) {
  const int64_t F = w.gate_proj.dim(0);
  s.gate = Buffer<float>(ctx.backend, T * F);
  s.up = Buffer<float>(ctx.backend, T * F);
  Buffer<float> h(ctx.backend, T * F);
  ops::linear(ctx, {.x = x, .w = w.gate_proj.data, .bias = w.gate_bias.data, .y = s.gate.data(), .M = T, .N = F, .K = D});
  ops::linear(ctx, {.x = x, .w = w.up_proj.data, .bias = w.up_bias.data, .y = s.up.data(), .M = T, .N = F, .K = D});
  ops::swiglu(ctx, {.gate = s.gate.data(), .up = s.up.data(), .out = h.data(), .n = T * F});
  ops::linear(ctx, {.x = h.data(), .w = w.down_proj.data, .bias = w.down_bias.data, .y = out, .M = T, .N = D, .K = F,
                    .accumulate = accumulate});
}

void mlp_backward(const ops::Context& ctx, const MlpWeights& w, const MlpWeights& g, const float* x, int64_t T,
                  int64_t D, const MlpSaved& s, const float* dy, float* dx, bool accumulate_dx) {
  const int64_t F = w.gate_proj.dim(0);
  const ops::Backend be = ctx.backend;
  Buffer<float> h(be, T * F), dgate(be, T * F), dup(be, T * F);
  ops::swiglu(ctx, {.gate = s.gate.data(), .up = s.up.data(), .out = h.data(), .n = T * F});  // recomputed
  ops::linear_backward(ctx, {.dy = dy, .x = h.data(), .w = w.down_proj.data, .dx = h.data(),  // dh over h
                             .dw = mut(g.down_proj), .dbias = mut(g.down_bias), .M = T, .N = D, .K = F,
                             .accumulate_dw = true});
  ops::swiglu_backward(ctx, {.gate = s.gate.data(), .up = s.up.data(), .dout = h.data(), .dgate = dgate.data(),
                             .dup = dup.data(), .n = T * F});
  ops::linear_backward(ctx, {.dy = dgate.data(), .x = x, .w = w.gate_proj.data, .dx = dx, .dw = mut(g.gate_proj),
                             .dbias = mut(g.gate_bias), .M = T, .N = F, .K = D, .accumulate_dx = accumulate_dx,
                             .accumulate_dw = true});
  ops::linear_backward(ctx, {.dy = dup.data(), .x = x, .w = w.up_proj.data, .dx = dx, .dw = mut(g.up_proj),
                             .dbias = mut(g.up_bias), .M = T, .N = F, .K = D, .accumulate_dx = true,
                             .accumulate_dw = true});
}

namespace {

bool has_shared(const MoeWeights& w) { return !w.shared.gate_proj.empty() && w.shared.gate_proj.dim(0) > 0; }

// Balance losses of docs/TRAINING.md for one layer, per sequence: returns the weighted loss and
// fills dlogits[T, E] with its gradient.
double balance_loss(const ModelConfig& c, const AuxSpec& aux, Batch batch, const std::vector<float>& logits,
                    const std::vector<int32_t>& idx, std::vector<float>& dlogits) {
  const bool v3 = c.router == RouterKind::SigmoidNoauxGroups;
  const double alpha = v3 ? aux.seq_aux_alpha : aux.expert_aux_alpha;
  const int64_t S = batch.length, E = c.n_routed_experts, K = c.num_experts_per_tok;
  dlogits.assign(static_cast<size_t>(batch.tokens() * E), 0.0f);
  double total = 0.0;
  std::vector<double> s(static_cast<size_t>(E)), f(static_cast<size_t>(E)), P(static_cast<size_t>(E));
  for (int64_t b = 0; b < batch.sequences; ++b) {
    std::fill(f.begin(), f.end(), 0.0);
    std::fill(P.begin(), P.end(), 0.0);
    for (int64_t t = b * S; t < (b + 1) * S; ++t)
      for (int64_t k = 0; k < K; ++k) f[idx[t * K + k]] += static_cast<double>(E) / static_cast<double>(K * S);
    // P_i = mean over tokens of the normalized affinity; dL/dP_i = alpha * f_i * weight.
    std::vector<std::vector<double>> probs(static_cast<size_t>(S), std::vector<double>(static_cast<size_t>(E)));
    for (int64_t i = 0; i < S; ++i) {
      const float* row = logits.data() + (b * S + i) * E;
      double sum = 0.0;
      if (v3) {
        for (int64_t e = 0; e < E; ++e) sum += s[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(row[e])));
      } else {
        double mx = row[0];
        for (int64_t e = 1; e < E; ++e) mx = std::max(mx, static_cast<double>(row[e]));
        for (int64_t e = 0; e < E; ++e) sum += s[e] = std::exp(static_cast<double>(row[e]) - mx);
      }
      for (int64_t e = 0; e < E; ++e) P[e] += (probs[i][e] = s[e] / sum) / static_cast<double>(S);
      // Gradient of the normalized probabilities p = s / sum with g_e = dL/dp_e:
      //   V3 (s = sigmoid): dL/ds_j = (g_j - sum_e g_e p_e) / sum, then times s_j (1 - s_j).
      //   V2 (softmax):     dL/dlogit_j = p_j (g_j - sum_e g_e p_e).
      double gp = 0.0;
      std::vector<double> g(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) {
        g[e] = alpha * f[e] * aux.sequence_weight / static_cast<double>(S);
        gp += g[e] * probs[i][e];
      }
      float* d = dlogits.data() + (b * S + i) * E;
      for (int64_t e = 0; e < E; ++e) {
        if (v3) {
          const double sig = s[e];
          d[e] = static_cast<float>((g[e] - gp) / sum * sig * (1.0 - sig));
        } else {
          d[e] = static_cast<float>(probs[i][e] * (g[e] - gp));
        }
      }
    }
    double l = 0.0;
    for (int64_t e = 0; e < E; ++e) l += f[e] * P[e];
    total += alpha * l * aux.sequence_weight;
  }
  return total;
}

// Routing indices read back without draining the device: a copy into pinned host memory the device
// writes directly, then the host waits on an event recorded after that copy only, so work issued after
// start() keeps running. One per backend that has mapped memory (never freed: process lifetime).
class RoutingReadback {
 public:
  static RoutingReadback* of(const ops::Context& ctx) {
    const ops::BackendTable& t = ops::backend_table(ctx.backend);
    if (!t.host_mapped_allocate || !t.event_create || ops::op_profile_enabled()) return nullptr;
    static std::map<ops::Backend, RoutingReadback*> per_backend;
    RoutingReadback*& r = per_backend[ctx.backend];
    if (!r) r = new RoutingReadback(t);
    return r;
  }
  void start(const ops::Context& ctx, const int32_t* indices, int64_t n) {
    if (n > capacity_) {
      if (host_) t_.host_mapped_release(host_);
      void* view = nullptr;
      host_ = static_cast<int32_t*>(t_.host_mapped_allocate(static_cast<size_t>(n) * sizeof(int32_t), &view));
      device_view_ = static_cast<int32_t*>(view);
      capacity_ = n;
    }
    n_ = n;
    // A copy of 32-bit words through float registers: loads and stores only, so the bits are kept.
    ops::copy2d(ctx, {.src = reinterpret_cast<const float*>(indices), .dst = reinterpret_cast<float*>(device_view_),
                      .rows = 1, .cols = n, .src_stride = n, .dst_stride = n});
    t_.event_record(event_, ctx.stream);
  }
  std::vector<int32_t> finish() {
    t_.event_wait(event_);
    return std::vector<int32_t>(host_, host_ + n_);
  }

 private:
  explicit RoutingReadback(const ops::BackendTable& t) : t_(t), event_(t.event_create()) {}
  const ops::BackendTable& t_;
  void* event_;
  int32_t *host_ = nullptr, *device_view_ = nullptr;
  int64_t capacity_ = 0, n_ = 0;
};

// Whether the routed experts can run as one grouped op: bf16 products on a device, bf16 compute copies
// of every expert weight, no biases, and shapes the device kernels take.
bool use_grouped_experts(const ops::Context& ctx, const ModelConfig& c, const MoeWeights& w) {
  if (ctx.backend == ops::Backend::Cpu || ops::matmul_precision() != ops::MatmulPrecision::Bf16) return false;
  const int64_t D = c.hidden_size, E = c.n_routed_experts;
  if (w.experts.empty() || E > ops::kMoeTrainMaxExperts || D % 8 != 0) return false;
  const int64_t F = w.experts[0].gate_proj.dim(0);
  if (F % 8 != 0) return false;
  for (const MlpWeights& x : w.experts) {
    if (!x.gate_bias.empty() || !x.up_bias.empty() || !x.down_bias.empty()) return false;
    if (!ops::bf16_weight_copy(x.gate_proj.data, F * D) || !ops::bf16_weight_copy(x.up_proj.data, F * D) ||
        !ops::bf16_weight_copy(x.down_proj.data, D * F))
      return false;
  }
  return true;
}

// Device tables of the experts' bf16 compute copies: gate, up, down (E pointers each, in one buffer).
Buffer<const uint16_t*> bf16_tables(const ops::Context& ctx, const MoeWeights& w, int64_t F, int64_t D) {
  const size_t E = w.experts.size();
  std::vector<const uint16_t*> t(3 * E);
  for (size_t e = 0; e < E; ++e) {
    t[e] = ops::bf16_weight_copy(w.experts[e].gate_proj.data, F * D);
    t[E + e] = ops::bf16_weight_copy(w.experts[e].up_proj.data, F * D);
    t[2 * E + e] = ops::bf16_weight_copy(w.experts[e].down_proj.data, D * F);
  }
  return Buffer<const uint16_t*>(ctx, t.data(), t.size());
}

ops::MoeTrainParams grouped_params(const ModelConfig& c, const MoeSaved& s, const float* xn, int64_t T, int64_t F) {
  const int64_t E = c.n_routed_experts;
  const uint16_t* const* tables = s.weight_tables.data();
  return {.x = xn, .weights = s.pair_weights.data(), .offsets = s.offsets.data(), .row_pair = s.row_pair.data(),
          .slot_of_pair = s.slot_of_pair.data(), .gate = tables, .up = tables + E, .down = tables + 2 * E,
          .xs = s.xs.data(), .gu = s.gu.data(), .h = s.h.data(), .y = s.y.data(), .T = T,
          .K = c.num_experts_per_tok, .D = c.hidden_size, .F = F,
          .E = E, .rows = s.grouped_rows};
}

}  // namespace

void moe_forward(const ops::Context& ctx, const ModelConfig& c, const MoeWeights& w, const float* xn, Batch batch,
                 const AuxSpec& aux, float* out, MoeSaved& s, MoeStats& stats) {
  const int64_t T = batch.tokens(), D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const ops::Backend be = ctx.backend;
  s.logits = Buffer<float>(be, T * E);
  s.indices = Buffer<int32_t>(be, T * K);
  Buffer<float> weights(be, T * K);
  ops::linear(ctx, {.x = xn, .w = w.router.data, .y = s.logits.data(), .M = T, .N = E, .K = D});
  ops::route(ctx, {.logits = s.logits.data(), .correction_bias = w.score_correction_bias.data,
                   .indices = s.indices.data(), .weights = weights.data(), .T = T, .E = E, .K = K,
                   .n_group = c.n_group, .topk_group = c.topk_group, .kind = c.router,
                   .norm_topk_prob = c.norm_topk_prob,
                   .routed_scaling_factor = static_cast<float>(c.routed_scaling_factor)});
  // The routing goes to the host (row plan, load statistics). With grouped experts the shared experts,
  // which do not need it, run first and the routed combine adds onto them; on a device the indices come
  // back behind an event of their own, so the shared experts keep the GPU busy while the host waits
  // and plans (a plain read-back would drain the device first).
  s.grouped = use_grouped_experts(ctx, c, w);
  const bool shared_first = s.grouped && has_shared(w);
  std::vector<int32_t> idx;
  if (RoutingReadback* readback = shared_first ? RoutingReadback::of(ctx) : nullptr) {
    readback->start(ctx, s.indices.data(), T * K);
    mlp_forward(ctx, w.shared, xn, T, D, out, false, s.shared);
    idx = readback->finish();
  } else {
    if (shared_first) mlp_forward(ctx, w.shared, xn, T, D, out, false, s.shared);
    idx = s.indices.to_host(ctx);
  }

  stats.load.assign(static_cast<size_t>(E), 0);
  for (int64_t p = 0; p < T * K; ++p) stats.load[idx[p]]++;
  s.experts.clear();
  if (s.grouped) {
    const int64_t F = w.experts[0].gate_proj.dim(0);
    const ops::MoeTrainRows plan = ops::plan_moe_train_rows(idx, E);
    s.grouped_rows = plan.rows();
    s.offsets = Buffer<int32_t>(ctx, plan.offsets.data(), plan.offsets.size());
    s.row_pair = Buffer<int32_t>(ctx, plan.row_pair.data(), plan.row_pair.size());
    s.slot_of_pair = Buffer<int32_t>(ctx, plan.slot_of_pair.data(), plan.slot_of_pair.size());
    s.pair_weights = std::move(weights);
    const size_t rows = static_cast<size_t>(s.grouped_rows);
    s.xs = Buffer<uint16_t>(be, rows * D);
    s.h = Buffer<uint16_t>(be, rows * F);
    s.gu = Buffer<float>(be, rows * 2 * F);
    s.y = Buffer<float>(be, rows * D);
    s.weight_tables = bf16_tables(ctx, w, F, D);
    ops::MoeTrainParams p = grouped_params(c, s, xn, T, F);
    p.out = out;
    p.accumulate = shared_first;
    ops::moe_train_forward(ctx, p);
  } else {
    // Group the (token, slot) pairs by expert on the host; upload the grouping once.
    const std::vector<float> gate = weights.to_host(ctx);
    s.experts.resize(static_cast<size_t>(E));
    for (int64_t e = 0, offset = 0; e < E; offset += stats.load[e], ++e) {
      s.experts[e].offset = offset;
      s.experts[e].pairs.reserve(static_cast<size_t>(stats.load[e]));
    }
    std::vector<int32_t> rows(static_cast<size_t>(T * K));
    std::vector<float> scales(static_cast<size_t>(T * K));
    for (int64_t p = 0; p < T * K; ++p) {
      ExpertSaved& x = s.experts[idx[p]];
      rows[x.offset + x.n] = static_cast<int32_t>(p / K);
      scales[x.offset + x.n] = gate[p];
      x.pairs.push_back(static_cast<int32_t>(p));
      x.n++;
    }
    s.rows = Buffer<int32_t>(ctx, rows.data(), rows.size());
    s.scales = Buffer<float>(ctx, scales.data(), scales.size());

    ops::copy2d(ctx, {.src = nullptr, .dst = out, .rows = T, .cols = D, .src_stride = D, .dst_stride = D});
    for (int64_t e = 0; e < E; ++e) {
      ExpertSaved& x = s.experts[e];
      if (x.n == 0) continue;
      const int32_t* expert_rows = s.rows.data() + x.offset;
      Buffer<float> xe(be, x.n * D);
      x.y = Buffer<float>(be, x.n * D);
      ops::gather_rows(ctx, {.rows = expert_rows, .x = xn, .y = xe.data(), .n = x.n, .D = D});
      mlp_forward(ctx, w.experts[e], xe.data(), x.n, D, x.y.data(), false, x.mlp);
      ops::scatter_add_rows(ctx, {.rows = expert_rows, .scale = s.scales.data() + x.offset, .x = x.y.data(), .y = out,
                                  .n = x.n, .D = D});
    }
  }
  if (has_shared(w) && !shared_first) mlp_forward(ctx, w.shared, xn, T, D, out, true, s.shared);

  stats.aux_loss = 0.0;
  s.aux_dlogits = Buffer<float>();
  const bool v3 = c.router == RouterKind::SigmoidNoauxGroups;
  if ((v3 ? aux.seq_aux_alpha : aux.expert_aux_alpha) > 0.0) {
    std::vector<float> dlogits;
    stats.aux_loss = balance_loss(c, aux, batch, s.logits.to_host(ctx), idx, dlogits);
    s.aux_dlogits = Buffer<float>(ctx, dlogits.data(), dlogits.size());
  }
}

void zero_expert_grads(const ops::Context& ctx, const MoeWeights& g) {
  for (const MlpWeights& e : g.experts)
    for (const Tensor* t : {&e.gate_proj, &e.up_proj, &e.down_proj})
      if (t->numel()) ops::copy2d(ctx, {.src = nullptr, .dst = mut(*t), .rows = 1, .cols = t->numel(),
                                        .src_stride = t->numel(), .dst_stride = t->numel()});
}

void moe_backward(const ops::Context& ctx, const ModelConfig& c, const MoeWeights& w, const MoeWeights& g,
                  const float* xn, Batch batch, const MoeSaved& s, const float* dout, float* dxn,
                  bool overwrite_expert_grads) {
  const int64_t T = batch.tokens(), D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const ops::Backend be = ctx.backend;
  if (has_shared(w)) mlp_backward(ctx, w.shared, g.shared, xn, T, D, s.shared, dout, dxn, false);
  else ops::copy2d(ctx, {.src = nullptr, .dst = dxn, .rows = T, .cols = D, .src_stride = D, .dst_stride = D});

  Buffer<float> dw;  // [T * K] gradient of the combine weights, pair order
  if (s.grouped) {
    const int64_t F = w.experts[0].gate_proj.dim(0);
    std::vector<float*> grads(static_cast<size_t>(3 * E));
    for (int64_t e = 0; e < E; ++e) {
      grads[e] = mut(g.experts[e].gate_proj);
      grads[E + e] = mut(g.experts[e].up_proj);
      grads[2 * E + e] = mut(g.experts[e].down_proj);
    }
    const Buffer<float*> grad_tables(ctx, grads.data(), grads.size());
    dw = Buffer<float>(be, T * K);
    ops::moe_train_backward(ctx, {.fwd = grouped_params(c, s, xn, T, F), .dout = dout, .dx = dxn,
                                  .dweights = dw.data(), .dgate = grad_tables.data(),
                                  .dup = grad_tables.data() + E, .ddown = grad_tables.data() + 2 * E,
                                  .overwrite_dw = overwrite_expert_grads});
  } else {
    if (overwrite_expert_grads) zero_expert_grads(ctx, g);  // the per-expert products accumulate
    // out[t] += scale * y_e[r]: dy_e[r] = scale * dout[t], dscale = dout[t] . y_e[r] (all experts' dscale
    // gathered on the device, read back once).
    Buffer<float> dscale(be, T * K);
    for (int64_t e = 0; e < E; ++e) {
      const ExpertSaved& x = s.experts[e];
      if (x.n == 0) continue;
      const int32_t* expert_rows = s.rows.data() + x.offset;
      Buffer<float> xe(be, x.n * D), dy(be, x.n * D), dxe(be, x.n * D);
      ops::row_dots(ctx, {.rows = expert_rows, .a = dout, .b = x.y.data(), .out = dscale.data() + x.offset, .n = x.n,
                          .D = D});
      ops::gather_rows(ctx, {.rows = expert_rows, .scale = s.scales.data() + x.offset, .x = dout, .y = dy.data(),
                             .n = x.n, .D = D});
      ops::gather_rows(ctx, {.rows = expert_rows, .x = xn, .y = xe.data(), .n = x.n, .D = D});
      mlp_backward(ctx, w.experts[e], g.experts[e], xe.data(), x.n, D, x.mlp, dy.data(), dxe.data(), false);
      ops::scatter_add_rows(ctx, {.rows = expert_rows, .x = dxe.data(), .y = dxn, .n = x.n, .D = D});
    }
    const std::vector<float> ds = dscale.to_host(ctx);
    std::vector<float> dweights(static_cast<size_t>(T * K), 0.0f);
    for (const ExpertSaved& x : s.experts)
      for (int64_t r = 0; r < x.n; ++r) dweights[x.pairs[r]] = ds[x.offset + r];
    dw = Buffer<float>(ctx, dweights.data(), dweights.size());
  }

  Buffer<float> dlogits(be, T * E);
  ops::route_backward(ctx, {.logits = s.logits.data(), .indices = s.indices.data(), .dweights = dw.data(),
                            .dlogits = dlogits.data(), .T = T, .E = E, .K = K, .kind = c.router,
                            .norm_topk_prob = c.norm_topk_prob,
                            .routed_scaling_factor = static_cast<float>(c.routed_scaling_factor)});
  if (s.aux_dlogits.size()) ops::add(ctx, {.x = s.aux_dlogits.data(), .y = dlogits.data(), .n = T * E});
  ops::linear_backward(ctx, {.dy = dlogits.data(), .x = xn, .w = w.router.data, .dx = dxn, .dw = mut(g.router), .M = T,
                             .N = E, .K = D, .accumulate_dx = true, .accumulate_dw = true});
}

}  // namespace dsv::train
