// Ops: one Params struct per op, passed with designated initializers. Pointers are fp32 on the CPU
// backend; strides are in elements. Each op validates its Params before dispatching to a backend.
// Accumulate contract (see docs/ARCHITECTURE.md): outputs are overwritten unless `accumulate` says +=.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace dsv::ops {

enum class Backend { Cpu, Cuda };

struct Context {
  Backend backend = Backend::Cpu;
  void* stream = nullptr;  // cudaStream_t on the CUDA backend
};

// y[M, N] (+)= x[M, K] . w[N, K]^T + bias[N]        (torch.nn.functional.linear)
// With w_transposed, w is [K, N] and y = x . w (used to fold W_UK into queries for absorbed MLA).
// Weights are fp32 (w) or bf16 (w_bf16, bit patterns; exactly one of the two is set). With bf16
// weights every backend computes y = bf16(x) . w^T: x rounded to bf16 (nearest even), products and
// sums in fp32, so the CPU op stays the exact spec of the tensor-core path.
struct LinearParams {
  const float* x = nullptr;
  const float* w = nullptr;
  const uint16_t* w_bf16 = nullptr;
  const float* bias = nullptr;  // optional
  float* y = nullptr;
  int64_t M = 0, N = 0, K = 0;
  int64_t x_stride = 0;  // row stride of x; 0 means K
  int64_t y_stride = 0;  // row stride of y; 0 means N
  bool accumulate = false;
  bool w_transposed = false;
  // `batch` independent products (one per head, say), the i-th at x + i*x_batch_stride,
  // w + i*w_batch_stride, y + i*y_batch_stride (one strided-batched GEMM on the GPU).
  int64_t batch = 1;
  int64_t x_batch_stride = 0, w_batch_stride = 0, y_batch_stride = 0, bias_batch_stride = 0;
};
void linear(const Context& ctx, const LinearParams& p);

// y[r, :] = weight * x[r, :] / sqrt(mean(x[r, :]^2) + eps)   (T5/DeepSeek RMSNorm, fp32)
struct RmsNormParams {
  const float* x = nullptr;
  const float* weight = nullptr;
  float* y = nullptr;  // may alias x
  int64_t rows = 0, dim = 0;
  int64_t x_stride = 0, y_stride = 0;  // 0 means dim
  float eps = 1e-6f;
};
void rmsnorm(const Context& ctx, const RmsNormParams& p);

// x[r, :] += delta[r, :], then y[r, :] = rmsnorm(x[r, :]) as above: a residual add and the pre-norm
// that follows it in one pass (one kernel instead of two in a decode step). Contiguous rows; y may
// alias delta but not x.
struct AddRmsNormParams {
  float* x = nullptr;  // the residual stream, updated
  const float* delta = nullptr;
  const float* weight = nullptr;
  float* y = nullptr;
  int64_t rows = 0, dim = 0;
  float eps = 1e-6f;
};
void add_rmsnorm(const Context& ctx, const AddRmsNormParams& p);

// Rotates the R rope dims of `heads` vectors per token, in place.
// x[t, h, offset : offset + R] with token stride `token_stride` and head stride `head_stride`;
// cos/sin: [T, R/2] (already multiplied by the YaRN attention factor).
// With y: out of place instead, x left as is and the rotated dims written to
// y[t, h, y_offset : y_offset + R] (strides y_token_stride, y_head_stride); y's spans must not
// overlap x's (absorbed MLA ropes q's rope dims straight into the latent query this way).
struct RopeParams {
  float* x = nullptr;
  const float* cos = nullptr;
  const float* sin = nullptr;
  int64_t tokens = 0, heads = 0, rope_dim = 0;
  int64_t token_stride = 0, head_stride = 0, offset = 0;
  RopeLayout layout = RopeLayout::Interleaved;
  float* y = nullptr;
  int64_t y_token_stride = 0, y_head_stride = 0, y_offset = 0;
};
void rope(const Context& ctx, const RopeParams& p);

// The rope tables of T consecutive positions first .. first + T - 1: for i < half,
//   cos[t, i] = cos(inv_freq[i] * (first + t)) * factor,  sin[t, i] = sin(...) * factor (negated when
// negate_sin), the angle a float product as transformers forms inv_freq @ positions in float32.
// inv_freq [half], cos and sin [T, half] on the backend. A device may differ from the CPU in the last
// bit or two of cos and sin (its own libm); built there, a long prompt's tables do not wait on the host.
struct RopeTableParams {
  const float* inv_freq = nullptr;
  float* cos = nullptr;
  float* sin = nullptr;
  int64_t first = 0, T = 0, half = 0;
  float factor = 1.0f;
  bool negate_sin = false;
};
void rope_table(const Context& ctx, const RopeTableParams& p);

