// Routed experts for few tokens (decode steps, batched decode) with the routing kept on the GPU.
// One token (T = 1): two kernels, up by slot and down fused with the weighted combine (its slots need
// no plan). Grouped by expert (when the Params give E): a one-block plan sorts the (token, slot) pairs by
// expert, then each active expert's weights are streamed once for all of its pairs (up to 8 rows of
// x per pass of GEMV-shaped warps), so a batched step reads each expert once, not once per pair.
// Without E, one pass per pair. Memory-bound: 16-byte weight loads when rows are 4-aligned (fp32)
// or 8-aligned (bf16 tables, through lane_dots_bf16_rows). Deterministic (no atomics).
#include "backends/cuda/bf16_dot.cuh"
#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"

namespace dsv::ops::cuda {
namespace {

constexpr int kWarps = 8;

// dot(a, b) over n by one warp; vectorized when both are 16-byte aligned and n % 4 == 0.
__device__ float warp_dot(const float* a, const float* b, int64_t n) {
  const int lane = threadIdx.x % 32;
  float acc = 0.0f;
  if (n % 4 == 0 && (reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b)) % 16 == 0) {
    const float4* a4 = reinterpret_cast<const float4*>(a);
    const float4* b4 = reinterpret_cast<const float4*>(b);
    for (int64_t i = lane; i < n / 4; i += 32) {
      const float4 x = a4[i], y = __ldg(b4 + i);
      acc += x.x * y.x + x.y * y.y + x.z * y.z + x.w * y.w;
    }
  } else {
    for (int64_t i = lane; i < n; i += 32) acc += a[i] * b[i];
  }
  return warp_sum(acc);
}

// h[pair, f] = silu(x . gate[e][f]) * (x . up[e][f]); one warp per (pair, f).
__global__ void experts_up_kernel(MoeExpertsParams p) {
  dependent_start();
  const int64_t pair = blockIdx.y;
  const int64_t f = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (f >= p.F) return;
  const int32_t e = p.indices[pair];
  const float* x = p.x + (pair / p.K) * p.D;
  const float g = warp_dot(x, p.gate[e] + f * p.D, p.D);
  const float u = warp_dot(x, p.up[e] + f * p.D, p.D);
  if (threadIdx.x % 32 == 0) p.scratch[pair * p.F + f] = (g / (1.0f + __expf(-g))) * u;
}

// y[pair, d] = h[pair] . down[e][d]; one warp per (pair, d).
__global__ void experts_down_kernel(MoeExpertsParams p) {
  dependent_start();
  const int64_t pair = blockIdx.y;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (d >= p.D) return;
  const int32_t e = p.indices[pair];
  const float* h = p.scratch + pair * p.F;
  const float v = warp_dot(h, p.down[e] + d * p.F, p.F);
  if (threadIdx.x % 32 == 0) p.scratch[p.T * p.K * p.F + pair * p.D + d] = v;
}

// The same two products with bf16 weights: x and h rounded to bf16 before the products.
__global__ void experts_up_bf16_kernel(MoeExpertsParams p) {
  dependent_start();
  const int64_t pair = blockIdx.y;
  const int64_t f = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (f >= p.F) return;
  const int32_t e = p.indices[pair];
  const float* x = p.x + (pair / p.K) * p.D;
  const uint16_t* rows[2] = {p.gate_bf16[e] + f * p.D, p.up_bf16[e] + f * p.D};
  float acc[1][2] = {};
  lane_dots_bf16<1, 2>(x, p.D, rows, p.D, acc);
  const float gs = warp_sum(acc[0][0]), us = warp_sum(acc[0][1]);
  if (threadIdx.x % 32 == 0) p.scratch[pair * p.F + f] = (gs / (1.0f + __expf(-gs))) * us;
}

__global__ void experts_down_bf16_kernel(MoeExpertsParams p) {
  dependent_start();
  const int64_t pair = blockIdx.y;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (d >= p.D) return;
  const int32_t e = p.indices[pair];
  const uint16_t* rows[1] = {p.down_bf16[e] + d * p.F};
  float acc[1][1] = {};
  lane_dots_bf16<1, 1>(p.scratch + pair * p.F, p.F, rows, p.F, acc);
  const float v = warp_sum(acc[0][0]);
  if (threadIdx.x % 32 == 0) p.scratch[p.T * p.K * p.F + pair * p.D + d] = v;
}

// out[t, d] = sum_k weights[t, k] * y[t*K + k, d], k ascending (deterministic, no atomics).
__global__ void experts_combine_kernel(MoeExpertsParams p) {
  dependent_start();
  const float* y = p.scratch + p.T * p.K * p.F;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.T * p.D;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / p.D, d = i % p.D;
    float acc = 0.0f;
    for (int64_t k = 0; k < p.K; ++k) acc += p.weights[t * p.K + k] * y[(t * p.K + k) * p.D + d];
    p.out[i] = acc;
  }
}

