// Causal attention forward and backward on tensor cores (TF32, fp32 storage and accumulation),
// tiled as in FlashAttention-2. Head dims up to 192 (q.k) / 128 (v), multiples of 8 (the releases'
// 192 / 128): mma.sync kernels with scores and outputs in registers (below). Larger head dims up to
// 256, multiples of 16: WMMA kernels that stage tiles through shared memory. In both: the scores of a tile live in shared memory only, the softmax is
// online, nothing of size T x S is ever stored. Used when matrix products run in TF32
// (ops::MatmulPrecision::Tf32, e.g. train.tf32) and the shapes fit (flash_attention_supported); the
// fp32 reference kernels (attention.cu, attention_backward.cu) stay the spec and the default.
//
// Semantics as the reference: query t (of T) sees keys 0 .. S - T + t; q [T, H, Dqk] dense,
// k / v rows of H * D floats (or k_stride / v_stride), out [T, H, Dv] dense; Hkv = H.
// Backward, with P = softmax(scale q.k), dP = dout . v, D_t = dout_t . out_t:
//   dS = P (dP - D) scale;  dq = dS k;  dk = dS^T q;  dv = P^T dout.
// Three kernels, no atomics (deterministic): the forward (which also gives logsumexp, and out for
// D), dk/dv per key tile over the query tiles that see it, dq per query tile over its key tiles.
// All use 8 warps; every warp owns whole 16 x 16 output tiles. Shared memory: <= 214 KB for head
// dims <= 256, one block per SM.
#include <mma.h>

#include <cmath>
#include <cstdint>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/warp_reduce.cuh"