// Causal attention for T queries over S keys (the last T keys are the queries' own positions).
// q[T, H, Dqk], k[S, Hkv, Dqk], v[S, Hkv, Dv] -> out[T, H, Dv]; query t sees keys 0 .. S - T + t.
// Hkv = H (one K/V per head, expanded MLA) or 1 (all heads share one K/V: absorbed MLA, where k is
// the latent cache row [C + R] and v its first C values). Token strides of k and v default to
// Hkv * Dqk and Hkv * Dv. k and v are fp32, or bf16 (k_bf16 and v_bf16 instead: a bf16 latent cache);
// scores and sums are fp32 either way.
// Batched (batched decode, sequences of different lengths): `batch` independent problems, problem b
// with queries q + b*T*H*Dqk, out + b*T*H*Dv and keys/values k + b*k_batch_stride, v + b*v_batch_stride;
// with kv_lengths (int32 [batch], on the backend) problem b has kv_lengths[b] keys (1 .. S, where S is
// then only the bound that sizes the work), so query t sees keys 0 .. kv_lengths[b] - T + t.
struct AttentionParams {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  const uint16_t* k_bf16 = nullptr;
  const uint16_t* v_bf16 = nullptr;
  float* out = nullptr;
  int64_t T = 0, S = 0, H = 0, Dqk = 0, Dv = 0;
  int64_t Hkv = 0;                     // 0 means H
  int64_t k_stride = 0, v_stride = 0;  // 0 means dense
  float scale = 1.0f;
  int64_t batch = 1;
  int64_t k_batch_stride = 0, v_batch_stride = 0;  // elements between problems' keys / values
  const int32_t* kv_lengths = nullptr;             // [batch], or null: every problem has S keys
  // Optional output [batch, T, H]: each row's logsumexp over its visible keys of scale * q.k (natural
  // log), for attention_backward (training); fp32 k / v and no kv_lengths.
  float* lse = nullptr;
  // The caller's promise that no op still in flight writes k, v or kv_lengths (they were written
  // before a branch join that precedes this op, and the ops between do not touch them): a device may
  // then start loading keys before the ops just before it finish (launch.cuh). A hint; same result.
  bool keys_settled = false;
  // The caller's keys and values come out of bf16 weights (a bf16 model, whose products already round
  // their inputs to bf16): a device may then round q, k, v and the softmax probabilities to bf16 for
  // its tensor cores (fp32 softmax and accumulation) whatever matmul_precision() says, as a bf16
  // FlashAttention does. The CPU computes in fp32 regardless.
  bool bf16_operands = false;
  // Where each head sits in a row of k / v (fp32 k and v, one problem, Hkv = H): head h starts
  // h * k_head_stride / h * v_head_stride values into its row (0: Dqk / Dv apart, heads packed). With
  // k_shared, the last k_shared_dims dims of every head's key are one vector per key row, shared by all
  // heads (MLA's roped key): key s of head h is
  //   [k[s * k_stride + h * k_head_stride + (0 .. Dqk - k_shared_dims)] ; k_shared[s * k_shared_stride + (0 .. k_shared_dims)]]
  // (k_head_stride 0 then means Dqk - k_shared_dims; k_stride / v_stride 0: H head strides). Backends
  // that do not read this layout get dense copies of k and v made first (ops::attention), so that
  // prefill through MLA need not assemble per-head keys where a device packs its own copies anyway.
  int64_t k_head_stride = 0, v_head_stride = 0;
  const float* k_shared = nullptr;
  int64_t k_shared_stride = 0, k_shared_dims = 0;
};
void attention(const Context& ctx, const AttentionParams& p);

// out[n] = silu(gate[n]) * up[n]
struct SwigluParams {
  const float* gate = nullptr;
  const float* up = nullptr;
  float* out = nullptr;
  int64_t n = 0;
};
void swiglu(const Context& ctx, const SwigluParams& p);

// y[m, n] = silu(x[m] . gate[n] + gate_bias[n]) * (x[m] . up[n] + up_bias[n]): the two input products
// of a SwiGLU MLP and the SwiGLU itself, each product exactly as `linear` computes it (so in bf16 mode
// operands are rounded to bf16). On CUDA, decode-sized M with bf16 weights runs as one GEMV kernel.
// Both weights [N, K] row-major and of one kind (fp32 or bf16); biases optional; x [M, K] and
// y [M, N] contiguous, y not aliasing x.
struct GatedLinearParams {
  const float* x = nullptr;
  const float* gate = nullptr;
  const float* up = nullptr;
  const uint16_t* gate_bf16 = nullptr;
  const uint16_t* up_bf16 = nullptr;
  const float* gate_bias = nullptr;
  const float* up_bias = nullptr;
  float* y = nullptr;
  int64_t M = 0, N = 0, K = 0;
};
void gated_linear(const Context& ctx, const GatedLinearParams& p);

// MoE routing: logits[T, E] (fp32) -> top-K expert indices and combine weights per token.
struct RouterParams {
  const float* logits = nullptr;
  const float* correction_bias = nullptr;  // [E], SigmoidNoauxGroups only
  int32_t* indices = nullptr;              // [T, K]
  float* weights = nullptr;                // [T, K]
  int64_t T = 0, E = 0, K = 0, n_group = 1, topk_group = 1;
  RouterKind kind = RouterKind::SigmoidNoauxGroups;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
};
void route(const Context& ctx, const RouterParams& p);