// ---- Grouped by expert ----

// acc[m][r] += sum_k x[m][k] * w[r][k] (fp32 weights), per lane; float4 loads when aligned.
template <int M, int R>
__device__ __forceinline__ void lane_dots_rows(const float* const (&x)[M], const float* const (&w)[R], int64_t K,
                                               float (&acc)[M][R]) {
  const int lane = threadIdx.x % 32;
  if (K % 4 != 0 || !rows_aligned16(x, w)) {
    for (int64_t k = lane; k < K; k += 32)
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float wk = __ldg(w[r] + k);
#pragma unroll
        for (int m = 0; m < M; ++m) acc[m][r] += x[m][k] * wk;
      }
    return;
  }
  for (int64_t c = lane; c < K / 4; c += 32) {
    float4 wv[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wv[r] = __ldg(reinterpret_cast<const float4*>(w[r]) + c);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float4 xv = reinterpret_cast<const float4*>(x[m])[c];
#pragma unroll
      for (int r = 0; r < R; ++r) acc[m][r] += xv.x * wv[r].x + xv.y * wv[r].y + xv.z * wv[r].z + xv.w * wv[r].w;
    }
  }
}
template <int M, int R>
__device__ __forceinline__ void lane_dots_rows(const float* const (&x)[M], const uint16_t* const (&w)[R], int64_t K,
                                               float (&acc)[M][R]) {
  lane_dots_bf16_rows<M, R>(x, w, K, acc);
}

// Pairs per expert: counts[e], offsets[e] (exclusive prefix), order[offsets[e] + j] = the j-th pair
// (ascending) routed to e, slot_of[pair] = its place in `order`, active[0 .. n_active) = experts with
// pairs (ascending). One block; indices staged in shared memory (P <= kMaxGroupedPairs).
constexpr int64_t kMaxGroupedPairs = 8192;
// From this many tokens on, bf16 experts run as grouped tensor-core GEMMs (moe_grouped_gemm.cu).
constexpr int64_t kTensorCoreMinTokens = 128;
struct GroupPlan {
  int32_t *counts, *offsets, *order, *slot_of, *active, *n_active;
};

constexpr int kMaxGroupedExperts = 1024;  // as the router
__global__ void plan_kernel(const int32_t* __restrict__ indices, int64_t P, int64_t E, GroupPlan plan) {
  __shared__ int32_t idx[kMaxGroupedPairs];  // 32 KB
  __shared__ int32_t counts[kMaxGroupedExperts], offsets[kMaxGroupedExperts], active[kMaxGroupedExperts];
  __shared__ int32_t n_active;
  dependent_start();
  for (int64_t i = threadIdx.x; i < P; i += blockDim.x) idx[i] = indices[i];
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int64_t e = warp; e < E; e += warps) {
    int count = 0;
    for (int64_t i0 = 0; i0 < P; i0 += 32) count += __popc(__ballot_sync(0xffffffffu, i0 + lane < P && idx[i0 + lane] == e));
    if (lane == 0) counts[e] = count;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // prefix and active list, in shared memory (E is small)
    int32_t offset = 0, n = 0;
    for (int64_t e = 0; e < E; ++e) {
      offsets[e] = offset;
      offset += counts[e];
      if (counts[e] > 0) active[n++] = static_cast<int32_t>(e);
    }
    n_active = n;
    *plan.n_active = n;
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    plan.counts[e] = counts[e];
    plan.offsets[e] = offsets[e];
    if (e < n_active) plan.active[e] = active[e];
  }
  const unsigned below = (1u << lane) - 1u;
  for (int64_t e = warp; e < E; e += warps) {
    if (counts[e] == 0) continue;
    int32_t next = offsets[e];
    for (int64_t i0 = 0; i0 < P; i0 += 32) {
      const bool hit = i0 + lane < P && idx[i0 + lane] == e;
      const unsigned mask = __ballot_sync(0xffffffffu, hit);
      if (hit) {
        const int32_t pos = next + __popc(mask & below);
        plan.order[pos] = static_cast<int32_t>(i0 + lane);
        plan.slot_of[i0 + lane] = pos;
      }
      next += __popc(mask);
    }
  }
}

constexpr int kGroupWarps = 4, kUpColsPerWarp = 2, kDownColsPerWarp = 4;

