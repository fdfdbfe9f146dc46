// DeepSeekMoE: routed experts (top-K per token, weighted) plus always-on shared experts.
// Routing runs on the backend. For up to kDeviceMaxTokens tokens (decode steps, batched decode) the
// experts run on the device through ops::moe_experts (on CUDA grouped by expert: each active expert's
// weights are read once per step), so a step never waits for the host and can be captured as a graph.
// For more (prefill), bf16 experts on CUDA run as grouped tensor-core GEMMs planned on the device; other
// cases read the assignment back to group tokens per expert, one matrix product per expert.
#include <optional>
#include <vector>

#include "model/layers/layers.h"
#include "ops/ops.h"

namespace dsv::layers {
namespace {
// Up to this many tokens, routed experts run without leaving the device (GEMV-shaped kernels); above
// it fp32 experts take one tensor-core product per expert after a host round trip.
// On the CPU, where there is no device to stay on, only single steps go pair by pair (as before).
constexpr int64_t kDeviceMaxTokens = 128, kCpuPairMaxTokens = 4;
void routed_by_expert(const ops::Context& ctx, const ModelConfig& c, const MoeWeights& w, const float* x, int64_t T,
                      const ops::Buffer<int32_t>& indices, const ops::Buffer<float>& weights, float* out);
}  // namespace

void moe(const ops::Context& ctx, const ModelConfig& c, const MoeWeights& w, const float* x, int64_t T, float* out,
         const TapFn& tap, int64_t layer) {
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const ops::Backend be = ctx.backend;

  // The shared experts do not depend on the routing: they run on a branch (ops::Branch) into their own
  // buffer, so on a device they overlap the router and the routed experts, and are added at the end.
  const bool has_shared = !w.shared.gate_proj.empty() && w.shared.gate_proj.dim(0) > 0;
  std::optional<ops::Branch> shared_branch;
  ops::Buffer<float> shared_out(be, has_shared ? static_cast<size_t>(T * D) : 0);
  if (has_shared) {
    shared_branch.emplace(ctx);
    mlp(shared_branch->side(), c, w.shared, x, T, shared_out.data());
  }

  ops::Buffer<float> logits(be, T * E), weights(be, T * K);  // router in fp32
  ops::Buffer<int32_t> indices(be, T * K);
  ops::linear(ctx, {.x = x, .w = w.router.data, .y = logits.data(), .M = T, .N = E, .K = D});
  ops::route(ctx, {.logits = logits.data(), .correction_bias = w.score_correction_bias.data,
                   .indices = indices.data(), .weights = weights.data(), .T = T, .E = E, .K = K,
                   .n_group = c.n_group, .topk_group = c.topk_group, .kind = c.router,
                   .norm_topk_prob = c.norm_topk_prob,
                   .routed_scaling_factor = static_cast<float>(c.routed_scaling_factor)});
  emit(ctx, tap, "router_logits", layer, logits.data(), {T, E});

  const int64_t pair_max = ctx.backend == ops::Backend::Cpu ? kCpuPairMaxTokens : kDeviceMaxTokens;
  // bf16 experts on CUDA stay on the device at any T (grouped tensor-core GEMMs past decode sizes).
  const bool device_grouped = ctx.backend == ops::Backend::Cuda && w.gate_table_bf16;
  if ((T <= pair_max && (w.gate_table || w.gate_table_bf16)) || device_grouped) {
    const int64_t F = c.moe_intermediate_size;
    // Per-pair h and y of the decode-sized paths; CUDA needs none for prefill sizes (grouped GEMMs).
    ops::Buffer<float> scratch;
    if (T <= pair_max) scratch = ops::Buffer<float>(be, static_cast<size_t>(T * K * (F + D)));
    ops::moe_experts(ctx, {.x = x, .indices = indices.data(), .weights = weights.data(), .gate = w.gate_table,
                           .up = w.up_table, .down = w.down_table, .gate_bf16 = w.gate_table_bf16,
                           .up_bf16 = w.up_table_bf16, .down_bf16 = w.down_table_bf16, .scratch = scratch.data(), .out = out, .T = T,
                           .K = K, .D = D, .F = F, .E = E});
  } else {
    routed_by_expert(ctx, c, w, x, T, indices, weights, out);
  }
  emit(ctx, tap, "moe_routed", layer, out, {T, D});
  if (has_shared) {
    shared_branch->join();
    ops::add(ctx, {.x = shared_out.data(), .y = out, .n = T * D});
  }
}

namespace {

void routed_by_expert(const ops::Context& ctx, const ModelConfig& c, const MoeWeights& w, const float* x, int64_t T,
                      const ops::Buffer<int32_t>& indices, const ops::Buffer<float>& weights, float* out) {
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const ops::Backend be = ctx.backend;
  const std::vector<int32_t> idx = indices.to_host(ctx);
  const std::vector<float> gate = weights.to_host(ctx);

  std::vector<std::vector<int32_t>> tokens(static_cast<size_t>(E));
  std::vector<std::vector<float>> scales(static_cast<size_t>(E));
  for (int64_t i = 0; i < T * K; ++i) {
    tokens[idx[i]].push_back(static_cast<int32_t>(i / K));
    scales[idx[i]].push_back(gate[i]);
  }
  ops::copy2d(ctx, {.src = nullptr, .dst = out, .rows = T, .cols = D, .src_stride = D, .dst_stride = D});
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = static_cast<int64_t>(tokens[e].size());
    if (n == 0) continue;
    ops::Buffer<int32_t> rows(ctx, tokens[e].data(), tokens[e].size());
    ops::Buffer<float> scale(ctx, scales[e].data(), scales[e].size());
    ops::Buffer<float> xe(be, n * D), ye(be, n * D);
    ops::gather_rows(ctx, {.rows = rows.data(), .x = x, .y = xe.data(), .n = n, .D = D});
    mlp(ctx, c, w.experts[e], xe.data(), n, ye.data());
    ops::scatter_add_rows(ctx, {.rows = rows.data(), .scale = scale.data(), .x = ye.data(), .y = out, .n = n, .D = D});
  }
}

}  // namespace

}  // namespace dsv::layers