// Data movement (device-resident on the CUDA backend, so the model code has no host loops):
// out[t, :] = table[ids[t], :]                      ids int32, table [V, D]
struct EmbedParams {
  const int32_t* ids = nullptr;
  const float* table = nullptr;
  float* out = nullptr;
  int64_t T = 0, D = 0;
};
void embed(const Context& ctx, const EmbedParams& p);

// y[i] += x[i]
struct AddParams {
  const float* x = nullptr;
  float* y = nullptr;
  int64_t n = 0;
};
void add(const Context& ctx, const AddParams& p);

// dst[b][r, c] = src[b][r, c] for b < batch, r < rows, c < cols (strides in elements; copy b starts
// b * src_batch_stride / b * dst_batch_stride further on; a source batch stride of 0 copies the same
// rows into every destination); zeros fill dst when src is null.
struct Copy2dParams {
  const float* src = nullptr;
  float* dst = nullptr;
  int64_t rows = 0, cols = 0, src_stride = 0, dst_stride = 0;
  int64_t batch = 1, src_batch_stride = 0, dst_batch_stride = 0;
};
void copy2d(const Context& ctx, const Copy2dParams& p);

// y[r, :] = scale[r] * x[rows[r], :]    (gather the tokens routed to one expert)
// y[rows[r], :] += scale[r] * x[r, :]   (scatter_add; rows unique within one call)
// A null scale means 1.
struct RowsParams {
  const int32_t* rows = nullptr;
  const float* scale = nullptr;  // optional
  const float* x = nullptr;
  float* y = nullptr;
  int64_t n = 0, D = 0;
};
void gather_rows(const Context& ctx, const RowsParams& p);
void scatter_add_rows(const Context& ctx, const RowsParams& p);

// y[rows[r], :] = x[r, :] for r < n, into fp32 rows (y) or bf16 rows (y_bf16: rounded to nearest even);
// row stride of y is y_stride (0: D). rows is int32 on the backend (rows unique). Writes the new
// latent rows of a batched decode step into each sequence's region of the cache.
struct StoreRowsParams {
  const int32_t* rows = nullptr;
  const float* x = nullptr;
  float* y = nullptr;
  uint16_t* y_bf16 = nullptr;
  int64_t n = 0, D = 0, y_stride = 0;
};
void store_rows(const Context& ctx, const StoreRowsParams& p);

// MLA's new latent cache rows finished and stored in one op (a decode step's kv chain): for r < n,
// with row = x[r] ([C + R] fp32 from kv_a_proj, row stride x_stride),
//   y[dest(r), :C] = rmsnorm(row[:C]) * weight   (ops::rmsnorm, eps)
//   y[dest(r), C:] = rope(row[C:], cos[r], sin[r])  (ops::rope of one head, `layout`)
// where dest(r) = rows[r] (int32 on the backend, unique) or, with rows null, first + r; into fp32
// rows (y) or bf16 rows (y_bf16, rounded to nearest even), row stride y_stride. x is left as is,
// unless the destination rows are x's own (in place: an fp32 single-sequence cache). The same bits as
// rmsnorm, rope and store_rows (or a cast) in turn on the same backend.
struct LatentRowsParams {
  const float* x = nullptr;
  const float* weight = nullptr;
  const float* cos = nullptr;
  const float* sin = nullptr;
  const int32_t* rows = nullptr;
  float* y = nullptr;
  uint16_t* y_bf16 = nullptr;
  int64_t n = 0, C = 0, R = 0, x_stride = 0, y_stride = 0, first = 0;
  float eps = 1e-6f;
  RopeLayout layout = RopeLayout::Interleaved;
};
void store_latent_rows(const Context& ctx, const LatentRowsParams& p);

// out[r] = index of the largest x[r, i] (i < n), the lowest index on ties; NaNs never win (a row of
// NaNs gives 0). Greedy choices of batched decode without copying [rows, V] logits to the host.
struct ArgmaxParams {
  const float* x = nullptr;
  int32_t* out = nullptr;
  int64_t rows = 0, n = 0;
};
void argmax_rows(const Context& ctx, const ArgmaxParams& p);

// Feeds the next batched decode step from this one, on the device (no host turn between steps). For
// each sequence b, with p = kv_lengths[b] (this step wrote cache row p - 1; the next token goes to p):
//   ids[b] = chosen[b];  history[b * capacity + p - 1] = chosen[b]  (the choice made at row p - 1)
// and, where p < capacity (a full sequence keeps its slots: the host refuses its next step),
//   write_rows[b] = b * capacity + p;  kv_lengths[b] = p + 1;
//   cos[b, :] = cos_table[p, :];  sin[b, :] = sin_table[p, :].
// Tables [capacity, half] hold the rope angles of every position (layers::rope_angles), so the fed
// angles are the host's bits. history (optional, [rows, capacity]) may be host-mapped memory: the
// chosen tokens reach the host without a copy.
struct DecodeFeedParams {
  const int32_t* chosen = nullptr;
  int32_t* ids = nullptr;
  int32_t* write_rows = nullptr;
  int32_t* kv_lengths = nullptr;
  float* cos = nullptr;
  float* sin = nullptr;
  const float* cos_table = nullptr;
  const float* sin_table = nullptr;
  int32_t* history = nullptr;
  int64_t rows = 0, capacity = 0, half = 0;
};
void decode_feed(const Context& ctx, const DecodeFeedParams& p);