// Weights of expert e, column group: up/gate rows f0, f0 + 1 (clamped to F - 1; extra results dropped).
// h[slot, f] = silu(x[t] . gate[e][f]) * (x[t] . up[e][f]) for the expert's slots, M at a time.
template <int M, typename W>
__device__ __forceinline__ void grouped_up_rows(const MoeExpertsParams& p, const GroupPlan& plan, const W* gate,
                                                const W* up, int64_t f0, int64_t slot0, float* h) {
  const W* rows[2 * kUpColsPerWarp];
#pragma unroll
  for (int r = 0; r < kUpColsPerWarp; ++r) {
    const int64_t f = f0 + r < p.F ? f0 + r : p.F - 1;
    rows[r] = gate + f * p.D;
    rows[kUpColsPerWarp + r] = up + f * p.D;
  }
  const float* x[M];
#pragma unroll
  for (int m = 0; m < M; ++m) x[m] = p.x + (plan.order[slot0 + m] / p.K) * p.D;
  float acc[M][2 * kUpColsPerWarp] = {};
  lane_dots_rows<M, 2 * kUpColsPerWarp>(x, rows, p.D, acc);
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < kUpColsPerWarp; ++r) {
      const float g = warp_sum(acc[m][r]), u = warp_sum(acc[m][kUpColsPerWarp + r]);
      if (threadIdx.x % 32 == 0 && f0 + r < p.F) h[(slot0 + m) * p.F + f0 + r] = (g / (1.0f + __expf(-g))) * u;
    }
}

template <int M, typename W>
__device__ __forceinline__ void grouped_down_rows(const MoeExpertsParams& p, const W* down, int64_t d0, int64_t slot0,
                                                  const float* h, float* y) {
  const W* rows[kDownColsPerWarp];
#pragma unroll
  for (int r = 0; r < kDownColsPerWarp; ++r) rows[r] = down + (d0 + r < p.D ? d0 + r : p.D - 1) * p.F;
  const float* x[M];
#pragma unroll
  for (int m = 0; m < M; ++m) x[m] = h + (slot0 + m) * p.F;
  float acc[M][kDownColsPerWarp] = {};
  lane_dots_rows<M, kDownColsPerWarp>(x, rows, p.F, acc);
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < kDownColsPerWarp; ++r) {
      const float v = warp_sum(acc[m][r]);
      if (threadIdx.x % 32 == 0 && d0 + r < p.D) y[(slot0 + m) * p.D + d0 + r] = v;
    }
}

// Grid (column groups, min(E, P)): block y takes the y-th active expert; its slots go 8, 4, 2, 1 at a time.
template <typename W>
__global__ void grouped_up_kernel(MoeExpertsParams p, GroupPlan plan, const W* const* gate, const W* const* up) {
  dependent_start();
  if (static_cast<int32_t>(blockIdx.y) >= *plan.n_active) return;
  const int32_t e = plan.active[blockIdx.y];
  const int64_t f0 = (static_cast<int64_t>(blockIdx.x) * kGroupWarps + threadIdx.x / 32) * kUpColsPerWarp;
  if (f0 >= p.F) return;
  const int64_t begin = plan.offsets[e], end = begin + plan.counts[e];
  int64_t s = begin;
  for (; s + 8 <= end; s += 8) grouped_up_rows<8>(p, plan, gate[e], up[e], f0, s, p.scratch);
  if (s + 4 <= end) { grouped_up_rows<4>(p, plan, gate[e], up[e], f0, s, p.scratch); s += 4; }
  if (s + 2 <= end) { grouped_up_rows<2>(p, plan, gate[e], up[e], f0, s, p.scratch); s += 2; }
  if (s < end) grouped_up_rows<1>(p, plan, gate[e], up[e], f0, s, p.scratch);
}

template <typename W>
__global__ void grouped_down_kernel(MoeExpertsParams p, GroupPlan plan, const W* const* down) {
  dependent_start();
  if (static_cast<int32_t>(blockIdx.y) >= *plan.n_active) return;
  const int32_t e = plan.active[blockIdx.y];
  const int64_t d0 = (static_cast<int64_t>(blockIdx.x) * kGroupWarps + threadIdx.x / 32) * kDownColsPerWarp;
  if (d0 >= p.D) return;
  const float* h = p.scratch;
  float* y = p.scratch + p.T * p.K * p.F;
  const int64_t begin = plan.offsets[e], end = begin + plan.counts[e];
  int64_t s = begin;
  for (; s + 8 <= end; s += 8) grouped_down_rows<8>(p, down[e], d0, s, h, y);
  if (s + 4 <= end) { grouped_down_rows<4>(p, down[e], d0, s, h, y); s += 4; }
  if (s + 2 <= end) { grouped_down_rows<2>(p, down[e], d0, s, h, y); s += 2; }
  if (s < end) grouped_down_rows<1>(p, down[e], d0, s, h, y);
}