namespace dsv::ops::cuda {
namespace {

using namespace nvcuda;

constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kMaxHeadDim = 256;                          // register budget of the dk/dv/dq accumulators
constexpr int kMaxTilesPerWarp = 4 * (kMaxHeadDim / 16) / kWarps;  // 64-row block x head dim, in 16x16 tiles

using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
using FragARow = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragACol = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;

// c(16x16) += A(16 x K) B(K x 16), K a multiple of 8. Element k of the reduction starts at
// a + k * a_step and b + k * b_step (1 along a row-major A's row or a col-major B's column; the
// leading dimension otherwise).
template <typename FA, typename FB>
__device__ __forceinline__ void mma_k(FragC& c, const float* a, unsigned lda, int a_step, const float* b, unsigned ldb,
                                      int b_step, int K) {
  FA fa;
  FB fb;
  for (int k = 0; k < K; k += 8) {
    wmma::load_matrix_sync(fa, a + k * a_step, lda);
    wmma::load_matrix_sync(fb, b + k * b_step, ldb);
#pragma unroll
    for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
#pragma unroll
    for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
    wmma::mma_sync(c, fa, fb, c);
  }
}


// rows x dim floats from global rows (row stride `stride`, column offset `col`) into shared memory;
// rows past `valid` are zero.
__device__ __forceinline__ void load_rows(float* dst, const float* src, int64_t first_row, int rows, int valid,
                                          int64_t stride, int64_t col, int dim) {
  for (int i = threadIdx.x; i < rows * dim; i += kThreads) {
    const int r = i / dim, d = i % dim;
    dst[i] = r < valid ? src[(first_row + r) * stride + col + d] : 0.0f;
  }
}

struct Strides {
  int64_t q, k, v, o;  // row strides in floats of q, k, v, out (and dq, dk, dv, dout alike)
};

// ---- forward: block = (64 queries, head); key tiles of 32 ----
constexpr int kFwdQ = 64, kFwdK = 32;

__global__ void __launch_bounds__(kThreads) flash_fwd_kernel(AttentionParams p, Strides st, float* out, float* lse) {
  extern __shared__ __align__(128) float sm[];
  const int Dqk = static_cast<int>(p.Dqk), Dv = static_cast<int>(p.Dv);
  float* Qs = sm;                   // [64][Dqk]
  float* Ks = Qs + kFwdQ * Dqk;     // [32][Dqk]
  float* Vs = Ks + kFwdK * Dqk;     // [32][Dv]
  float* Ss = Vs + kFwdK * Dv;      // [64][32] scores, then probabilities
  float* Os = Ss + kFwdQ * kFwdK;   // [64][Dv] unnormalized output
  float* row_max = Os + kFwdQ * Dv;  // [64]
  float* row_sum = row_max + kFwdQ;  // [64]
  float* row_scale = row_sum + kFwdQ;  // [64]
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kFwdQ, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rows = static_cast<int>(p.T - t0 < kFwdQ ? p.T - t0 : kFwdQ);
  const int64_t offset = p.S - p.T;
  load_rows(Qs, p.q, t0, kFwdQ, rows, st.q, h * Dqk, Dqk);
  for (int i = threadIdx.x; i < kFwdQ * Dv; i += kThreads) Os[i] = 0.0f;
  if (threadIdx.x < kFwdQ) {
    row_max[threadIdx.x] = -INFINITY;
    row_sum[threadIdx.x] = 0.0f;
  }
  const int64_t key_end = p.S < t0 + rows + offset ? p.S : t0 + rows + offset;  // keys some row sees
  const int out_tiles = (kFwdQ / 16) * (Dv / 16);
  for (int64_t k0 = 0; k0 < key_end; k0 += kFwdK) {
    const int keys = static_cast<int>(p.S - k0 < kFwdK ? p.S - k0 : kFwdK);
    __syncthreads();  // the previous tile's readers are done
    load_rows(Ks, p.k, k0, kFwdK, keys, st.k, h * Dqk, Dqk);
    load_rows(Vs, p.v, k0, kFwdK, keys, st.v, h * Dv, Dv);
    __syncthreads();
    {  // S = Q K^T: 4 x 2 tiles, one per warp
      const int ti = warp / 2, tj = warp % 2;
      FragC c;
      wmma::fill_fragment(c, 0.0f);
      mma_k<FragARow, FragBCol>(c, Qs + ti * 16 * Dqk, Dqk, 1, Ks + tj * 16 * Dqk, Dqk, 1, Dqk);
      wmma::store_matrix_sync(Ss + ti * 16 * kFwdK + tj * 16, c, kFwdK, wmma::mem_row_major);
    }
    __syncthreads();
    // Online softmax: warp w owns rows 8w .. 8w+7, lanes across the 32 keys.
    for (int rr = 0; rr < kFwdQ / kWarps; ++rr) {
      const int r = warp * (kFwdQ / kWarps) + rr;
      const int64_t key = k0 + lane;
      const bool visible = r < rows && lane < keys && key <= t0 + r + offset;
      const float s = visible ? Ss[r * kFwdK + lane] * p.scale : -INFINITY;
      const float m_old = row_max[r];
      const float m_new = fmaxf(m_old, warp_max(s));
      const float prob = visible ? expf(s - m_new) : 0.0f;
      const float sum = warp_sum(prob);
      Ss[r * kFwdK + lane] = prob;
      __syncwarp();
      if (lane == 0) {
        const float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
        row_scale[r] = alpha;
        row_sum[r] = row_sum[r] * alpha + sum;
        row_max[r] = m_new;
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kFwdQ * Dv; i += kThreads) Os[i] *= row_scale[i / Dv];
    __syncthreads();
    for (int tile = warp; tile < out_tiles; tile += kWarps) {  // O += P V
      const int ti = tile / (Dv / 16), tj = tile % (Dv / 16);
      FragC c;
      wmma::load_matrix_sync(c, Os + ti * 16 * Dv + tj * 16, Dv, wmma::mem_row_major);
      mma_k<FragARow, FragBRow>(c, Ss + ti * 16 * kFwdK, kFwdK, 1, Vs + tj * 16, Dv, Dv, kFwdK);
      wmma::store_matrix_sync(Os + ti * 16 * Dv + tj * 16, c, Dv, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < rows * Dv; i += kThreads) {
    const int r = i / Dv, d = i % Dv;
    out[(t0 + r) * st.o + h * Dv + d] = row_sum[r] > 0.0f ? Os[i] / row_sum[r] : 0.0f;
  }
  if (lse && threadIdx.x < rows)
    lse[(t0 + threadIdx.x) * p.H + h] = row_max[threadIdx.x] + logf(row_sum[threadIdx.x]);
}

// D[t, h] = dout[t, h, :] . out[t, h, :], one warp per (t, h).
__global__ void row_dot_kernel(const float* dout, const float* out, float* D, int64_t rows, int64_t Dv) {
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float acc = 0.0f;
  for (int64_t d = lane; d < Dv; d += 32) acc += dout[r * Dv + d] * out[r * Dv + d];
  acc = warp_sum(acc);
  if (lane == 0) D[r] = acc;
}

// ---- dk, dv: block = (64 keys, head); query tiles of 32 ----
constexpr int kBwdK = 64, kBwdQ = 32;

__global__ void __launch_bounds__(kThreads)
    flash_bwd_kv_kernel(AttentionBackwardParams p, Strides st, const float* lse, const float* Dsum) {
  extern __shared__ __align__(128) float sm[];
  const int Dqk = static_cast<int>(p.Dqk), Dv = static_cast<int>(p.Dv);
  float* Ks = sm;                     // [64][Dqk]
  float* Vs = Ks + kBwdK * Dqk;       // [64][Dv]
  float* Qs = Vs + kBwdK * Dv;        // [32][Dqk]
  float* dOs = Qs + kBwdQ * Dqk;      // [32][Dv]
  float* Ps = dOs + kBwdQ * Dv;       // [32][64]
  float* dSs = Ps + kBwdQ * kBwdK;    // [32][64] dP, then dS
  float* lse_s = dSs + kBwdQ * kBwdK;  // [32]
  float* D_s = lse_s + kBwdQ;          // [32]
  const int64_t s0 = static_cast<int64_t>(blockIdx.x) * kBwdK, h = blockIdx.y;
  const int warp = threadIdx.x / 32;
  const int keys = static_cast<int>(p.S - s0 < kBwdK ? p.S - s0 : kBwdK);
  const int64_t offset = p.S - p.T;
  load_rows(Ks, p.k, s0, kBwdK, keys, st.k, h * Dqk, Dqk);
  load_rows(Vs, p.v, s0, kBwdK, keys, st.v, h * Dv, Dv);
  const int dv_tiles = (kBwdK / 16) * (Dv / 16), dk_tiles = (kBwdK / 16) * (Dqk / 16);
  FragC dv_acc[kMaxTilesPerWarp], dk_acc[kMaxTilesPerWarp];
#pragma unroll
  for (int i = 0; i < kMaxTilesPerWarp; ++i) {
    wmma::fill_fragment(dv_acc[i], 0.0f);
    wmma::fill_fragment(dk_acc[i], 0.0f);
  }
  // The first query that sees key s0 is s0 - offset.
  int64_t first = s0 - offset > 0 ? s0 - offset : 0;
  first -= first % kBwdQ;
  for (int64_t t0 = first; t0 < p.T; t0 += kBwdQ) {
    const int rows = static_cast<int>(p.T - t0 < kBwdQ ? p.T - t0 : kBwdQ);
    __syncthreads();
    load_rows(Qs, p.q, t0, kBwdQ, rows, st.q, h * Dqk, Dqk);
    load_rows(dOs, p.dout, t0, kBwdQ, rows, st.o, h * Dv, Dv);
    if (threadIdx.x < kBwdQ) {
      const bool ok = threadIdx.x < rows;
      lse_s[threadIdx.x] = ok ? lse[(t0 + threadIdx.x) * p.H + h] : 0.0f;
      D_s[threadIdx.x] = ok ? Dsum[(t0 + threadIdx.x) * p.H + h] : 0.0f;
    }
    __syncthreads();
    {  // S = Q K^T and dP = dO V^T: 2 x 4 tiles each, one of each per warp
      const int ti = warp / 4, tj = warp % 4;
      FragC c;
      wmma::fill_fragment(c, 0.0f);
      mma_k<FragARow, FragBCol>(c, Qs + ti * 16 * Dqk, Dqk, 1, Ks + tj * 16 * Dqk, Dqk, 1, Dqk);
      wmma::store_matrix_sync(Ps + ti * 16 * kBwdK + tj * 16, c, kBwdK, wmma::mem_row_major);
      wmma::fill_fragment(c, 0.0f);
      mma_k<FragARow, FragBCol>(c, dOs + ti * 16 * Dv, Dv, 1, Vs + tj * 16 * Dv, Dv, 1, Dv);
      wmma::store_matrix_sync(dSs + ti * 16 * kBwdK + tj * 16, c, kBwdK, wmma::mem_row_major);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kBwdQ * kBwdK; i += kThreads) {
      const int r = i / kBwdK, j = i % kBwdK;
      const bool visible = r < rows && j < keys && s0 + j <= t0 + r + offset;
      const float prob = visible ? expf(Ps[i] * p.scale - lse_s[r]) : 0.0f;
      Ps[i] = prob;
      dSs[i] = prob * (dSs[i] - D_s[r]) * p.scale;
    }
    __syncthreads();
    // dV += P^T dO and dK += dS^T Q; P^T and dS^T are column-major views of Ps and dSs.
#pragma unroll
    for (int i = 0; i < kMaxTilesPerWarp; ++i) {
      const int tile = warp + i * kWarps;
      if (tile < dv_tiles) {
        const int ti = tile / (Dv / 16), tj = tile % (Dv / 16);
        mma_k<FragACol, FragBRow>(dv_acc[i], Ps + ti * 16, kBwdK, kBwdK, dOs + tj * 16, Dv, Dv, kBwdQ);
      }
      if (tile < dk_tiles) {
        const int ti = tile / (Dqk / 16), tj = tile % (Dqk / 16);
        mma_k<FragACol, FragBRow>(dk_acc[i], dSs + ti * 16, kBwdK, kBwdK, Qs + tj * 16, Dqk, Dqk, kBwdQ);
      }
    }
  }
  // Stage through shared memory (K, V are no longer needed), then write only the valid rows.
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kMaxTilesPerWarp; ++i) {
    const int tile = warp + i * kWarps;
    if (tile < dv_tiles) {
      const int ti = tile / (Dv / 16), tj = tile % (Dv / 16);
      wmma::store_matrix_sync(Vs + ti * 16 * Dv + tj * 16, dv_acc[i], Dv, wmma::mem_row_major);
    }
    if (tile < dk_tiles) {
      const int ti = tile / (Dqk / 16), tj = tile % (Dqk / 16);
      wmma::store_matrix_sync(Ks + ti * 16 * Dqk + tj * 16, dk_acc[i], Dqk, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < keys * Dqk; i += kThreads)
    p.dk[(s0 + i / Dqk) * st.k + h * Dqk + i % Dqk] = Ks[i];
  for (int i = threadIdx.x; i < keys * Dv; i += kThreads) p.dv[(s0 + i / Dv) * st.v + h * Dv + i % Dv] = Vs[i];
}

// ---- dq: block = (64 queries, head); key tiles of 32 ----
constexpr int kDqQ = 64, kDqK = 32;

__global__ void __launch_bounds__(kThreads)
    flash_bwd_q_kernel(AttentionBackwardParams p, Strides st, const float* lse, const float* Dsum) {
  extern __shared__ __align__(128) float sm[];
  const int Dqk = static_cast<int>(p.Dqk), Dv = static_cast<int>(p.Dv);
  float* Qs = sm;                     // [64][Dqk], at the end the staged dq
  float* dOs = Qs + kDqQ * Dqk;       // [64][Dv]
  float* Ks = dOs + kDqQ * Dv;        // [32][Dqk]
  float* Vs = Ks + kDqK * Dqk;        // [32][Dv]
  float* Ps = Vs + kDqK * Dv;         // [64][32]
  float* dSs = Ps + kDqQ * kDqK;      // [64][32]
  float* lse_s = dSs + kDqQ * kDqK;   // [64]
  float* D_s = lse_s + kDqQ;          // [64]
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kDqQ, h = blockIdx.y;
  const int warp = threadIdx.x / 32;
  const int rows = static_cast<int>(p.T - t0 < kDqQ ? p.T - t0 : kDqQ);
  const int64_t offset = p.S - p.T;
  load_rows(Qs, p.q, t0, kDqQ, rows, st.q, h * Dqk, Dqk);
  load_rows(dOs, p.dout, t0, kDqQ, rows, st.o, h * Dv, Dv);
  if (threadIdx.x < kDqQ) {
    const bool ok = threadIdx.x < rows;
    lse_s[threadIdx.x] = ok ? lse[(t0 + threadIdx.x) * p.H + h] : 0.0f;
    D_s[threadIdx.x] = ok ? Dsum[(t0 + threadIdx.x) * p.H + h] : 0.0f;
  }
  const int dq_tiles = (kDqQ / 16) * (Dqk / 16);
  FragC dq_acc[kMaxTilesPerWarp];
#pragma unroll
  for (int i = 0; i < kMaxTilesPerWarp; ++i) wmma::fill_fragment(dq_acc[i], 0.0f);
  const int64_t key_end = p.S < t0 + rows + offset ? p.S : t0 + rows + offset;
  for (int64_t k0 = 0; k0 < key_end; k0 += kDqK) {
    const int keys = static_cast<int>(p.S - k0 < kDqK ? p.S - k0 : kDqK);
    __syncthreads();
    load_rows(Ks, p.k, k0, kDqK, keys, st.k, h * Dqk, Dqk);
    load_rows(Vs, p.v, k0, kDqK, keys, st.v, h * Dv, Dv);
    __syncthreads();
    {  // S = Q K^T, dP = dO V^T: 4 x 2 tiles each, one of each per warp
      const int ti = warp / 2, tj = warp % 2;
      FragC c;
      wmma::fill_fragment(c, 0.0f);
      mma_k<FragARow, FragBCol>(c, Qs + ti * 16 * Dqk, Dqk, 1, Ks + tj * 16 * Dqk, Dqk, 1, Dqk);
      wmma::store_matrix_sync(Ps + ti * 16 * kDqK + tj * 16, c, kDqK, wmma::mem_row_major);
      wmma::fill_fragment(c, 0.0f);
      mma_k<FragARow, FragBCol>(c, dOs + ti * 16 * Dv, Dv, 1, Vs + tj * 16 * Dv, Dv, 1, Dv);
      wmma::store_matrix_sync(dSs + ti * 16 * kDqK + tj * 16, c, kDqK, wmma::mem_row_major);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kDqQ * kDqK; i += kThreads) {
      const int r = i / kDqK, j = i % kDqK;
      const bool visible = r < rows && j < keys && k0 + j <= t0 + r + offset;
      const float prob = visible ? expf(Ps[i] * p.scale - lse_s[r]) : 0.0f;
      dSs[i] = prob * (dSs[i] - D_s[r]) * p.scale;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kMaxTilesPerWarp; ++i) {  // dQ += dS K
      const int tile = warp + i * kWarps;
      if (tile < dq_tiles) {
        const int ti = tile / (Dqk / 16), tj = tile % (Dqk / 16);
        mma_k<FragARow, FragBRow>(dq_acc[i], dSs + ti * 16 * kDqK, kDqK, 1, Ks + tj * 16, Dqk, Dqk, kDqK);
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kMaxTilesPerWarp; ++i) {
    const int tile = warp + i * kWarps;
    if (tile < dq_tiles) {
      const int ti = tile / (Dqk / 16), tj = tile % (Dqk / 16);
      wmma::store_matrix_sync(Qs + ti * 16 * Dqk + tj * 16, dq_acc[i], Dqk, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < rows * Dqk; i += kThreads) p.dq[(t0 + i / Dqk) * st.q + h * Dqk + i % Dqk] = Qs[i];
}

size_t fwd_smem(int64_t Dqk, int64_t Dv) {
  return static_cast<size_t>(kFwdQ * Dqk + kFwdK * Dqk + kFwdK * Dv + kFwdQ * kFwdK + kFwdQ * Dv + 3 * kFwdQ) *
         sizeof(float);
}
size_t bwd_kv_smem(int64_t Dqk, int64_t Dv) {
  return static_cast<size_t>(kBwdK * Dqk + kBwdK * Dv + kBwdQ * Dqk + kBwdQ * Dv + 2 * kBwdQ * kBwdK + 2 * kBwdQ) *
         sizeof(float);
}
size_t bwd_q_smem(int64_t Dqk, int64_t Dv) {
  return static_cast<size_t>(kDqQ * Dqk + kDqQ * Dv + kDqK * Dqk + kDqK * Dv + 2 * kDqQ * kDqK + 2 * kDqQ) *
         sizeof(float);
}

template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

unsigned tiles(int64_t n, int tile) { return static_cast<unsigned>((n + tile - 1) / tile); }


// ==== mma.sync kernels (FlashAttention-2 register layout) for head dims Dqk <= 192, Dv <= 128 ====
// PTX m16n8k8 TF32 fragments, g = lane / 4, t = lane % 4:
//   A (16 x 8, row):  a0 (g, t)  a1 (g + 8, t)  a2 (g, t + 4)  a3 (g + 8, t + 4)
//   B (8 x 8, col):   b0 (t, g)  b1 (t + 4, g)
//   C (16 x 8):       c0 (g, 2t) c1 (g, 2t + 1) c2 (g + 8, 2t) c3 (g + 8, 2t + 1)
// Each warp owns 16 rows; scores, probabilities and outputs stay in registers with known rows, so
// the online-softmax rescaling needs no shared memory. A C tile becomes the A operand of the next
// product by relabelling the reduction index: slot t <-> column 2t, slot t + 4 <-> column 2t + 1,
// with B's rows read in the same order. Shared rows are padded by 4 floats: conflict-free fragment
// loads.
constexpr int kMmaWarps = 4, kMmaThreads = 32 * kMmaWarps;
constexpr int kMmaMaxDqk = 192, kMmaMaxDv = 128;

__device__ __forceinline__ uint32_t tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ void mma_tf32(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// rows x dim floats into shared memory with row pitch ld (zero rows past `valid`); float4 when vec.
__device__ __forceinline__ void load_tile(float* dst, int ld, const float* src, int64_t first_row, int rows,
                                          int valid, int64_t stride, int64_t col, int dim, bool vec) {
  if (vec) {
    const int q = dim / 4;
    for (int i = threadIdx.x; i < rows * q; i += kMmaThreads) {
      const int r = i / q, c = (i % q) * 4;
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (r < valid) v = *reinterpret_cast<const float4*>(src + (first_row + r) * stride + col + c);
      *reinterpret_cast<float4*>(dst + r * ld + c) = v;
    }
  } else {
    for (int i = threadIdx.x; i < rows * dim; i += kMmaThreads) {
      const int r = i / dim, c = i % dim;
      dst[r * ld + c] = r < valid ? src[(first_row + r) * stride + col + c] : 0.0f;
    }
  }
}

// acc[j] (16 x 8 tile j of a 16 x 8*NJ product) += A(16 x K rows of `a`, pitch lda) * B^T where B's
// rows are the 8*NJ rows of `b` (pitch ldb): the Q K^T / dO V^T pattern.
template <int NJ>
__device__ __forceinline__ void rows_times_rows(float (&acc)[NJ][4], const float* a, int lda, const float* b, int ldb,
                                                int K, int g, int t) {
  for (int kk = 0; kk < K; kk += 8) {
    const uint32_t a0 = tf32(a[g * lda + kk + t]), a1 = tf32(a[(g + 8) * lda + kk + t]);
    const uint32_t a2 = tf32(a[g * lda + kk + t + 4]), a3 = tf32(a[(g + 8) * lda + kk + t + 4]);
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const float* bj = b + (8 * j + g) * ldb + kk + t;
      mma_tf32(acc[j], a0, a1, a2, a3, tf32(bj[0]), tf32(bj[4]));
    }
  }
}

// out[n] (16 x 8 tiles over `cols` columns) += C(16 x 8*NJ, registers) * B(8*NJ rows of `b`, pitch ldb).
template <int NJ, int NMAX>
__device__ __forceinline__ void regs_times_rows(float (&out)[NMAX][4], const float (&c)[NJ][4], const float* b,
                                                int ldb, int cols, int g, int t) {
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
    const uint32_t a0 = tf32(c[j][0]), a1 = tf32(c[j][2]), a2 = tf32(c[j][1]), a3 = tf32(c[j][3]);
    const float* r0 = b + (8 * j + 2 * t) * ldb + g;
    const float* r1 = r0 + ldb;
#pragma unroll
    for (int n = 0; n < NMAX; ++n)
      if (8 * n < cols) mma_tf32(out[n], a0, a1, a2, a3, tf32(r0[8 * n]), tf32(r1[8 * n]));
  }
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

constexpr int kMmaFwdQ = 16 * kMmaWarps, kMmaFwdK = 32;  // 92 KB of shared memory at 192/128: two blocks per SM

__global__ void __launch_bounds__(kMmaThreads)
    mma_fwd_kernel(AttentionParams p, Strides st, float* out, float* lse, bool vec) {
  extern __shared__ __align__(128) float sm[];
  const int Dqk = static_cast<int>(p.Dqk), Dv = static_cast<int>(p.Dv), ldq = Dqk + 4, ldv = Dv + 4;
  float* Qs = sm;
  float* Ks = Qs + kMmaFwdQ * ldq;
  float* Vs = Ks + kMmaFwdK * ldq;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kMmaFwdQ, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int rows = static_cast<int>(p.T - t0 < kMmaFwdQ ? p.T - t0 : kMmaFwdQ);
  const int64_t offset = p.S - p.T;
  load_tile(Qs, ldq, p.q, t0, kMmaFwdQ, rows, st.q, h * Dqk, Dqk, vec);
  float o[kMmaMaxDv / 8][4];
#pragma unroll
  for (int n = 0; n < kMmaMaxDv / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
  const int64_t row0 = t0 + warp * 16 + g, row1 = row0 + 8;
  const int64_t key_end = p.S < t0 + rows + offset ? p.S : t0 + rows + offset;
  const float* Qw = Qs + warp * 16 * ldq;
  for (int64_t k0 = 0; k0 < key_end; k0 += kMmaFwdK) {
    const int keys = static_cast<int>(p.S - k0 < kMmaFwdK ? p.S - k0 : kMmaFwdK);
    __syncthreads();
    load_tile(Ks, ldq, p.k, k0, kMmaFwdK, keys, st.k, h * Dqk, Dqk, vec);
    load_tile(Vs, ldv, p.v, k0, kMmaFwdK, keys, st.v, h * Dv, Dv, vec);
    __syncthreads();
    float s[kMmaFwdK / 8][4];
#pragma unroll
    for (int j = 0; j < kMmaFwdK / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
    rows_times_rows<kMmaFwdK / 8>(s, Qw, ldq, Ks, ldq, Dqk, g, t);
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < kMmaFwdK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = e < 2 ? row0 : row1, key = k0 + 8 * j + 2 * t + (e & 1);
        const bool visible = row < p.T && key < p.S && key <= row + offset;
        s[j][e] = visible ? s[j][e] * p.scale : -INFINITY;
        if (e < 2) mx0 = fmaxf(mx0, s[j][e]);
        else mx1 = fmaxf(mx1, s[j][e]);
      }
    const float n0 = fmaxf(m0, quad_max(mx0)), n1 = fmaxf(m1, quad_max(mx1));
    const float a0 = m0 == -INFINITY ? 0.0f : expf(m0 - n0), a1 = m1 == -INFINITY ? 0.0f : expf(m1 - n1);
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int j = 0; j < kMmaFwdK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pr = s[j][e] == -INFINITY ? 0.0f : expf(s[j][e] - (e < 2 ? n0 : n1));
        s[j][e] = pr;
        if (e < 2) sum0 += pr;
        else sum1 += pr;
      }
    l0 = l0 * a0 + quad_sum(sum0);
    l1 = l1 * a1 + quad_sum(sum1);
    m0 = n0;
    m1 = n1;
#pragma unroll
    for (int n = 0; n < kMmaMaxDv / 8; ++n) {
      o[n][0] *= a0;
      o[n][1] *= a0;
      o[n][2] *= a1;
      o[n][3] *= a1;
    }
    regs_times_rows<kMmaFwdK / 8, kMmaMaxDv / 8>(o, s, Vs, ldv, Dv, g, t);
  }
#pragma unroll
  for (int n = 0; n < kMmaMaxDv / 8; ++n) {
    if (8 * n >= Dv) break;
    const int col = 8 * n + 2 * t;
    if (row0 < p.T) {
      out[row0 * st.o + h * Dv + col] = l0 > 0.0f ? o[n][0] / l0 : 0.0f;
      out[row0 * st.o + h * Dv + col + 1] = l0 > 0.0f ? o[n][1] / l0 : 0.0f;
    }
    if (row1 < p.T) {
      out[row1 * st.o + h * Dv + col] = l1 > 0.0f ? o[n][2] / l1 : 0.0f;
      out[row1 * st.o + h * Dv + col + 1] = l1 > 0.0f ? o[n][3] / l1 : 0.0f;
    }
  }
  if (lse && t == 0) {
    if (row0 < p.T) lse[row0 * p.H + h] = m0 + logf(l0);
    if (row1 < p.T) lse[row1 * p.H + h] = m1 + logf(l1);
  }
}

// dk, dv: block = 64 keys (16 per warp), query tiles of 32. Per warp, transposed products:
// S^T = K_w Q^T, dP^T = V_w dO^T, then dV_w += P^T dO and dK_w += dS^T Q.
constexpr int kMmaKvK = 16 * kMmaWarps, kMmaKvQ = 16;  // 105 KB at 192/128: two blocks per SM

__global__ void __launch_bounds__(kMmaThreads)
    mma_bwd_kv_kernel(AttentionBackwardParams p, Strides st, const float* lse, const float* Dsum, bool vec) {
  extern __shared__ __align__(128) float sm[];
  const int Dqk = static_cast<int>(p.Dqk), Dv = static_cast<int>(p.Dv), ldq = Dqk + 4, ldv = Dv + 4;
  float* Ks = sm;
  float* Vs = Ks + kMmaKvK * ldq;
  float* Qs = Vs + kMmaKvK * ldv;
  float* dOs = Qs + kMmaKvQ * ldq;
  float* lse_s = dOs + kMmaKvQ * ldv;
  float* D_s = lse_s + kMmaKvQ;
  const int64_t s0 = static_cast<int64_t>(blockIdx.x) * kMmaKvK, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int keys = static_cast<int>(p.S - s0 < kMmaKvK ? p.S - s0 : kMmaKvK);
  const int64_t offset = p.S - p.T;
  load_tile(Ks, ldq, p.k, s0, kMmaKvK, keys, st.k, h * Dqk, Dqk, vec);
  load_tile(Vs, ldv, p.v, s0, kMmaKvK, keys, st.v, h * Dv, Dv, vec);
  float dk[kMmaMaxDqk / 8][4], dv[kMmaMaxDv / 8][4];
#pragma unroll
  for (int n = 0; n < kMmaMaxDqk / 8; ++n) dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.0f;
#pragma unroll
  for (int n = 0; n < kMmaMaxDv / 8; ++n) dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.0f;
  const int64_t key0 = s0 + warp * 16 + g, key1 = key0 + 8;
  const float* Kw = Ks + warp * 16 * ldq;
  const float* Vw = Vs + warp * 16 * ldv;
  int64_t first = s0 - offset > 0 ? s0 - offset : 0;
  first -= first % kMmaKvQ;
  for (int64_t q0 = first; q0 < p.T; q0 += kMmaKvQ) {
    const int rows = static_cast<int>(p.T - q0 < kMmaKvQ ? p.T - q0 : kMmaKvQ);
    __syncthreads();
    load_tile(Qs, ldq, p.q, q0, kMmaKvQ, rows, st.q, h * Dqk, Dqk, vec);
    load_tile(dOs, ldv, p.dout, q0, kMmaKvQ, rows, st.o, h * Dv, Dv, vec);
    if (threadIdx.x < kMmaKvQ) {
      const bool ok = threadIdx.x < rows;
      lse_s[threadIdx.x] = ok ? lse[(q0 + threadIdx.x) * p.H + h] : 0.0f;
      D_s[threadIdx.x] = ok ? Dsum[(q0 + threadIdx.x) * p.H + h] : 0.0f;
    }
    __syncthreads();
    float sT[kMmaKvQ / 8][4], dpT[kMmaKvQ / 8][4];
#pragma unroll
    for (int j = 0; j < kMmaKvQ / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) sT[j][e] = dpT[j][e] = 0.0f;
    rows_times_rows<kMmaKvQ / 8>(sT, Kw, ldq, Qs, ldq, Dqk, g, t);
    rows_times_rows<kMmaKvQ / 8>(dpT, Vw, ldv, dOs, ldv, Dv, g, t);
#pragma unroll
    for (int j = 0; j < kMmaKvQ / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qi = 8 * j + 2 * t + (e & 1);
        const int64_t key = e < 2 ? key0 : key1, q = q0 + qi;
        const bool visible = q < p.T && key < p.S && key <= q + offset;
        const float prob = visible ? expf(sT[j][e] * p.scale - lse_s[qi]) : 0.0f;
        sT[j][e] = prob;
        dpT[j][e] = prob * (dpT[j][e] - D_s[qi]) * p.scale;
      }
    regs_times_rows<kMmaKvQ / 8, kMmaMaxDv / 8>(dv, sT, dOs, ldv, Dv, g, t);
    regs_times_rows<kMmaKvQ / 8, kMmaMaxDqk / 8>(dk, dpT, Qs, ldq, Dqk, g, t);
  }
#pragma unroll
  for (int n = 0; n < kMmaMaxDqk / 8; ++n) {
    if (8 * n >= Dqk) break;
    const int col = 8 * n + 2 * t;
    if (key0 < p.S) {
      p.dk[key0 * st.k + h * Dqk + col] = dk[n][0];
      p.dk[key0 * st.k + h * Dqk + col + 1] = dk[n][1];
    }
    if (key1 < p.S) {
      p.dk[key1 * st.k + h * Dqk + col] = dk[n][2];
      p.dk[key1 * st.k + h * Dqk + col + 1] = dk[n][3];
    }
  }
#pragma unroll
  for (int n = 0; n < kMmaMaxDv / 8; ++n) {
    if (8 * n >= Dv) break;
    const int col = 8 * n + 2 * t;
    if (key0 < p.S) {
      p.dv[key0 * st.v + h * Dv + col] = dv[n][0];
      p.dv[key0 * st.v + h * Dv + col + 1] = dv[n][1];
    }
    if (key1 < p.S) {
      p.dv[key1 * st.v + h * Dv + col] = dv[n][2];
      p.dv[key1 * st.v + h * Dv + col + 1] = dv[n][3];
    }
  }
}

// dq: block = 64 queries (16 per warp), key tiles of 32: S = Q_w K^T, dP = dO_w V^T, dQ_w += dS K.
constexpr int kMmaDqQ = 16 * kMmaWarps, kMmaDqK = 16;  // 105 KB at 192/128: two blocks per SM

__global__ void __launch_bounds__(kMmaThreads)
    mma_bwd_q_kernel(AttentionBackwardParams p, Strides st, const float* lse, const float* Dsum, bool vec) {
  extern __shared__ __align__(128) float sm[];
  const int Dqk = static_cast<int>(p.Dqk), Dv = static_cast<int>(p.Dv), ldq = Dqk + 4, ldv = Dv + 4;
  float* Qs = sm;
  float* dOs = Qs + kMmaDqQ * ldq;
  float* Ks = dOs + kMmaDqQ * ldv;
  float* Vs = Ks + kMmaDqK * ldq;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kMmaDqQ, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int rows = static_cast<int>(p.T - t0 < kMmaDqQ ? p.T - t0 : kMmaDqQ);
  const int64_t offset = p.S - p.T;
  load_tile(Qs, ldq, p.q, t0, kMmaDqQ, rows, st.q, h * Dqk, Dqk, vec);
  load_tile(dOs, ldv, p.dout, t0, kMmaDqQ, rows, st.o, h * Dv, Dv, vec);
  const int64_t row0 = t0 + warp * 16 + g, row1 = row0 + 8;
  const float lse0 = row0 < p.T ? lse[row0 * p.H + h] : 0.0f, lse1 = row1 < p.T ? lse[row1 * p.H + h] : 0.0f;
  const float D0 = row0 < p.T ? Dsum[row0 * p.H + h] : 0.0f, D1 = row1 < p.T ? Dsum[row1 * p.H + h] : 0.0f;
  float dq[kMmaMaxDqk / 8][4];
#pragma unroll
  for (int n = 0; n < kMmaMaxDqk / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
  const float* Qw = Qs + warp * 16 * ldq;
  const float* dOw = dOs + warp * 16 * ldv;
  const int64_t key_end = p.S < t0 + rows + offset ? p.S : t0 + rows + offset;
  for (int64_t k0 = 0; k0 < key_end; k0 += kMmaDqK) {
    const int keys = static_cast<int>(p.S - k0 < kMmaDqK ? p.S - k0 : kMmaDqK);
    __syncthreads();
    load_tile(Ks, ldq, p.k, k0, kMmaDqK, keys, st.k, h * Dqk, Dqk, vec);
    load_tile(Vs, ldv, p.v, k0, kMmaDqK, keys, st.v, h * Dv, Dv, vec);
    __syncthreads();
    float s[kMmaDqK / 8][4], dp[kMmaDqK / 8][4];
#pragma unroll
    for (int j = 0; j < kMmaDqK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.0f;
    rows_times_rows<kMmaDqK / 8>(s, Qw, ldq, Ks, ldq, Dqk, g, t);
    rows_times_rows<kMmaDqK / 8>(dp, dOw, ldv, Vs, ldv, Dv, g, t);
#pragma unroll
    for (int j = 0; j < kMmaDqK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = e < 2 ? row0 : row1, key = k0 + 8 * j + 2 * t + (e & 1);
        const bool visible = row < p.T && key < p.S && key <= row + offset;
        const float prob = visible ? expf(s[j][e] * p.scale - (e < 2 ? lse0 : lse1)) : 0.0f;
        dp[j][e] = prob * (dp[j][e] - (e < 2 ? D0 : D1)) * p.scale;
      }
    regs_times_rows<kMmaDqK / 8, kMmaMaxDqk / 8>(dq, dp, Ks, ldq, Dqk, g, t);
  }
#pragma unroll
  for (int n = 0; n < kMmaMaxDqk / 8; ++n) {
    if (8 * n >= Dqk) break;
    const int col = 8 * n + 2 * t;
    if (row0 < p.T) {
      p.dq[row0 * st.q + h * Dqk + col] = dq[n][0];
      p.dq[row0 * st.q + h * Dqk + col + 1] = dq[n][1];
    }
    if (row1 < p.T) {
      p.dq[row1 * st.q + h * Dqk + col] = dq[n][2];
      p.dq[row1 * st.q + h * Dqk + col + 1] = dq[n][3];
    }
  }
}

bool mma_path(int64_t Dqk, int64_t Dv) { return Dqk % 8 == 0 && Dv % 8 == 0 && Dqk <= kMmaMaxDqk && Dv <= kMmaMaxDv; }
size_t mma_fwd_smem(int64_t Dqk, int64_t Dv) {
  return static_cast<size_t>((kMmaFwdQ + kMmaFwdK) * (Dqk + 4) + kMmaFwdK * (Dv + 4)) * sizeof(float);
}
size_t mma_kv_smem(int64_t Dqk, int64_t Dv) {
  return static_cast<size_t>((kMmaKvK + kMmaKvQ) * (Dqk + 4 + Dv + 4) + 2 * kMmaKvQ) * sizeof(float);
}
size_t mma_q_smem(int64_t Dqk, int64_t Dv) {
  return static_cast<size_t>((kMmaDqQ + kMmaDqK) * (Dqk + 4 + Dv + 4)) * sizeof(float);
}
// float4 tile loads need 16-byte aligned rows: pointers and strides in multiples of 4 floats.
bool vec_ok(const void* a, const void* b, const void* c, const void* d, int64_t s1, int64_t s2, int64_t s3,
            int64_t s4) {
  auto al = [](const void* x) { return reinterpret_cast<uintptr_t>(x) % 16 == 0; };
  return al(a) && al(b) && al(c) && (d == nullptr || al(d)) && s1 % 4 == 0 && s2 % 4 == 0 && s3 % 4 == 0 &&
         s4 % 4 == 0;
}

cudaError_t forward(const AttentionParams& p, float* out, float* lse, cudaStream_t stream) {
  const Strides st{p.H * p.Dqk, p.k_stride ? p.k_stride : p.H * p.Dqk, p.v_stride ? p.v_stride : p.H * p.Dv,
                   p.H * p.Dv};
  if (mma_path(p.Dqk, p.Dv)) {
    const size_t smem = mma_fwd_smem(p.Dqk, p.Dv);
    cudaError_t e = allow_smem(mma_fwd_kernel, smem);
    if (e != cudaSuccess) return e;
    const bool vec = vec_ok(p.q, p.k, p.v, nullptr, st.q, st.k, st.v, p.Dqk);
    mma_fwd_kernel<<<dim3(tiles(p.T, kMmaFwdQ), static_cast<unsigned>(p.H)), kMmaThreads, smem, stream>>>(
        p, st, out, lse, vec);
    return cudaGetLastError();
  }
  const size_t smem = fwd_smem(p.Dqk, p.Dv);
  cudaError_t e = allow_smem(flash_fwd_kernel, smem);
  if (e != cudaSuccess) return e;
  flash_fwd_kernel<<<dim3(tiles(p.T, kFwdQ), static_cast<unsigned>(p.H)), kThreads, smem, stream>>>(p, st, out, lse);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attention_row_dots(const float* dout, const float* out, float* D, int64_t rows, int64_t Dv,
                               cudaStream_t stream) {
  row_dot_kernel<<<static_cast<unsigned>((rows * 32 + 255) / 256), 256, 0, stream>>>(dout, out, D, rows, Dv);
  return cudaGetLastError();
}

bool flash_attention_supported(int64_t H, int64_t Hkv, int64_t Dqk, int64_t Dv, int64_t T, int64_t S) {
  const bool dims = mma_path(Dqk, Dv) ||
                    (Dqk % 16 == 0 && Dv % 16 == 0 && Dqk <= kMaxHeadDim && Dv <= kMaxHeadDim);
  return (Hkv == 0 || Hkv == H) && dims && Dqk > 0 && Dv > 0 && T > 0 && T <= S && H > 0 && H <= 65535;
}

cudaError_t flash_attention(const AttentionParams& p, cudaStream_t stream) {
  if (!flash_attention_supported(p.H, p.Hkv, p.Dqk, p.Dv, p.T, p.S)) return cudaErrorInvalidValue;
  return forward(p, p.out, p.lse, stream);
}

cudaError_t flash_attention_backward(const AttentionBackwardParams& p, cudaStream_t stream) {
  if (!flash_attention_supported(p.H, p.H, p.Dqk, p.Dv, p.T, p.S)) return cudaErrorInvalidValue;
  // Statistics: the forward's out and logsumexp (given, or the forward again), then D = dout . out per
  // (query, head).
  const size_t rows = static_cast<size_t>(p.T * p.H);
  const bool given = p.out && p.lse;
  float* out = given ? nullptr : static_cast<float*>(cached_allocate(rows * static_cast<size_t>(p.Dv) * sizeof(float)));
  float* lse = given ? nullptr : static_cast<float*>(cached_allocate(rows * sizeof(float)));
  float* Dsum = static_cast<float*>(cached_allocate(rows * sizeof(float)));
  cudaError_t e = (given || (out && lse)) && Dsum ? cudaSuccess : cudaErrorMemoryAllocation;
  if (e == cudaSuccess && !given) {
    const AttentionParams fp{.q = p.q, .k = p.k, .v = p.v, .out = out, .T = p.T, .S = p.S, .H = p.H,
                             .Dqk = p.Dqk, .Dv = p.Dv, .scale = p.scale};
    e = forward(fp, out, lse, stream);
  }
  if (e == cudaSuccess)
    e = attention_row_dots(p.dout, given ? p.out : out, Dsum, static_cast<int64_t>(rows), p.Dv, stream);
  const float* stats = given ? p.lse : lse;
  const Strides st{p.H * p.Dqk, p.H * p.Dqk, p.H * p.Dv, p.H * p.Dv};
  if (e == cudaSuccess && mma_path(p.Dqk, p.Dv)) {
    const bool vec = vec_ok(p.q, p.k, p.v, p.dout, st.q, st.v, p.Dqk, p.Dv);
    e = allow_smem(mma_bwd_kv_kernel, mma_kv_smem(p.Dqk, p.Dv));
    if (e == cudaSuccess) e = allow_smem(mma_bwd_q_kernel, mma_q_smem(p.Dqk, p.Dv));
    if (e == cudaSuccess) {
      mma_bwd_kv_kernel<<<dim3(tiles(p.S, kMmaKvK), static_cast<unsigned>(p.H)), kMmaThreads,
                          mma_kv_smem(p.Dqk, p.Dv), stream>>>(p, st, stats, Dsum, vec);
      e = cudaGetLastError();
    }
    if (e == cudaSuccess) {
      mma_bwd_q_kernel<<<dim3(tiles(p.T, kMmaDqQ), static_cast<unsigned>(p.H)), kMmaThreads,
                         mma_q_smem(p.Dqk, p.Dv), stream>>>(p, st, stats, Dsum, vec);
      e = cudaGetLastError();
    }
    if (out) cached_release(out);
    if (lse) cached_release(lse);
    cached_release(Dsum);
    return e;
  }
  if (e == cudaSuccess) e = allow_smem(flash_bwd_kv_kernel, bwd_kv_smem(p.Dqk, p.Dv));
  if (e == cudaSuccess) e = allow_smem(flash_bwd_q_kernel, bwd_q_smem(p.Dqk, p.Dv));
  if (e == cudaSuccess) {
    flash_bwd_kv_kernel<<<dim3(tiles(p.S, kBwdK), static_cast<unsigned>(p.H)), kThreads, bwd_kv_smem(p.Dqk, p.Dv),
                          stream>>>(p, st, stats, Dsum);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) {
    flash_bwd_q_kernel<<<dim3(tiles(p.T, kDqQ), static_cast<unsigned>(p.H)), kThreads, bwd_q_smem(p.Dqk, p.Dv),
                         stream>>>(p, st, stats, Dsum);
    e = cudaGetLastError();
  }
  // The caching allocator reuses these only for later work on the same stream.
  if (out) cached_release(out);
  if (lse) cached_release(lse);
  if (Dsum) cached_release(Dsum);
  return e;
}

}  // namespace dsv::ops::cuda
