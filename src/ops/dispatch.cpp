// Validation at the op boundary, then dispatch to a backend.
#include "backends/cpu/cpu_ops.h"
#include "core/error.h"
#include "ops/ops.h"

namespace dsv::ops {
namespace {
void require_cpu(const Context& ctx, const char* op) {
  DSV_CHECK(ctx.backend == Backend::Cpu, "op {}: only the CPU backend is dispatched from here", op);
}
}  // namespace

void linear(const Context& ctx, const LinearParams& p) {
  DSV_CHECK(p.x && p.w && p.y, "linear: null pointer (x={}, w={}, y={})", (void*)p.x, (void*)p.w, (void*)p.y);
  DSV_CHECK(p.M >= 0 && p.N >= 0 && p.K >= 0, "linear: negative size M={} N={} K={}", p.M, p.N, p.K);
  DSV_CHECK(p.x_stride == 0 || p.x_stride >= p.K, "linear: x_stride {} < K {}", p.x_stride, p.K);
  DSV_CHECK(p.y_stride == 0 || p.y_stride >= p.N, "linear: y_stride {} < N {}", p.y_stride, p.N);
  require_cpu(ctx, "linear");
  cpu::linear(p);
}

void rmsnorm(const Context& ctx, const RmsNormParams& p) {
  DSV_CHECK(p.x && p.weight && p.y, "rmsnorm: null pointer");
  DSV_CHECK(p.dim > 0 && p.rows >= 0, "rmsnorm: bad sizes rows={} dim={}", p.rows, p.dim);
  require_cpu(ctx, "rmsnorm");
  cpu::rmsnorm(p);
}

void rope(const Context& ctx, const RopeParams& p) {
  DSV_CHECK(p.x && p.cos && p.sin, "rope: null pointer");
  DSV_CHECK(p.rope_dim > 0 && p.rope_dim % 2 == 0, "rope: rope_dim must be even and positive, found {}", p.rope_dim);
  DSV_CHECK(p.offset + p.rope_dim <= (p.heads > 1 ? p.head_stride : p.token_stride),
            "rope: rope span [{}, {}) exceeds the vector stride", p.offset, p.offset + p.rope_dim);
  require_cpu(ctx, "rope");
  cpu::rope(p);
}

void attention(const Context& ctx, const AttentionParams& p) {
  DSV_CHECK(p.q && p.k && p.v && p.out, "attention: null pointer");
  DSV_CHECK(p.T <= p.S, "attention: {} queries but only {} keys (queries must be the last keys)", p.T, p.S);
  DSV_CHECK(p.H > 0 && p.Dqk > 0 && p.Dv > 0, "attention: bad sizes H={} Dqk={} Dv={}", p.H, p.Dqk, p.Dv);
  DSV_CHECK(p.Hkv == 0 || p.Hkv == 1 || p.Hkv == p.H, "attention: Hkv={} must be 1 or H={}", p.Hkv, p.H);
  require_cpu(ctx, "attention");
  cpu::attention(p);
}

void swiglu(const Context& ctx, const SwigluParams& p) {
  DSV_CHECK(p.gate && p.up && p.out, "swiglu: null pointer");
  require_cpu(ctx, "swiglu");
  cpu::swiglu(p);
}

void route(const Context& ctx, const RouterParams& p) {
  DSV_CHECK(p.logits && p.indices && p.weights, "route: null pointer");
  DSV_CHECK(p.K > 0 && p.K <= p.E, "route: K={} must be in 1..E={}", p.K, p.E);
  if (p.kind != RouterKind::SoftmaxGreedy)
    DSV_CHECK(p.n_group > 0 && p.E % p.n_group == 0 && p.topk_group > 0 && p.topk_group <= p.n_group,
              "route: bad grouping E={} n_group={} topk_group={}", p.E, p.n_group, p.topk_group);
  if (p.kind == RouterKind::SigmoidNoauxGroups)
    DSV_CHECK(p.correction_bias != nullptr, "route: sigmoid routing needs e_score_correction_bias");
  require_cpu(ctx, "route");
  cpu::route(p);
}

}  // namespace dsv::ops