// out[t, d] = sum_k weights[t, k] * y[slot_of[t*K + k], d], k ascending.
__global__ void grouped_combine_kernel(MoeExpertsParams p, const int32_t* __restrict__ slot_of) {
  dependent_start();
  const float* y = p.scratch + p.T * p.K * p.F;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.T * p.D;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / p.D, d = i % p.D;
    float acc = 0.0f;
    for (int64_t k = 0; k < p.K; ++k) acc += p.weights[t * p.K + k] * y[slot_of[t * p.K + k] * p.D + d];
    p.out[i] = acc;
  }
}

// ---- One token (a batch-1 step) ----
// Its K slots need no plan: block y of the up kernel takes slot y (expert indices[y]), and the down
// product and the weighted combine are one kernel whose block has one warp per slot for the same
// output columns and sums the slots in ascending order, as the combine does: the same values as the
// grouped path with two kernels (plan, combine) fewer on a step's critical path.
template <typename W>
__global__ void token_up_kernel(MoeExpertsParams p, const W* const* gate, const W* const* up) {
  dependent_start();
  const int64_t f0 = (static_cast<int64_t>(blockIdx.x) * kGroupWarps + threadIdx.x / 32) * kUpColsPerWarp;
  if (f0 >= p.F) return;
  const int64_t slot = blockIdx.y;
  const int32_t e = p.indices[slot];
  const W* rows[2 * kUpColsPerWarp];
#pragma unroll
  for (int r = 0; r < kUpColsPerWarp; ++r) {
    const int64_t f = f0 + r < p.F ? f0 + r : p.F - 1;
    rows[r] = gate[e] + f * p.D;
    rows[kUpColsPerWarp + r] = up[e] + f * p.D;
  }
  const float* x[1] = {p.x};
  float acc[1][2 * kUpColsPerWarp] = {};
  lane_dots_rows<1, 2 * kUpColsPerWarp>(x, rows, p.D, acc);
#pragma unroll
  for (int r = 0; r < kUpColsPerWarp; ++r) {
    const float g = warp_sum(acc[0][r]), u = warp_sum(acc[0][kUpColsPerWarp + r]);
    if (threadIdx.x % 32 == 0 && f0 + r < p.F) p.scratch[slot * p.F + f0 + r] = (g / (1.0f + __expf(-g))) * u;
  }
}

constexpr int kMaxTokenSlots = 16;  // warps of a down-combine block: one per slot
template <typename W>
__global__ void token_down_combine_kernel(MoeExpertsParams p, const W* const* down) {
  __shared__ float y[kMaxTokenSlots][kDownColsPerWarp];
  dependent_start();
  const int64_t d0 = static_cast<int64_t>(blockIdx.x) * kDownColsPerWarp;
  const int slot = threadIdx.x / 32;
  const int32_t e = p.indices[slot];
  const W* rows[kDownColsPerWarp];
#pragma unroll
  for (int r = 0; r < kDownColsPerWarp; ++r) rows[r] = down[e] + (d0 + r < p.D ? d0 + r : p.D - 1) * p.F;
  const float* h[1] = {p.scratch + slot * p.F};
  float acc[1][kDownColsPerWarp] = {};
  lane_dots_rows<1, kDownColsPerWarp>(h, rows, p.F, acc);
#pragma unroll
  for (int r = 0; r < kDownColsPerWarp; ++r) {
    const float v = warp_sum(acc[0][r]);
    if (threadIdx.x % 32 == 0) y[slot][r] = v;
  }
  __syncthreads();
  if (threadIdx.x >= kDownColsPerWarp || d0 + threadIdx.x >= p.D) return;
  float sum = 0.0f;
  for (int64_t k = 0; k < p.K; ++k) sum += p.weights[k] * y[k][threadIdx.x];
  p.out[d0 + threadIdx.x] = sum;
}