// Routed experts for few tokens (decode), with the routing kept on the device: for each of the
// T*K (token, slot) pairs p, e = indices[p], t = p / K:
//   h[p]   = silu(x[t] . gate[e]^T) * (x[t] . up[e]^T)                       [F]
//   out[t] = sum_k weights[t*K + k] * (h[t*K + k] . down[e]^T)   (k ascending) [D]
// gate/up/down are tables of E pointers (on the backend) to [F, D], [F, D], [D, F] weights, fp32 or
// bf16 (the *_bf16 tables; then x and h are rounded to bf16 before their products, as linear does).
// `scratch` holds T*K*(F + D) floats; on CUDA it may be null (the backend then allocates what its
// path needs: nothing for the grouped tensor-core GEMMs of prefill sizes). out is overwritten.
struct MoeExpertsParams {
  const float* x = nullptr;
  const int32_t* indices = nullptr;
  const float* weights = nullptr;
  const float* const* gate = nullptr;
  const float* const* up = nullptr;
  const float* const* down = nullptr;
  const uint16_t* const* gate_bf16 = nullptr;
  const uint16_t* const* up_bf16 = nullptr;
  const uint16_t* const* down_bf16 = nullptr;
  float* scratch = nullptr;
  float* out = nullptr;
  int64_t T = 0, K = 0, D = 0, F = 0;
  int64_t E = 0;  // experts in the tables (indices < E); 0: unknown (backends then go pair by pair)
};
void moe_experts(const Context& ctx, const MoeExpertsParams& p);

// Conversions between fp32 and bf16 (bit patterns): y[i] = bf16(x[i]) rounded to nearest even (NaN
// stays NaN), or y[i] = fp32(x[i]) exactly. bf16 weight storage and the bf16 latent cache use them.
struct CastParams {
  const void* x = nullptr;
  void* y = nullptr;
  int64_t n = 0;
  bool to_bf16 = true;  // false: bf16 -> fp32
};
void cast(const Context& ctx, const CastParams& p);

// x[i] = mean + std * N(0, 1), from a counter-based generator keyed by (seed, i): the same values on
// every backend and thread count (random weights for benchmarks and tests).
struct FillRandomParams {
  float* x = nullptr;
  int64_t n = 0;
  uint64_t seed = 0;
  float mean = 0.0f, std = 1.0f;
};
void fill_random(const Context& ctx, const FillRandomParams& p);

// ---- Training ops: backward passes, loss, optimizer (issue 5). Same conventions as above. ----

// Weight (and bias) gradient of linear: dw[N, K] (+)= dy[M, N]^T . x[M, K]; dbias[N] (+)= sum_m dy[m, :].
// (The input gradient is linear() with w_transposed: dx[M, K] = dy[M, N] . w[N, K].)
struct LinearWeightGradParams {
  const float* dy = nullptr;
  const float* x = nullptr;
  float* dw = nullptr;
  float* dbias = nullptr;  // optional
  int64_t M = 0, N = 0, K = 0;
  int64_t dy_stride = 0;  // row stride of dy; 0 means N
  int64_t x_stride = 0;   // row stride of x; 0 means K
  bool accumulate = false;  // applies to dw and dbias alike
};
void linear_weight_grad(const Context& ctx, const LinearWeightGradParams& p);

// Both gradients of y = x . w^T (+ bias), w [N, K] row-major as in ops::linear:
//   dw (+)= dy^T . x, dbias (+)= column sums of dy     (linear_weight_grad; accumulate_dw)
//   dx (+)= dy . w                                      (linear with w_transposed; accumulate_dx)
// One op so that a device computing in bf16 rounds dy once for both products (bit-identical to the
// two calls).
struct LinearBackwardParams {
  const float* dy = nullptr;  // [M, N]; or dy_bf16 instead (exactly one of the two)
  const float* x = nullptr;   // [M, K]
  const float* w = nullptr;   // [N, K]
  float* dx = nullptr;        // [M, K]; null: no input gradient wanted. May alias x (dw comes first), not dy
  float* dw = nullptr;        // [N, K]
  float* dbias = nullptr;     // [N], optional
  int64_t M = 0, N = 0, K = 0;
  int64_t dy_stride = 0, x_stride = 0, dx_stride = 0;  // row strides; 0 means dense
  bool accumulate_dx = false, accumulate_dw = false;
  const uint16_t* dy_bf16 = nullptr;  // [M, N] bf16 (e.g. cross_entropy's dlogits_bf16), stride dy_stride
};
void linear_backward(const Context& ctx, const LinearBackwardParams& p);

