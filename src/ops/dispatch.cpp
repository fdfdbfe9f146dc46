// Validation at the op boundary, then dispatch to the CPU reference or a registered backend.
#include "backends/cpu/cpu_ops.h"
#include "core/error.h"
#include "ops/ops.h"

namespace dsv::ops {

BackendTable& backend_table(Backend b) {
  static BackendTable cuda;
  DSV_CHECK(b == Backend::Cuda, "no backend table for the CPU (it is called directly)");
  return cuda;
}

bool backend_available(Backend b) { return b == Backend::Cpu || backend_table(b).linear != nullptr; }

namespace {
// Runs the CPU op, or the backend's entry for it (which must be registered).
template <typename Params, typename Entry>
void run(const Context& ctx, const Params& p, void (*cpu_op)(const Params&), Entry BackendTable::*entry,
         const char* name) {
  if (ctx.backend == Backend::Cpu) return cpu_op(p);
  DSV_CHECK(backend_available(ctx.backend), "op {}: the CUDA backend is not available in this build", name);
  auto fn = backend_table(ctx.backend).*entry;
  DSV_CHECK(fn != nullptr, "op {}: not implemented on this backend", name);
  fn(p, ctx.stream);
}
}  // namespace

void linear(const Context& ctx, const LinearParams& p) {
  DSV_CHECK(p.x && p.w && p.y, "linear: null pointer (x={}, w={}, y={})", (void*)p.x, (void*)p.w, (void*)p.y);
  DSV_CHECK(p.M >= 0 && p.N >= 0 && p.K >= 0, "linear: negative size M={} N={} K={}", p.M, p.N, p.K);
  DSV_CHECK(p.x_stride == 0 || p.x_stride >= p.K, "linear: x_stride {} < K {}", p.x_stride, p.K);
  DSV_CHECK(p.y_stride == 0 || p.y_stride >= p.N, "linear: y_stride {} < N {}", p.y_stride, p.N);
  DSV_CHECK(p.batch >= 1, "linear: batch must be >= 1, found {}", p.batch);
  run(ctx, p, cpu::linear, &BackendTable::linear, "linear");
}

void rmsnorm(const Context& ctx, const RmsNormParams& p) {
  DSV_CHECK(p.x && p.weight && p.y, "rmsnorm: null pointer");
  DSV_CHECK(p.dim > 0 && p.rows >= 0, "rmsnorm: bad sizes rows={} dim={}", p.rows, p.dim);
  run(ctx, p, cpu::rmsnorm, &BackendTable::rmsnorm, "rmsnorm");
}

void rope(const Context& ctx, const RopeParams& p) {
  DSV_CHECK(p.x && p.cos && p.sin, "rope: null pointer");
  DSV_CHECK(p.rope_dim > 0 && p.rope_dim % 2 == 0, "rope: rope_dim must be even and positive, found {}", p.rope_dim);
  DSV_CHECK(p.offset + p.rope_dim <= (p.heads > 1 ? p.head_stride : p.token_stride),
            "rope: rope span [{}, {}) exceeds the vector stride", p.offset, p.offset + p.rope_dim);
  run(ctx, p, cpu::rope, &BackendTable::rope, "rope");
}

void attention(const Context& ctx, const AttentionParams& p) {
  DSV_CHECK(p.q && p.k && p.v && p.out, "attention: null pointer");
  DSV_CHECK(p.T <= p.S, "attention: {} queries but only {} keys (queries must be the last keys)", p.T, p.S);
  DSV_CHECK(p.H > 0 && p.Dqk > 0 && p.Dv > 0, "attention: bad sizes H={} Dqk={} Dv={}", p.H, p.Dqk, p.Dv);
  DSV_CHECK(p.Hkv == 0 || p.Hkv == 1 || p.Hkv == p.H, "attention: Hkv={} must be 1 or H={}", p.Hkv, p.H);
  run(ctx, p, cpu::attention, &BackendTable::attention, "attention");
}

void swiglu(const Context& ctx, const SwigluParams& p) {
  DSV_CHECK(p.gate && p.up && p.out, "swiglu: null pointer");
  run(ctx, p, cpu::swiglu, &BackendTable::swiglu, "swiglu");
}

void route(const Context& ctx, const RouterParams& p) {
  DSV_CHECK(p.logits && p.indices && p.weights, "route: null pointer");
  DSV_CHECK(p.K > 0 && p.K <= p.E, "route: K={} must be in 1..E={}", p.K, p.E);
  if (p.kind != RouterKind::SoftmaxGreedy)
    DSV_CHECK(p.n_group > 0 && p.E % p.n_group == 0 && p.topk_group > 0 && p.topk_group <= p.n_group,
              "route: bad grouping E={} n_group={} topk_group={}", p.E, p.n_group, p.topk_group);
  if (p.kind == RouterKind::SigmoidNoauxGroups)
    DSV_CHECK(p.correction_bias != nullptr, "route: sigmoid routing needs e_score_correction_bias");
  run(ctx, p, cpu::route, &BackendTable::route, "route");
}

void embed(const Context& ctx, const EmbedParams& p) {
  DSV_CHECK(p.ids && p.table && p.out, "embed: null pointer");
  run(ctx, p, cpu::embed, &BackendTable::embed, "embed");
}

void add(const Context& ctx, const AddParams& p) {
  DSV_CHECK(p.x && p.y, "add: null pointer");
  run(ctx, p, cpu::add, &BackendTable::add, "add");
}

void copy2d(const Context& ctx, const Copy2dParams& p) {
  DSV_CHECK(p.dst, "copy2d: null destination");
  DSV_CHECK(p.src_stride >= p.cols && p.dst_stride >= p.cols, "copy2d: strides ({}, {}) below cols {}",
            p.src_stride, p.dst_stride, p.cols);
  run(ctx, p, cpu::copy2d, &BackendTable::copy2d, "copy2d");
}

void gather_rows(const Context& ctx, const RowsParams& p) {
  DSV_CHECK(p.rows && p.x && p.y, "gather_rows: null pointer");
  run(ctx, p, cpu::gather_rows, &BackendTable::gather_rows, "gather_rows");
}

void scatter_add_rows(const Context& ctx, const RowsParams& p) {
  DSV_CHECK(p.rows && p.x && p.y, "scatter_add_rows: null pointer");
  run(ctx, p, cpu::scatter_add_rows, &BackendTable::scatter_add_rows, "scatter_add_rows");
}

void moe_experts(const Context& ctx, const MoeExpertsParams& p) {
  DSV_CHECK(p.x && p.indices && p.weights && p.gate && p.up && p.down && p.scratch && p.out,
            "moe_experts: null pointer");
  DSV_CHECK(p.T > 0 && p.K > 0 && p.D > 0 && p.F > 0, "moe_experts: bad sizes T={} K={} D={} F={}", p.T, p.K, p.D,
            p.F);
  run(ctx, p, cpu::moe_experts, &BackendTable::moe_experts, "moe_experts");
}

void fill_random(const Context& ctx, const FillRandomParams& p) {
  DSV_CHECK(p.x || p.n == 0, "fill_random: null pointer");
  run(ctx, p, cpu::fill_random, &BackendTable::fill_random, "fill_random");
}

}  // namespace dsv::ops
