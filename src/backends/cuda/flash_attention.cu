// Causal attention forward and backward on tensor cores (TF32 WMMA, fp32 storage and accumulation),
// tiled as in FlashAttention-2: the scores of a tile live in shared memory only, the softmax is
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

#include "backends/cuda/cuda_ops.h"

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

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
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

cudaError_t forward(const AttentionParams& p, float* out, float* lse, cudaStream_t stream) {
  const Strides st{p.H * p.Dqk, p.k_stride ? p.k_stride : p.H * p.Dqk, p.v_stride ? p.v_stride : p.H * p.Dv,
                   p.H * p.Dv};
  const size_t smem = fwd_smem(p.Dqk, p.Dv);
  cudaError_t e = allow_smem(flash_fwd_kernel, smem);
  if (e != cudaSuccess) return e;
  flash_fwd_kernel<<<dim3(tiles(p.T, kFwdQ), static_cast<unsigned>(p.H)), kThreads, smem, stream>>>(p, st, out, lse);
  return cudaGetLastError();
}

}  // namespace

bool flash_attention_supported(int64_t H, int64_t Hkv, int64_t Dqk, int64_t Dv, int64_t T, int64_t S) {
  return (Hkv == 0 || Hkv == H) && Dqk % 16 == 0 && Dv % 16 == 0 && Dqk > 0 && Dv > 0 && Dqk <= kMaxHeadDim &&
         Dv <= kMaxHeadDim && T > 0 && T <= S && H > 0 && H <= 65535;
}

cudaError_t flash_attention(const AttentionParams& p, cudaStream_t stream) {
  if (!flash_attention_supported(p.H, p.Hkv, p.Dqk, p.Dv, p.T, p.S)) return cudaErrorInvalidValue;
  return forward(p, p.out, nullptr, stream);
}

cudaError_t flash_attention_backward(const AttentionBackwardParams& p, cudaStream_t stream) {
  if (!flash_attention_supported(p.H, p.H, p.Dqk, p.Dv, p.T, p.S)) return cudaErrorInvalidValue;
  // Statistics: the forward again (out and logsumexp), then D = dout . out per (query, head).
  const size_t rows = static_cast<size_t>(p.T * p.H);
  float* out = static_cast<float*>(cached_allocate(rows * static_cast<size_t>(p.Dv) * sizeof(float)));
  float* lse = static_cast<float*>(cached_allocate(rows * sizeof(float)));
  float* Dsum = static_cast<float*>(cached_allocate(rows * sizeof(float)));
  cudaError_t e = out && lse && Dsum ? cudaSuccess : cudaErrorMemoryAllocation;
  if (e == cudaSuccess) {
    const AttentionParams fp{.q = p.q, .k = p.k, .v = p.v, .out = out, .T = p.T, .S = p.S, .H = p.H,
                             .Dqk = p.Dqk, .Dv = p.Dv, .scale = p.scale};
    e = forward(fp, out, lse, stream);
  }
  if (e == cudaSuccess) {
    row_dot_kernel<<<static_cast<unsigned>((rows * 32 + 255) / 256), 256, 0, stream>>>(p.dout, out, Dsum,
                                                                                        static_cast<int64_t>(rows), p.Dv);
    e = cudaGetLastError();
  }
  const Strides st{p.H * p.Dqk, p.H * p.Dqk, p.H * p.Dv, p.H * p.Dv};
  if (e == cudaSuccess) e = allow_smem(flash_bwd_kv_kernel, bwd_kv_smem(p.Dqk, p.Dv));
  if (e == cudaSuccess) e = allow_smem(flash_bwd_q_kernel, bwd_q_smem(p.Dqk, p.Dv));
  if (e == cudaSuccess) {
    flash_bwd_kv_kernel<<<dim3(tiles(p.S, kBwdK), static_cast<unsigned>(p.H)), kThreads, bwd_kv_smem(p.Dqk, p.Dv),
                          stream>>>(p, st, lse, Dsum);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) {
    flash_bwd_q_kernel<<<dim3(tiles(p.T, kDqQ), static_cast<unsigned>(p.H)), kThreads, bwd_q_smem(p.Dqk, p.Dv),
                         stream>>>(p, st, lse, Dsum);
    e = cudaGetLastError();
  }
  // The caching allocator reuses these only for later work on the same stream.
  if (out) cached_release(out);
  if (lse) cached_release(lse);
  if (Dsum) cached_release(Dsum);
  return e;
}

}  // namespace dsv::ops::cuda