// Backward of rmsnorm (y = weight * x * r, r = 1/sqrt(mean(x^2) + eps)), recomputing r from x:
//   dx[r, :] (+)= r * (weight*dy - x * r^2 * mean(weight*dy*x))      (accumulate_dx)
//   dweight[:] += sum_rows dy * x * r                                 (always accumulates)
struct RmsNormBackwardParams {
  const float* x = nullptr;
  const float* weight = nullptr;
  const float* dy = nullptr;
  float* dx = nullptr;        // may not alias x; may alias dy
  float* dweight = nullptr;   // optional
  int64_t rows = 0, dim = 0;
  int64_t x_stride = 0, dy_stride = 0, dx_stride = 0;  // 0 means dim
  float eps = 1e-6f;
  bool accumulate_dx = false;
};
void rmsnorm_backward(const Context& ctx, const RmsNormBackwardParams& p);

// (The backward of rope is rope itself with sin negated: the rotation is orthogonal.)

// Backward of causal attention with Hkv == H (training: the queries are the last T of S keys).
// Inputs as AttentionParams plus dout[T, H, Dv]; outputs dq[T, H, Dqk], dk[S, H, Dqk], dv[S, H, Dv]
// (overwritten, dense). Probabilities are recomputed from q, k. The forward's out and lse (both or
// neither) may be given: the tensor-core backends then skip running the forward again for them
// (bit-identical when they come from the same backend and precision); the fp32 kernels and the
// CPU, which get them in the same pass as dq, ignore them.
struct AttentionBackwardParams {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  const float* dout = nullptr;
  float* dq = nullptr;
  float* dk = nullptr;
  float* dv = nullptr;
  int64_t T = 0, S = 0, H = 0, Dqk = 0, Dv = 0;
  float scale = 1.0f;
  const float* out = nullptr;  // optional [T, H, Dv]: the forward's output
  const float* lse = nullptr;  // optional [T, H]: the forward's AttentionParams::lse
};
void attention_backward(const Context& ctx, const AttentionBackwardParams& p);

// Backward of out = silu(gate) * up: dgate = dout * up * silu'(gate), dup = dout * silu(gate).
// dgate/dup may alias gate/up (each element is read before it is written).
struct SwigluBackwardParams {
  const float* gate = nullptr;
  const float* up = nullptr;
  const float* dout = nullptr;
  float* dgate = nullptr;
  float* dup = nullptr;
  int64_t n = 0;
};
void swiglu_backward(const Context& ctx, const SwigluBackwardParams& p);

// Backward of embed: dtable[ids[t], :] += dout[t, :] (ids may repeat: added in token order).
// Optionally the tokens grouped by id on the host (embed_backward_groups), which lets a device add each
// id's rows in one pass instead of every table slice scanning all tokens; the sums are the same.
struct EmbedBackwardParams {
  const int32_t* ids = nullptr;
  const float* dout = nullptr;
  float* dtable = nullptr;
  int64_t T = 0, D = 0;
  const int32_t* grouped_tokens = nullptr;  // [T] token indices by id, then position (optional)
  const int32_t* group_start = nullptr;     // [groups + 1] one group of grouped_tokens per distinct id
  int64_t groups = 0;
};
void embed_backward(const Context& ctx, const EmbedBackwardParams& p);
struct EmbedGroups {
  std::vector<int32_t> tokens, start;  // grouped_tokens, group_start
  int64_t groups() const { return start.empty() ? 0 : static_cast<int64_t>(start.size()) - 1; }
};
EmbedGroups embed_backward_groups(const int32_t* ids, int64_t T);

// Gradient of the combine weights with respect to the router logits, for the weights route()
// produced (same kind, K, norm_topk_prob, scaling). The correction bias only chooses experts, so it
// gets no gradient. dlogits[T, E] (+)= (accumulate):
//   softmax kinds: p = softmax(logits); w_k = scale * p[e_k]; dlogits = p * (g - sum(p * g)),
//                  g[e_k] = scale * dweights[k], 0 elsewhere.
//   sigmoid:       s = sigmoid(logits); w_k = scale * s[e_k] / (Z if norm_topk_prob, else 1), Z = sum_j s[e_j] + 1e-20;
//                  ds_k = scale * (dw_k / Z - sum_j dw_j s[e_j] / Z^2) (or scale * dw_k without the norm);
//                  dlogits[e_k] = ds_k * s[e_k] * (1 - s[e_k]).
struct RouteBackwardParams {
  const float* logits = nullptr;
  const int32_t* indices = nullptr;  // [T, K]
  const float* dweights = nullptr;   // [T, K]
  float* dlogits = nullptr;          // [T, E]
  int64_t T = 0, E = 0, K = 0;
  RouterKind kind = RouterKind::SigmoidNoauxGroups;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
  bool accumulate = false;
};
void route_backward(const Context& ctx, const RouteBackwardParams& p);

// out[r] = sum_d a[rows[r], d] * b[r, d]   (the gradient of scatter_add_rows' per-row scale)
struct RowDotsParams {
  const int32_t* rows = nullptr;
  const float* a = nullptr;  // [*, D]
  const float* b = nullptr;  // [n, D]
  float* out = nullptr;      // [n]
  int64_t n = 0, D = 0;
};
void row_dots(const Context& ctx, const RowDotsParams& p);

