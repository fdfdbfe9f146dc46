// Validation at the op boundary, then dispatch to the CPU reference or a registered backend.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "core/error.h"
#include "ops/memory.h"
#include "ops/ops.h"

namespace dsv::ops {

BackendTable& backend_table(Backend b) {
  static BackendTable cuda;
  DSV_CHECK(b == Backend::Cuda, "no backend table for the CPU (it is called directly)");
  return cuda;
}

namespace {
MatmulPrecision g_matmul_precision = MatmulPrecision::Fp32;
}
void set_matmul_precision(MatmulPrecision p) { g_matmul_precision = p; }
MatmulPrecision matmul_precision() { return g_matmul_precision; }

namespace {
struct WeightCopy {
  const float* weights = nullptr;
  const uint16_t* copy = nullptr;
  int64_t n = 0;
} g_weight_copy;
}  // namespace
void set_bf16_weight_copy(const float* weights, const uint16_t* copy, int64_t n) {
  g_weight_copy = n > 0 ? WeightCopy{weights, copy, n} : WeightCopy{};
}
const uint16_t* bf16_weight_copy(const float* w, int64_t span) {
  const WeightCopy& c = g_weight_copy;
  if (c.n == 0 || w < c.weights || w + span > c.weights + c.n) return nullptr;
  return c.copy + (w - c.weights);
}

bool backend_available(Backend b) { return b == Backend::Cpu || backend_table(b).linear != nullptr; }

namespace {
using Clock = std::chrono::steady_clock;
struct OpTotal {
  double seconds = 0.0, flops = 0.0;
  int64_t calls = 0;
};
struct Profile {
  bool enabled = std::getenv("DSV_OP_PROFILE") != nullptr;
  std::map<std::string, OpTotal> ops;
  double between = 0.0;  // wall time between ops: host work, copies, allocations
  Clock::time_point last_end{};
  bool has_last = false;
};
Profile& profile() {
  static Profile p;
  return p;
}
template <typename Params>
double op_flops(const Params&) {
  return 0.0;
}
double op_flops(const LinearParams& p) { return 2.0 * static_cast<double>(p.M * p.N * p.K * p.batch); }
double op_flops(const LinearWeightGradParams& p) { return 2.0 * static_cast<double>(p.M * p.N * p.K); }
// Padding rows included: they run through the tensor cores like the others.
double op_flops(const MoeTrainParams& p) { return 2.0 * static_cast<double>(p.rows) * 3.0 * p.F * p.D; }
double op_flops(const MoeTrainBackwardParams& p) { return 2.0 * op_flops(p.fwd); }
// Products split by row count: the per-expert products (few rows) apart from the dense ones.
template <typename Params>
std::string op_key(const char* name, const Params&) {
  return name;
}
std::string op_key(const char* name, const LinearParams& p) {
  return fmt::format("{}{} (M {})", name, p.w_bf16 ? " bf16" : "", p.M * p.batch >= 2048 ? ">= 2048" : "< 2048");
}
std::string op_key(const char* name, const LinearWeightGradParams& p) {
  return fmt::format("{} (M {})", name, p.M >= 2048 ? ">= 2048" : "< 2048");
}

// Runs the CPU op, or the backend's entry for it (which must be registered).
template <typename Params, typename Entry>
void run(const Context& ctx, const Params& p, void (*cpu_op)(const Params&), Entry BackendTable::*entry,
         const char* name) {
  if (ctx.backend == Backend::Cpu) return cpu_op(p);
  DSV_CHECK(backend_available(ctx.backend), "op {}: the CUDA backend is not available in this build", name);
  const BackendTable& table = backend_table(ctx.backend);
  auto fn = table.*entry;
  DSV_CHECK(fn != nullptr, "op {}: not implemented on this backend", name);
  Profile& prof = profile();
  if (!prof.enabled || !table.synchronize) return fn(p, ctx.stream);
  table.synchronize(ctx.stream);
  const auto t0 = Clock::now();
  if (prof.has_last) prof.between += std::chrono::duration<double>(t0 - prof.last_end).count();
  fn(p, ctx.stream);
  table.synchronize(ctx.stream);
  prof.last_end = Clock::now();
  prof.has_last = true;
  OpTotal& t = prof.ops[op_key(name, p)];
  t.seconds += std::chrono::duration<double>(prof.last_end - t0).count();
  t.flops += op_flops(p);
  ++t.calls;
}
}  // namespace

bool op_profile_enabled() { return profile().enabled; }
void op_profile_reset() {
  Profile& p = profile();
  p.ops.clear();
  p.between = 0.0;
  p.has_last = false;
}
std::string op_profile_summary() {
  const Profile& p = profile();
  std::vector<std::pair<std::string, OpTotal>> rows(p.ops.begin(), p.ops.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  double total = p.between;
  for (const auto& r : rows) total += r.second.seconds;
  std::string out = fmt::format("{:<32} {:>10} {:>7} {:>9} {:>10}\n", "op", "seconds", "share", "calls", "TFLOP/s");
  for (const auto& [name, t] : rows)
    out += fmt::format("{:<32} {:>10.4f} {:>6.1f}% {:>9} {:>10}\n", name, t.seconds, 100.0 * t.seconds / total, t.calls,
                       t.flops > 0 ? fmt::format("{:.1f}", t.flops / t.seconds / 1e12) : std::string("-"));
  out += fmt::format("{:<32} {:>10.4f} {:>6.1f}%\n", "(between ops)", p.between, 100.0 * p.between / total);
  return out;
}

void linear(const Context& ctx, const LinearParams& p) {
  DSV_CHECK(p.x && p.y, "linear: null pointer (x={}, y={})", (void*)p.x, (void*)p.y);
  DSV_CHECK((p.w != nullptr) != (p.w_bf16 != nullptr), "linear: exactly one of w (fp32) and w_bf16 expected, found {}",
            p.w ? "both" : "neither");
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

void add_rmsnorm(const Context& ctx, const AddRmsNormParams& p) {
  DSV_CHECK(p.x && p.delta && p.weight && p.y, "add_rmsnorm: null pointer");
  DSV_CHECK(p.dim > 0 && p.rows >= 0, "add_rmsnorm: bad sizes rows={} dim={}", p.rows, p.dim);
  DSV_CHECK(p.y != p.x && p.delta != p.x, "add_rmsnorm: y and delta may not alias x (the updated residual)");
  run(ctx, p, cpu::add_rmsnorm, &BackendTable::add_rmsnorm, "add_rmsnorm");
}

void rope(const Context& ctx, const RopeParams& p) {
  DSV_CHECK(p.x && p.cos && p.sin, "rope: null pointer");
  DSV_CHECK(p.rope_dim > 0 && p.rope_dim % 2 == 0, "rope: rope_dim must be even and positive, found {}", p.rope_dim);
  DSV_CHECK(p.offset + p.rope_dim <= (p.heads > 1 ? p.head_stride : p.token_stride),
            "rope: rope span [{}, {}) exceeds the vector stride", p.offset, p.offset + p.rope_dim);
  DSV_CHECK(!p.y || p.y_offset + p.rope_dim <= (p.heads > 1 ? p.y_head_stride : p.y_token_stride),
            "rope: output span [{}, {}) exceeds the output vector stride", p.y_offset, p.y_offset + p.rope_dim);
  run(ctx, p, cpu::rope, &BackendTable::rope, "rope");
}

void rope_table(const Context& ctx, const RopeTableParams& p) {
  DSV_CHECK(p.T >= 0 && p.half >= 0 && p.first >= 0, "rope_table: bad sizes first={} T={} half={}", p.first, p.T,
            p.half);
  DSV_CHECK((p.inv_freq && p.cos && p.sin) || p.T * p.half == 0, "rope_table: null pointer");
  run(ctx, p, cpu::rope_table, &BackendTable::rope_table, "rope_table");
}

void attention(const Context& ctx, const AttentionParams& p) {
  DSV_CHECK(p.q && p.out, "attention: null pointer");
  DSV_CHECK((p.k && p.v && !p.k_bf16 && !p.v_bf16) || (p.k_bf16 && p.v_bf16 && !p.k && !p.v),
            "attention: k and v expected both fp32 or both bf16");
  DSV_CHECK(p.T <= p.S, "attention: {} queries but only {} keys (queries must be the last keys)", p.T, p.S);
  DSV_CHECK(p.H > 0 && p.Dqk > 0 && p.Dv > 0, "attention: bad sizes H={} Dqk={} Dv={}", p.H, p.Dqk, p.Dv);
  DSV_CHECK(p.Hkv == 0 || p.Hkv == 1 || p.Hkv == p.H, "attention: Hkv={} must be 1 or H={}", p.Hkv, p.H);
  DSV_CHECK(p.batch >= 1, "attention: batch must be >= 1, found {}", p.batch);
  DSV_CHECK(!p.lse || (p.k && !p.kv_lengths), "attention: lse output needs fp32 k / v and no kv_lengths");
  if (p.k_head_stride || p.v_head_stride || p.k_shared) {
    DSV_CHECK(p.k && p.v && p.batch == 1 && !p.kv_lengths && (p.Hkv == 0 || p.Hkv == p.H),
              "attention: head strides and a shared key tail need fp32 k / v, one problem and H key heads");
    DSV_CHECK(!p.k_shared || (p.k_shared_dims > 0 && p.k_shared_dims <= p.Dqk && p.k_shared_stride >= p.k_shared_dims),
              "attention: shared key tail of {} dims (row stride {}) for keys of {} dims", p.k_shared_dims,
              p.k_shared_stride, p.Dqk);
    const bool native = ctx.backend != Backend::Cpu && backend_available(ctx.backend) &&
                        backend_table(ctx.backend).attention_reads_layout &&
                        backend_table(ctx.backend).attention_reads_layout(p);
    if (!native) {  // dense copies k[S, H, Dqk], v[S, H, Dv], then the plain op
      const int64_t H = p.H, own = p.Dqk - (p.k_shared ? p.k_shared_dims : 0);
      const int64_t kh = p.k_head_stride ? p.k_head_stride : own, vh = p.v_head_stride ? p.v_head_stride : p.Dv;
      Buffer<float> k(ctx.backend, p.S * H * p.Dqk), v(ctx.backend, p.S * H * p.Dv);
      if (own > 0)
        copy2d(ctx, {.src = p.k, .dst = k.data(), .rows = p.S, .cols = own, .src_stride = p.k_stride ? p.k_stride : H * kh,
                     .dst_stride = H * p.Dqk, .batch = H, .src_batch_stride = kh, .dst_batch_stride = p.Dqk});
      if (p.k_shared)
        copy2d(ctx, {.src = p.k_shared, .dst = k.data() + own, .rows = p.S, .cols = p.k_shared_dims,
                     .src_stride = p.k_shared_stride, .dst_stride = H * p.Dqk, .batch = H, .src_batch_stride = 0,
                     .dst_batch_stride = p.Dqk});
      copy2d(ctx, {.src = p.v, .dst = v.data(), .rows = p.S, .cols = p.Dv, .src_stride = p.v_stride ? p.v_stride : H * vh,
                   .dst_stride = H * p.Dv, .batch = H, .src_batch_stride = vh, .dst_batch_stride = p.Dv});
      AttentionParams dense = p;
      dense.k = k.data();
      dense.v = v.data();
      dense.k_stride = dense.v_stride = dense.k_head_stride = dense.v_head_stride = 0;
      dense.k_shared = nullptr;
      dense.k_shared_stride = dense.k_shared_dims = 0;
      return run(ctx, dense, cpu::attention, &BackendTable::attention, "attention");
    }
  }
  run(ctx, p, cpu::attention, &BackendTable::attention, "attention");
}

void swiglu(const Context& ctx, const SwigluParams& p) {
  DSV_CHECK(p.gate && p.up && p.out, "swiglu: null pointer");
  run(ctx, p, cpu::swiglu, &BackendTable::swiglu, "swiglu");
}

void gated_linear(const Context& ctx, const GatedLinearParams& p) {
  DSV_CHECK(p.x && p.y, "gated_linear: null pointer (x={}, y={})", (void*)p.x, (void*)p.y);
  const bool fp32 = p.gate && p.up && !p.gate_bf16 && !p.up_bf16, bf16 = p.gate_bf16 && p.up_bf16 && !p.gate && !p.up;
  DSV_CHECK(fp32 || bf16, "gated_linear: gate and up weights both fp32 or both bf16 expected");
  DSV_CHECK(p.M >= 0 && p.N >= 0 && p.K >= 0, "gated_linear: negative size M={} N={} K={}", p.M, p.N, p.K);
  DSV_CHECK(p.y != p.x, "gated_linear: y may not alias x");
  run(ctx, p, cpu::gated_linear, &BackendTable::gated_linear, "gated_linear");
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
  DSV_CHECK(p.batch >= 1 && p.src_batch_stride >= 0 && p.dst_batch_stride >= 0, "copy2d: batch {} with strides ({}, {})",
            p.batch, p.src_batch_stride, p.dst_batch_stride);
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

void store_rows(const Context& ctx, const StoreRowsParams& p) {
  DSV_CHECK(p.rows && p.x && (p.y != nullptr) != (p.y_bf16 != nullptr),
            "store_rows: rows, x and exactly one of y (fp32) and y_bf16 expected");
  DSV_CHECK(p.n >= 0 && p.D >= 0 && (p.y_stride == 0 || p.y_stride >= p.D), "store_rows: bad sizes n={} D={} y_stride={}",
            p.n, p.D, p.y_stride);
  run(ctx, p, cpu::store_rows, &BackendTable::store_rows, "store_rows");
}

void store_latent_rows(const Context& ctx, const LatentRowsParams& p) {
  DSV_CHECK(p.x && p.weight && p.cos && p.sin && (p.y != nullptr) != (p.y_bf16 != nullptr),
            "store_latent_rows: x, weight, cos, sin and exactly one of y (fp32) and y_bf16 expected");
  DSV_CHECK(p.n >= 0 && p.C >= 1 && p.R >= 0 && p.R % 2 == 0 && p.x_stride >= p.C + p.R &&
                p.y_stride >= p.C + p.R && p.first >= 0 && p.C + p.R <= INT32_MAX,
            "store_latent_rows: bad sizes n={} C={} R={} x_stride={} y_stride={} first={}", p.n, p.C, p.R,
            p.x_stride, p.y_stride, p.first);
  run(ctx, p, cpu::store_latent_rows, &BackendTable::store_latent_rows, "store_latent_rows");
}

void argmax_rows(const Context& ctx, const ArgmaxParams& p) {
  DSV_CHECK(p.x && p.out, "argmax_rows: null pointer");
  DSV_CHECK(p.rows >= 0 && p.n >= 1 && p.n <= INT32_MAX, "argmax_rows: bad sizes rows={} n={}", p.rows, p.n);
  run(ctx, p, cpu::argmax_rows, &BackendTable::argmax_rows, "argmax_rows");
}

void decode_feed(const Context& ctx, const DecodeFeedParams& p) {
  DSV_CHECK(p.chosen && p.ids && p.write_rows && p.kv_lengths && p.cos && p.sin && p.cos_table && p.sin_table,
            "decode_feed: null pointer");
  DSV_CHECK(p.rows >= 0 && p.capacity >= 1 && p.half >= 0 && p.rows * p.capacity <= INT32_MAX,
            "decode_feed: bad sizes rows={} capacity={} half={}", p.rows, p.capacity, p.half);
  run(ctx, p, cpu::decode_feed, &BackendTable::decode_feed, "decode_feed");
}

void moe_experts(const Context& ctx, const MoeExpertsParams& p) {
  const bool f32 = p.gate && p.up && p.down, bf16 = p.gate_bf16 && p.up_bf16 && p.down_bf16;
  DSV_CHECK(p.x && p.indices && p.weights && p.out, "moe_experts: null pointer");
  DSV_CHECK(p.scratch || ctx.backend != Backend::Cpu, "moe_experts: the CPU op needs scratch (T*K*(F+D) floats)");
  DSV_CHECK(f32 != bf16, "moe_experts: one complete set of weight tables expected (fp32 or bf16), found {}",
            f32 ? "both" : "neither");
  DSV_CHECK(p.T > 0 && p.K > 0 && p.D > 0 && p.F > 0, "moe_experts: bad sizes T={} K={} D={} F={}", p.T, p.K, p.D,
            p.F);
  run(ctx, p, cpu::moe_experts, &BackendTable::moe_experts, "moe_experts");
}

void cast(const Context& ctx, const CastParams& p) {
  DSV_CHECK((p.x && p.y) || p.n == 0, "cast: null pointer");
  DSV_CHECK(p.n >= 0, "cast: negative size {}", p.n);
  run(ctx, p, cpu::cast, &BackendTable::cast, "cast");
}

void fill_random(const Context& ctx, const FillRandomParams& p) {
  DSV_CHECK(p.x || p.n == 0, "fill_random: null pointer");
  run(ctx, p, cpu::fill_random, &BackendTable::fill_random, "fill_random");
}

// ---- Training ops ----

void linear_weight_grad(const Context& ctx, const LinearWeightGradParams& p) {
  DSV_CHECK(p.dy && p.x && p.dw, "linear_weight_grad: null pointer (dy={}, x={}, dw={})", (void*)p.dy, (void*)p.x,
            (void*)p.dw);
  DSV_CHECK(p.M >= 0 && p.N >= 0 && p.K >= 0, "linear_weight_grad: negative size M={} N={} K={}", p.M, p.N, p.K);
  DSV_CHECK(p.dy_stride == 0 || p.dy_stride >= p.N, "linear_weight_grad: dy_stride {} < N {}", p.dy_stride, p.N);
  DSV_CHECK(p.x_stride == 0 || p.x_stride >= p.K, "linear_weight_grad: x_stride {} < K {}", p.x_stride, p.K);
  DSV_CHECK(std::max({p.M, p.N, p.K, p.dy_stride, p.x_stride}) <= std::numeric_limits<int>::max(),
            "linear_weight_grad: sizes M={} N={} K={} (strides {}, {}) exceed the BLAS int range", p.M, p.N, p.K,
            p.dy_stride, p.x_stride);
  run(ctx, p, cpu::linear_weight_grad, &BackendTable::linear_weight_grad, "linear_weight_grad");
}

void linear_backward(const Context& ctx, const LinearBackwardParams& p) {
  DSV_CHECK(p.x && p.w && p.dw, "linear_backward: null pointer (x={}, w={}, dw={})", (void*)p.x, (void*)p.w,
            (void*)p.dw);
  DSV_CHECK(!p.dy != !p.dy_bf16, "linear_backward: expected exactly one of dy and dy_bf16 (dy={}, dy_bf16={})",
            (const void*)p.dy, (const void*)p.dy_bf16);
  DSV_CHECK(p.M >= 0 && p.N >= 0 && p.K >= 0, "linear_backward: negative size M={} N={} K={}", p.M, p.N, p.K);
  DSV_CHECK(p.dy_stride == 0 || p.dy_stride >= p.N, "linear_backward: dy_stride {} < N {}", p.dy_stride, p.N);
  DSV_CHECK(p.x_stride == 0 || p.x_stride >= p.K, "linear_backward: x_stride {} < K {}", p.x_stride, p.K);
  DSV_CHECK(p.dx_stride == 0 || p.dx_stride >= p.K, "linear_backward: dx_stride {} < K {}", p.dx_stride, p.K);
  DSV_CHECK(std::max({p.M, p.N, p.K, p.dy_stride, p.x_stride, p.dx_stride}) <= std::numeric_limits<int>::max(),
            "linear_backward: sizes M={} N={} K={} (strides {}, {}, {}) exceed the BLAS int range", p.M, p.N, p.K,
            p.dy_stride, p.x_stride, p.dx_stride);
  DSV_CHECK(!p.dx || (p.dx != p.dy && static_cast<const void*>(p.dx) != p.dy_bf16),
            "linear_backward: dx may not alias dy");
  run(ctx, p, cpu::linear_backward, &BackendTable::linear_backward, "linear_backward");
}

void rmsnorm_backward(const Context& ctx, const RmsNormBackwardParams& p) {
  DSV_CHECK(p.x && p.weight && p.dy && p.dx, "rmsnorm_backward: null pointer (x={}, weight={}, dy={}, dx={})",
            (void*)p.x, (void*)p.weight, (void*)p.dy, (void*)p.dx);
  DSV_CHECK(p.dim > 0 && p.rows >= 0, "rmsnorm_backward: bad sizes rows={} dim={}", p.rows, p.dim);
  DSV_CHECK(p.x_stride == 0 || p.x_stride >= p.dim, "rmsnorm_backward: x_stride {} < dim {}", p.x_stride, p.dim);
  DSV_CHECK(p.dy_stride == 0 || p.dy_stride >= p.dim, "rmsnorm_backward: dy_stride {} < dim {}", p.dy_stride, p.dim);
  DSV_CHECK(p.dx_stride == 0 || p.dx_stride >= p.dim, "rmsnorm_backward: dx_stride {} < dim {}", p.dx_stride, p.dim);
  DSV_CHECK(p.dx != p.x, "rmsnorm_backward: dx may not alias x (r is recomputed from x)");
  DSV_CHECK(p.dx != p.dy || (p.dx_stride ? p.dx_stride : p.dim) == (p.dy_stride ? p.dy_stride : p.dim),
            "rmsnorm_backward: dx aliases dy with a different row stride ({} vs {})", p.dx_stride, p.dy_stride);
  run(ctx, p, cpu::rmsnorm_backward, &BackendTable::rmsnorm_backward, "rmsnorm_backward");
}

void attention_backward(const Context& ctx, const AttentionBackwardParams& p) {
  DSV_CHECK(p.q && p.k && p.v && p.dout && p.dq && p.dk && p.dv,
            "attention_backward: null pointer (q={}, k={}, v={}, dout={}, dq={}, dk={}, dv={})", (void*)p.q,
            (void*)p.k, (void*)p.v, (void*)p.dout, (void*)p.dq, (void*)p.dk, (void*)p.dv);
  DSV_CHECK(p.T >= 0 && p.T <= p.S, "attention_backward: {} queries over {} keys (queries must be the last keys)",
            p.T, p.S);
  DSV_CHECK(p.H > 0 && p.Dqk > 0 && p.Dv > 0, "attention_backward: bad sizes H={} Dqk={} Dv={}", p.H, p.Dqk, p.Dv);
  DSV_CHECK(!p.out == !p.lse, "attention_backward: the forward's out and lse go together (out={}, lse={})",
            (const void*)p.out, (const void*)p.lse);
  run(ctx, p, cpu::attention_backward, &BackendTable::attention_backward, "attention_backward");
}

void swiglu_backward(const Context& ctx, const SwigluBackwardParams& p) {
  DSV_CHECK(p.gate && p.up && p.dout && p.dgate && p.dup,
            "swiglu_backward: null pointer (gate={}, up={}, dout={}, dgate={}, dup={})", (void*)p.gate, (void*)p.up,
            (void*)p.dout, (void*)p.dgate, (void*)p.dup);
  DSV_CHECK(p.n >= 0, "swiglu_backward: negative size n={}", p.n);
  DSV_CHECK(p.dgate != p.dup, "swiglu_backward: dgate and dup are the same buffer");
  run(ctx, p, cpu::swiglu_backward, &BackendTable::swiglu_backward, "swiglu_backward");
}

void embed_backward(const Context& ctx, const EmbedBackwardParams& p) {
  DSV_CHECK(p.ids && p.dout && p.dtable, "embed_backward: null pointer (ids={}, dout={}, dtable={})", (void*)p.ids,
            (void*)p.dout, (void*)p.dtable);
  DSV_CHECK(p.T >= 0 && p.D > 0, "embed_backward: bad sizes T={} D={}", p.T, p.D);
  DSV_CHECK(!p.grouped_tokens == !p.group_start && (p.grouped_tokens || p.groups == 0) && p.groups <= p.T,
            "embed_backward: grouped_tokens and group_start go together (groups={}, T={})", p.groups, p.T);
  run(ctx, p, cpu::embed_backward, &BackendTable::embed_backward, "embed_backward");
}

void route_backward(const Context& ctx, const RouteBackwardParams& p) {
  DSV_CHECK(p.logits && p.indices && p.dweights && p.dlogits,
            "route_backward: null pointer (logits={}, indices={}, dweights={}, dlogits={})", (void*)p.logits,
            (void*)p.indices, (void*)p.dweights, (void*)p.dlogits);
  DSV_CHECK(p.T >= 0, "route_backward: negative T={}", p.T);
  DSV_CHECK(p.K > 0 && p.K <= p.E, "route_backward: K={} must be in 1..E={}", p.K, p.E);
  run(ctx, p, cpu::route_backward, &BackendTable::route_backward, "route_backward");
}

void row_dots(const Context& ctx, const RowDotsParams& p) {
  DSV_CHECK(p.rows && p.a && p.b && p.out, "row_dots: null pointer (rows={}, a={}, b={}, out={})", (void*)p.rows,
            (void*)p.a, (void*)p.b, (void*)p.out);
  DSV_CHECK(p.n >= 0 && p.D >= 0, "row_dots: negative size n={} D={}", p.n, p.D);
  run(ctx, p, cpu::row_dots, &BackendTable::row_dots, "row_dots");
}

namespace {
void check_moe_train(const MoeTrainParams& p, const char* op) {
  DSV_CHECK(p.x && p.weights && p.offsets && p.row_pair && p.slot_of_pair, "{}: null input pointer", op);
  DSV_CHECK(p.gate && p.up && p.down, "{}: the bf16 weight tables gate, up and down are required", op);
  DSV_CHECK(p.xs && p.gu && p.h && p.y, "{}: the saved buffers xs, gu, h and y are required", op);
  DSV_CHECK(p.T > 0 && p.K > 0 && p.D > 0 && p.F > 0 && p.E > 0 && p.K <= p.E,
            "{}: bad sizes T={} K={} D={} F={} E={}", op, p.T, p.K, p.D, p.F, p.E);
  DSV_CHECK(p.rows >= p.T * p.K && p.rows % 8 == 0,
            "{}: rows={} must cover the T*K={} pairs and be a multiple of 8 (plan_moe_train_rows)", op, p.rows,
            p.T * p.K);
}
}  // namespace

void moe_train_forward(const Context& ctx, const MoeTrainParams& p) {
  check_moe_train(p, "moe_train_forward");
  DSV_CHECK(p.out, "moe_train_forward: null out");
  run(ctx, p, cpu::moe_train_forward, &BackendTable::moe_train_forward, "moe_train_forward");
}

void moe_train_backward(const Context& ctx, const MoeTrainBackwardParams& p) {
  check_moe_train(p.fwd, "moe_train_backward");
  DSV_CHECK(p.dout && p.dx && p.dweights && p.dgate && p.dup && p.ddown,
            "moe_train_backward: null pointer (dout, dx, dweights and the gradient tables are required)");
  run(ctx, p, cpu::moe_train_backward, &BackendTable::moe_train_backward, "moe_train_backward");
}

EmbedGroups embed_backward_groups(const int32_t* ids, int64_t T) {
  EmbedGroups g;
  if (T == 0) return g;
  // One sort of (id, position) keys: by id, then position.
  std::vector<uint64_t> keys(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t)
    keys[t] = static_cast<uint64_t>(static_cast<uint32_t>(ids[t])) << 32 | static_cast<uint64_t>(t);
  std::sort(keys.begin(), keys.end());
  g.tokens.resize(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) {
    g.tokens[i] = static_cast<int32_t>(keys[i] & 0xffffffffu);
    if (i == 0 || keys[i] >> 32 != keys[i - 1] >> 32) g.start.push_back(static_cast<int32_t>(i));
  }
  g.start.push_back(static_cast<int32_t>(T));
  return g;
}

MoeTrainRows plan_moe_train_rows(const std::vector<int32_t>& indices, int64_t E) {
  DSV_CHECK(E > 0, "plan_moe_train_rows: E={} must be positive", E);
  std::vector<int64_t> count(static_cast<size_t>(E), 0);
  for (const int32_t e : indices) {
    DSV_CHECK(e >= 0 && e < E, "plan_moe_train_rows: expert index {} outside 0..{}", e, E - 1);
    ++count[static_cast<size_t>(e)];
  }
  MoeTrainRows plan;
  plan.offsets.resize(static_cast<size_t>(E + 1));
  int64_t rows = 0;
  for (int64_t e = 0; e < E; ++e) {
    plan.offsets[static_cast<size_t>(e)] = static_cast<int32_t>(rows);
    rows += (count[static_cast<size_t>(e)] + 7) / 8 * 8;
  }
  DSV_CHECK(rows < (int64_t{1} << 31), "plan_moe_train_rows: {} rows do not fit int32 indices", rows);
  plan.offsets[static_cast<size_t>(E)] = static_cast<int32_t>(rows);
  plan.row_pair.assign(static_cast<size_t>(rows), -1);
  plan.slot_of_pair.resize(indices.size());
  std::vector<int32_t> cursor(plan.offsets.begin(), plan.offsets.end() - 1);
  for (size_t q = 0; q < indices.size(); ++q) {
    const int32_t row = cursor[static_cast<size_t>(indices[q])]++;
    plan.row_pair[static_cast<size_t>(row)] = static_cast<int32_t>(q);
    plan.slot_of_pair[q] = row;
  }
  return plan;
}

void cross_entropy(const Context& ctx, const CrossEntropyParams& p) {
  DSV_CHECK(p.logits && p.targets && p.loss, "cross_entropy: null pointer (logits={}, targets={}, loss={})",
            (void*)p.logits, (void*)p.targets, (void*)p.loss);
  DSV_CHECK(p.T >= 0 && p.V > 0, "cross_entropy: bad sizes T={} V={}", p.T, p.V);
  run(ctx, p, cpu::cross_entropy, &BackendTable::cross_entropy, "cross_entropy");
}

void axpby(const Context& ctx, const AxpbyParams& p) {
  DSV_CHECK(p.x && p.y, "axpby: null pointer (x={}, y={})", (void*)p.x, (void*)p.y);
  DSV_CHECK(p.n >= 0, "axpby: negative size n={}", p.n);
  run(ctx, p, cpu::axpby, &BackendTable::axpby, "axpby");
}

void sum_squares(const Context& ctx, const SumSquaresParams& p) {
  DSV_CHECK(p.x && p.out, "sum_squares: null pointer (x={}, out={})", (void*)p.x, (void*)p.out);
  DSV_CHECK(p.n >= 0, "sum_squares: negative size n={}", p.n);
  run(ctx, p, cpu::sum_squares, &BackendTable::sum_squares, "sum_squares");
}

void adamw(const Context& ctx, const AdamWParams& p) {
  DSV_CHECK(p.param && p.grad, "adamw: null pointer (param={}, grad={})", (void*)p.param, (void*)p.grad);
  DSV_CHECK((p.m && p.v && !p.m_bf16 && !p.v_bf16) || (!p.m && !p.v && p.m_bf16 && p.v_bf16),
            "adamw: expected fp32 moments (m, v) or bf16 moments (m_bf16, v_bf16), found m={} v={} m_bf16={} "
            "v_bf16={}",
            (void*)p.m, (void*)p.v, (void*)p.m_bf16, (void*)p.v_bf16);
  DSV_CHECK(p.offset >= 0, "adamw: negative offset {}", p.offset);
  DSV_CHECK(p.n >= 0, "adamw: negative size n={}", p.n);
  DSV_CHECK(p.step >= 1, "adamw: step is 1-based, found {}", p.step);
  DSV_CHECK(p.beta1 >= 0.0f && p.beta1 < 1.0f && p.beta2 >= 0.0f && p.beta2 < 1.0f,
            "adamw: betas must be in [0, 1), found beta1={} beta2={}", p.beta1, p.beta2);
  DSV_CHECK(p.lr >= 0.0f && p.eps >= 0.0f && p.weight_decay >= 0.0f,
            "adamw: lr={} eps={} weight_decay={} must be non-negative", p.lr, p.eps, p.weight_decay);
  run(ctx, p, cpu::adamw, &BackendTable::adamw, "adamw");
}

}  // namespace dsv::ops