template <typename W>
cudaError_t one_token(const MoeExpertsParams& p, const W* const* gate, const W* const* up, const W* const* down,
                      cudaStream_t s) {
  const int64_t up_cols = kGroupWarps * kUpColsPerWarp;
  cudaError_t e = launch_dependent(token_up_kernel<W>, dim3(static_cast<unsigned>((p.F + up_cols - 1) / up_cols),
                                                            static_cast<unsigned>(p.K)),
                                   kGroupWarps * 32, 0, s, p, gate, up);
  if (e == cudaSuccess)
    e = launch_dependent(token_down_combine_kernel<W>, static_cast<unsigned>((p.D + kDownColsPerWarp - 1) / kDownColsPerWarp),
                         static_cast<unsigned>(p.K * 32), 0, s, p, down);
  return e;
}

template <typename W>
cudaError_t grouped(const MoeExpertsParams& p, const W* const* gate, const W* const* up, const W* const* down,
                    cudaStream_t s) {
  const int64_t P = p.T * p.K, E = p.E;
  int32_t* ints = static_cast<int32_t*>(cached_allocate(static_cast<size_t>(3 * E + 2 * P + 1) * sizeof(int32_t)));
  if (!ints) return cudaErrorMemoryAllocation;
  const GroupPlan plan{ints, ints + E, ints + 2 * E, ints + 2 * E + P, ints + 2 * E + 2 * P, ints + 3 * E + 2 * P};
  const unsigned experts = static_cast<unsigned>(E < P ? E : P);
  const int64_t up_cols = kGroupWarps * kUpColsPerWarp, down_cols = kGroupWarps * kDownColsPerWarp;
  const int64_t blocks = (p.T * p.D + 255) / 256;
  cudaError_t e = launch_dependent(plan_kernel, 1, 1024, 0, s, p.indices, P, E, plan);
  if (e == cudaSuccess)
    e = launch_dependent(grouped_up_kernel<W>, dim3(static_cast<unsigned>((p.F + up_cols - 1) / up_cols), experts),
                         kGroupWarps * 32, 0, s, p, plan, gate, up);
  if (e == cudaSuccess)
    e = launch_dependent(grouped_down_kernel<W>, dim3(static_cast<unsigned>((p.D + down_cols - 1) / down_cols), experts),
                         kGroupWarps * 32, 0, s, p, plan, down);
  if (e == cudaSuccess)
    e = launch_dependent(grouped_combine_kernel, static_cast<unsigned>(blocks < 4096 ? blocks : 4096), 256, 0, s, p,
                         static_cast<const int32_t*>(plan.slot_of));
  cached_release(ints);  // stream-ordered reuse
  return e;
}

}  // namespace

cudaError_t moe_experts(const MoeExpertsParams& p, cudaStream_t s) {
  // Past decode sizes, tensor cores: each expert's rows then fill whole M-tiles.
  if (p.T > kTensorCoreMinTokens && moe_grouped_gemm_supported(p)) return moe_grouped_gemm(p, s);
  if (!p.scratch) {  // the GEMV paths keep h and y per (token, slot) pair
    DeviceScratch scratch;
    MoeExpertsParams q = p;
    q.scratch = scratch.get<float>(p.T * p.K * (p.F + p.D));
    if (!q.scratch) return cudaErrorMemoryAllocation;
    return moe_experts(q, s);
  }
  if (p.T == 1 && p.K <= kMaxTokenSlots) {
    if (p.gate_bf16) return one_token<uint16_t>(p, p.gate_bf16, p.up_bf16, p.down_bf16, s);
    return one_token<float>(p, p.gate, p.up, p.down, s);
  }
  if (p.E > 0 && p.E <= kMaxGroupedExperts && p.T * p.K <= kMaxGroupedPairs) {
    if (p.gate_bf16) return grouped<uint16_t>(p, p.gate_bf16, p.up_bf16, p.down_bf16, s);
    return grouped<float>(p, p.gate, p.up, p.down, s);
  }
  const unsigned pairs = static_cast<unsigned>(p.T * p.K);
  const dim3 up_grid(static_cast<unsigned>((p.F + kWarps - 1) / kWarps), pairs);
  const dim3 down_grid(static_cast<unsigned>((p.D + kWarps - 1) / kWarps), pairs);
  cudaError_t e = launch_dependent(p.gate_bf16 ? experts_up_bf16_kernel : experts_up_kernel, up_grid, kWarps * 32, 0, s, p);
  if (e == cudaSuccess)
    e = launch_dependent(p.gate_bf16 ? experts_down_bf16_kernel : experts_down_kernel, down_grid, kWarps * 32, 0, s, p);
  const int64_t n = p.T * p.D, blocks = (n + 255) / 256;
  if (e == cudaSuccess)
    e = launch_dependent(experts_combine_kernel, static_cast<unsigned>(blocks < 4096 ? blocks : 4096), 256, 0, s, p);
  return e;
}

}  // namespace dsv::ops::cuda