// Routed experts of a training step on bf16 products (train.bf16), all experts of a layer at once.
// The caller plans the rows (plan_moe_train_rows below): expert e owns rows [offsets[e], offsets[e+1])
// of the expert-ordered buffers, every offset a multiple of 8 (the CUDA backend reads K-segments of
// transposed rows 16 bytes at a time); row r holds (token, slot) pair row_pair[r] = t * K + k, or -1 for
// a padding row, which is all zeros everywhere; pair p sits at row slot_of_pair[p]. Weights are bf16
// tables of E pointers ([F, D] gate and up, [D, F] down); products take bf16 operands and sum in fp32:
//   xs[r]   = bf16(x[t])                                          [D]   (t = row_pair[r] / K)
//   gu[r]   = [xs[r] . gate[e]^T | xs[r] . up[e]^T]               [2F]  fp32
//   h[r]    = bf16(silu(gu[r][:F]) * gu[r][F:])                   [F]
//   y[r]    = h[r] . down[e]^T                                    [D]   fp32
//   out[t]  = sum_k weights[t K + k] * y[slot_of_pair[t K + k]]   (k ascending; overwritten, or with
//             accumulate summed onto what out[t] holds, that first)
// xs, gu, h and y are written for the backward. On CUDA D and F must be multiples of 8 and
// E <= kMoeTrainMaxExperts.
constexpr int64_t kMoeTrainMaxExperts = 1024;
struct MoeTrainParams {
  const float* x = nullptr;        // [T, D]
  const float* weights = nullptr;  // [T * K] combine weights
  const int32_t* offsets = nullptr;       // [E + 1]
  const int32_t* row_pair = nullptr;      // [rows]
  const int32_t* slot_of_pair = nullptr;  // [T * K]
  const uint16_t* const* gate = nullptr;
  const uint16_t* const* up = nullptr;
  const uint16_t* const* down = nullptr;
  uint16_t* xs = nullptr;  // [rows, D]
  float* gu = nullptr;     // [rows, 2F]
  uint16_t* h = nullptr;   // [rows, F]
  float* y = nullptr;      // [rows, D]
  float* out = nullptr;    // [T, D]
  int64_t T = 0, K = 0, D = 0, F = 0, E = 0, rows = 0;
  bool accumulate = false;  // out += the combine (the forward only)
};
void moe_train_forward(const Context& ctx, const MoeTrainParams& p);

// Backward of moe_train_forward, from dout[T, D] and the saved xs, gu, h, y (p.out unused):
//   dweights[q] = dout[t] . y[slot_of_pair[q]]                                    (q = t K + k; overwritten)
//   dys[r]      = bf16(weights[q] * dout[t])                                      (q = row_pair[r])
//   dh[r]       = dys[r] . down[e]                                                [F]  fp32
//   dgu[r]      = bf16([dh * up * silu'(gate) | dh * silu(gate)])  (gate, up = gu[r])  [2F]
//   dx[t]      += sum_k dgu[r][:F] . gate[e] + dgu[r][F:] . up[e]  (r = slot_of_pair[t K + k], k ascending)
//   dgate[e]   += sum_r dgu[r][:F]^T xs[r],  dup[e] += sum_r dgu[r][F:]^T xs[r],  ddown[e] += sum_r dys[r]^T h[r]
// dgate, dup and ddown are tables of E fp32 gradients ([F, D], [F, D], [D, F]). With overwrite_dw
// they are written instead (= in place of +=; an expert without rows gets zeros), so that a trainer's
// first micro-batch needs neither a zeroed buffer nor a read of the old values.
struct MoeTrainBackwardParams {
  MoeTrainParams fwd;
  const float* dout = nullptr;  // [T, D]
  float* dx = nullptr;          // [T, D] (+=)
  float* dweights = nullptr;    // [T * K]
  float* const* dgate = nullptr;
  float* const* dup = nullptr;
  float* const* ddown = nullptr;
  bool overwrite_dw = false;
};
void moe_train_backward(const Context& ctx, const MoeTrainBackwardParams& p);

// The row plan of moe_train_forward on the host, from the routing indices [T * K]: experts in order,
// pairs ascending within an expert (so results do not depend on anything but the routing), each
// expert's rows padded to a multiple of 8.
struct MoeTrainRows {
  std::vector<int32_t> offsets;       // [E + 1]
  std::vector<int32_t> row_pair;      // [rows]
  std::vector<int32_t> slot_of_pair;  // [T * K]
  int64_t rows() const { return offsets.empty() ? 0 : offsets.back(); }
};
MoeTrainRows plan_moe_train_rows(const std::vector<int32_t>& indices, int64_t E);

// Cross-entropy over rows of logits, in place: logits[T, V] becomes
//   grad_scale * (softmax(logits[t]) - onehot(targets[t]))
// and loss[t] = logsumexp(logits[t]) - logits[t, targets[t]] (fp32). Rows whose target is negative
// (ignored) get loss 0 and a zero gradient. Callers run it on chunks of rows so that the logits of
// a whole batch never exist at once. With dlogits_bf16 the gradient goes there instead, rounded to
// bf16 (what a bf16 product of it would round it to anyway), and logits are only read: half the bytes
// written, and linear_backward takes it as dy_bf16 without a cast.
struct CrossEntropyParams {
  float* logits = nullptr;
  const int32_t* targets = nullptr;
  float* loss = nullptr;  // [T]
  int64_t T = 0, V = 0;
  float grad_scale = 1.0f;
  uint16_t* dlogits_bf16 = nullptr;  // optional [T, V]
};
void cross_entropy(const Context& ctx, const CrossEntropyParams& p);

// y[i] = alpha * x[i] + beta * y[i]   (beta = 0 overwrites y without reading it)
struct AxpbyParams {
  const float* x = nullptr;
  float* y = nullptr;
  int64_t n = 0;
  float alpha = 1.0f, beta = 1.0f;
};
void axpby(const Context& ctx, const AxpbyParams& p);

// out[0] (+)= sum_i x[i]^2, accumulated in double on the CPU and fp32 per block on devices.
// out is on the backend.
struct SumSquaresParams {
  const float* x = nullptr;
  float* out = nullptr;
  int64_t n = 0;
  bool accumulate = false;
};
void sum_squares(const Context& ctx, const SumSquaresParams& p);

// One AdamW step (decoupled weight decay, torch.optim.AdamW): for each i, with g = grad[i] * grad_scale,
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   param = param * (1 - lr * weight_decay) - lr * (m / (1 - b1^step)) / (sqrt(v) / sqrt(1 - b2^step) + eps)
// (the order of torch.optim.AdamW's single-tensor path).
struct AdamWParams {
  float* param = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  int64_t n = 0;
  int64_t step = 1;  // 1-based, for bias correction
  float lr = 0.0f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f, grad_scale = 1.0f;
  uint16_t* param_bf16 = nullptr;  // optional [n]: bf16(param) after the update (a bf16 compute copy)
  // Moments in bf16 instead (optimizer.bf16_moments): set m_bf16 and v_bf16, leave m and v null. The
  // arithmetic stays fp32; the new moments are rounded stochastically (stochastic_round_bf16) with
  // noise from moment_noise(step, offset + i), because with round-to-nearest v * beta2 rounds back
  // to v whenever 1 - beta2 < 2^-9 (beta2 = 0.999): v would stop decaying. Same bits on every backend.
  uint16_t* m_bf16 = nullptr;
  uint16_t* v_bf16 = nullptr;
  int64_t offset = 0;  // position of element 0 in the caller's flat buffer: the noise's counter
};
void adamw(const Context& ctx, const AdamWParams& p);

// Precision of fp32 matrix products on devices: Fp32 (exact fp32 products, the default, like the CPU),
// Tf32 (tensor cores with 10-bit mantissa inputs, fp32 accumulation; opt-in, e.g. train.tf32) or Bf16
// (tensor cores with inputs rounded to bf16, 7-bit mantissa, fp32 accumulation and storage: what
// autocast does; opt-in, e.g. train.bf16). Both cover the prefill/training attention too. The CPU
// backend always computes in fp32.
enum class MatmulPrecision { Fp32, Tf32, Bf16 };
void set_matmul_precision(MatmulPrecision p);
MatmulPrecision matmul_precision();
// Bf16 products read fp32 weights through bf16 copies. Without help a device rounds a weight on every
// call; a caller that owns a flat block of fp32 weights (the trainer's master parameters) can register
// a bf16 copy of it that it keeps current (n = 0 unregisters). bf16_weight_copy gives the copy of
// [w, w + span) when that range lies inside the registered block, else null.
void set_bf16_weight_copy(const float* weights, const uint16_t* copy, int64_t n);
const uint16_t* bf16_weight_copy(const float* w, int64_t span);

// Backends other than the CPU register their entry points here (the CUDA backend does so from
// dsv_cuda, which dsv_lib does not link against).
struct BackendTable {
  void (*linear)(const LinearParams&, void* stream) = nullptr;
  void (*rmsnorm)(const RmsNormParams&, void* stream) = nullptr;
  void (*add_rmsnorm)(const AddRmsNormParams&, void* stream) = nullptr;
  void (*rope)(const RopeParams&, void* stream) = nullptr;
  void (*rope_table)(const RopeTableParams&, void* stream) = nullptr;
  void (*attention)(const AttentionParams&, void* stream) = nullptr;
  // Whether `attention` reads these params' head strides and shared key tail itself (null: never).
  bool (*attention_reads_layout)(const AttentionParams&) = nullptr;
  void (*swiglu)(const SwigluParams&, void* stream) = nullptr;
  void (*gated_linear)(const GatedLinearParams&, void* stream) = nullptr;
  void (*route)(const RouterParams&, void* stream) = nullptr;
  void (*embed)(const EmbedParams&, void* stream) = nullptr;
  void (*add)(const AddParams&, void* stream) = nullptr;
  void (*copy2d)(const Copy2dParams&, void* stream) = nullptr;
  void (*gather_rows)(const RowsParams&, void* stream) = nullptr;
  void (*scatter_add_rows)(const RowsParams&, void* stream) = nullptr;
  void (*fill_random)(const FillRandomParams&, void* stream) = nullptr;
  void (*moe_experts)(const MoeExpertsParams&, void* stream) = nullptr;
  void (*cast)(const CastParams&, void* stream) = nullptr;
  void (*linear_weight_grad)(const LinearWeightGradParams&, void* stream) = nullptr;
  void (*linear_backward)(const LinearBackwardParams&, void* stream) = nullptr;
  void (*rmsnorm_backward)(const RmsNormBackwardParams&, void* stream) = nullptr;
  void (*attention_backward)(const AttentionBackwardParams&, void* stream) = nullptr;
  void (*swiglu_backward)(const SwigluBackwardParams&, void* stream) = nullptr;
  void (*embed_backward)(const EmbedBackwardParams&, void* stream) = nullptr;
  void (*route_backward)(const RouteBackwardParams&, void* stream) = nullptr;
  void (*row_dots)(const RowDotsParams&, void* stream) = nullptr;
  void (*cross_entropy)(const CrossEntropyParams&, void* stream) = nullptr;
  void (*axpby)(const AxpbyParams&, void* stream) = nullptr;
  void (*sum_squares)(const SumSquaresParams&, void* stream) = nullptr;
  void (*adamw)(const AdamWParams&, void* stream) = nullptr;
  void (*moe_train_forward)(const MoeTrainParams&, void* stream) = nullptr;
  void (*moe_train_backward)(const MoeTrainBackwardParams&, void* stream) = nullptr;
  void* (*allocate)(size_t bytes) = nullptr;
  void (*release)(void* ptr) = nullptr;
  void (*to_device)(void* dst, const void* src, size_t bytes, void* stream) = nullptr;
  void (*to_host)(void* dst, const void* src, size_t bytes, void* stream) = nullptr;  // synchronizes
  void (*synchronize)(void* stream) = nullptr;  // waits for the stream's work (op profiling)
  void (*store_rows)(const StoreRowsParams&, void* stream) = nullptr;
  void (*store_latent_rows)(const LatentRowsParams&, void* stream) = nullptr;
  void (*argmax_rows)(const ArgmaxParams&, void* stream) = nullptr;
  void (*decode_feed)(const DecodeFeedParams&, void* stream) = nullptr;
  // Step graphs (CUDA graphs): the ops issued on a stream are recorded once and replayed. Memory the
  // ops allocate while `pool` is in use comes from that private pool, so a replay never touches
  // memory handed out to anyone else between replays.
  void* (*stream_create)() = nullptr;
  void (*stream_destroy)(void* stream) = nullptr;
  void* (*pool_create)() = nullptr;
  void (*pool_destroy)(void* pool) = nullptr;     // synchronizes, then frees the pool's memory
  void (*pool_use)(void* pool) = nullptr;         // null: back to the shared pool
  void (*capture_begin)(void* stream) = nullptr;
  void* (*capture_end)(void* stream) = nullptr;   // returns the executable graph
  void (*graph_launch)(void* graph, void* stream) = nullptr;
  void (*graph_destroy)(void* graph) = nullptr;
  // Branches (ops::Branch): fork returns a side stream whose later work starts after everything issued
  // on `stream` so far, and holds released memory back from reuse; join makes `stream`'s later work
  // wait for the side stream's, and lets the held memory go once no branch is open.
  void* (*fork)(void* stream) = nullptr;
  void (*join)(void* stream, void* side) = nullptr;
  // Pipelined steps: host memory the device writes directly (pinned and mapped: `device_view` is its
  // address in kernels), and events the host waits on for the work issued before them.
  void* (*host_mapped_allocate)(size_t bytes, void** device_view) = nullptr;
  void (*host_mapped_release)(void* host) = nullptr;
  void* (*event_create)() = nullptr;
  void (*event_destroy)(void* event) = nullptr;
  void (*event_record)(void* event, void* stream) = nullptr;
  void (*event_wait)(void* event) = nullptr;  // the host waits
};
BackendTable& backend_table(Backend b);
bool backend_available(Backend b);

// Two chains of ops of one step that may run at the same time: ops issued on side() after the fork
// can overlap the ops issued on the main context, until join(); after it the main context's work
// waits for both. Memory released while a branch is open is not handed out again before its join
// (either chain may still be using it), so buffers may be freed on either side as usual. A chain must
// not write what the other reads or writes before the join. On the CPU, and on a backend without
// streams, side() is the main context itself and everything runs in issue order. Captured graphs
// keep the branch structure.
class Branch {
 public:
  explicit Branch(const Context& main);
  ~Branch();  // joins, if join() was not called
  Branch(const Branch&) = delete;
  Branch& operator=(const Branch&) = delete;
  const Context& side() const { return side_; }
  void join();
  // Whether side() is a stream of its own. After join(), then, every op issued before the fork and on
  // the side has completed before the main context's next op starts (AttentionParams::keys_settled).
  bool forked() const { return forked_; }

 private:
  Context main_, side_;
  bool open_ = false, forked_ = false;
};

// Op profiling, for finding where time goes (not for speed claims): with the environment variable
// DSV_OP_PROFILE=1, every backend op is bracketed by device synchronizations and its wall time is
// added to its name's total (linear products also count their FLOPs). The summary lists ops by
// time, with calls, achieved TFLOP/s where known, and the wall time between ops (host work).
bool op_profile_enabled();
void op_profile_reset();
std::string op_profile_summary();

}  // namespace dsv::ops
