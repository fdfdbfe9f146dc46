// Causal attention forward and backward on bf16 tensor cores (ops::MatmulPrecision::Bf16: the
// autocast-style mode, fp32 storage, products on bf16-rounded inputs with fp32 accumulation).
// Forward and dq: Hopper warpgroup MMA (wgmma) on head-major bf16 copies of q, k, v (and their
// transposes), 128 queries per block (see "forward" and "dq on warpgroup MMA" below); the forward is
// warp-specialized, its tiles fed by the bulk tensor copy (TMA) through a ring of slots. dk / dv:
// FlashAttention-2 tiling with mma.sync m16n8k16 on dense bf16 copies of q, k, v and dout; tiles stream
// into shared memory with cp.async (double-buffered), fragments come from ldmatrix, and scores,
// probabilities and outputs stay in registers. The probabilities P and dS are rounded to bf16 as the A
// operand of the second product of each pair (P V, P^T dO, dS^T Q, dS K); the softmax, its statistics
// and every accumulator are fp32.
//
// Semantics are those of the reference (attention.cu): query t of T sees keys 0 .. S - T + t;
// q [T, H, Dqk] dense, k / v rows of H * D floats (or k_stride / v_stride), out [T, H, Dv] dense.
// Backward as flash_attention.cu: the forward again for out and logsumexp, D = dout . out, then
// dk / dv per 64-key block over the query tiles that see it and dq per 128-query block (no atomics:
// deterministic).
//
// Fragment layouts (PTX m16n8k16, g = lane / 4, t = lane % 4):
//   A (16 x 16, row): a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
//   B (16 x 8, col):  b0 (k 2t..2t+1, n g)  b1 (k 2t+8.., n g)
//   C (16 x 8):       c0 c1 (g, 2t 2t+1)  c2 c3 (g+8, 2t 2t+1)
// A C tile pair (keys 16kk .. 16kk+15) is exactly an A fragment: (c0 c1), (c2 c3) of tile 2kk, then of
// tile 2kk+1. B from rows stored [n][k] (K for q.k) is a plain ldmatrix; from rows stored [k][n]
// (V for P V) it is ldmatrix.trans. Shared rows are padded by 8 bf16 (16 bytes): the 8 row addresses
// of an 8x8 ldmatrix fall in distinct bank groups.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/mma_bf16.cuh"
#include "backends/cuda/tensor_map.h"
#include "backends/cuda/tma.cuh"
#include "backends/cuda/wgmma_bf16.cuh"

namespace dsv::ops::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kMaxDqk = 192, kMaxDv = 128;  // register budget of the dk / dq accumulators
constexpr int kPad = 8;
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

using namespace ptx;
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// rows x dim bf16 (dim a multiple of 8) into shared memory with row pitch ld; rows past `valid` are
// zero. src points at column 0 of row 0 of this head; rows are `stride` elements apart.
__device__ __forceinline__ void load_tile(bf16* dst, int ld, const bf16* src, int64_t first_row, int rows, int valid,
                                          int64_t stride, int dim) {
  const int chunks = dim / 8;
  for (int i = threadIdx.x; i < rows * chunks; i += kThreads) {
    const int r = i / chunks, c = (i % chunks) * 8;
    const bool ok = r < valid;
    cp_async16(dst + r * ld + c, ok ? src + (first_row + r) * stride + c : src, ok);
  }
}

// acc (16 x 8NJ) += A (16 rows at a, pitch lda) . B^T, B the 8NJ rows at b (pitch ldb), over K (a
// multiple of 16) columns: the q.k^T / dout.v^T pattern. NJ even.
template <int NJ>
__device__ __forceinline__ void rows_times_rows(float (&acc)[NJ][4], const bf16* a, int lda, const bf16* b, int ldb,
                                                int K, int lane) {
  const bf16* a_lane = a + (lane % 16) * lda + 8 * (lane / 16);
  const bf16* b_lane = b + ((lane % 8) + 8 * (lane / 16)) * ldb + 8 * ((lane / 8) % 2);
  for (int k = 0; k < K; k += 16) {
    uint32_t af[4];
    ldsm_x4(af, a_lane + k);
#pragma unroll
    for (int j = 0; j < NJ; j += 2) {
      uint32_t bf[4];
      ldsm_x4(bf, b_lane + 8 * j * ldb + k);
      mma_bf16(acc[j], af, bf[0], bf[1]);
      mma_bf16(acc[j + 1], af, bf[2], bf[3]);
    }
  }
}

// out (16 x cols, cols a multiple of 16 <= 8 NMAX) += C (16 x 8NJ, registers, rounded to bf16) . B,
// B the 8NJ rows at b (pitch ldb) holding `cols` columns: the P.V / dS.K pattern.
template <int NJ, int NMAX>
__device__ __forceinline__ void regs_times_rows(float (&out)[NMAX][4], const float (&c)[NJ][4], const bf16* b,
                                                int ldb, int cols, int lane) {
  const bf16* b_lane = b + (lane % 16) * ldb + 8 * (lane / 16);
#pragma unroll
  for (int kk = 0; kk < NJ / 2; ++kk) {
    const uint32_t af[4] = {pack(c[2 * kk][0], c[2 * kk][1]), pack(c[2 * kk][2], c[2 * kk][3]),
                            pack(c[2 * kk + 1][0], c[2 * kk + 1][1]), pack(c[2 * kk + 1][2], c[2 * kk + 1][3])};
#pragma unroll
    for (int n = 0; n < NMAX; n += 2) {
      if (8 * n < cols) {
        uint32_t bf[4];
        ldsm_x4_trans(bf, b_lane + 16 * kk * ldb + 8 * n);
        mma_bf16(out[n], af, bf[0], bf[1]);
        mma_bf16(out[n + 1], af, bf[2], bf[3]);
      }
    }
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

// 2^x on the special function unit, subnormal results flushed to zero (probabilities that small are
// below bf16's resolution next to the row's largest, which is 1); 2^-inf = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <int N>
__device__ __forceinline__ void zero(float (&a)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) a[i][0] = a[i][1] = a[i][2] = a[i][3] = 0.0f;
}

// 16 rows x cols of C tiles (rows r0 = row, r1 = row + 8 of this lane) to fp32 global rows.
template <int NMAX>
__device__ __forceinline__ void store_rows(float* dst, int64_t stride, int64_t r0, int64_t limit, int cols,
                                           const float (&acc)[NMAX][4], float f0, float f1, int t) {
#pragma unroll
  for (int n = 0; n < NMAX; ++n) {
    if (8 * n >= cols) break;
    const int col = 8 * n + 2 * t;
    if (r0 < limit) *reinterpret_cast<float2*>(dst + r0 * stride + col) = make_float2(acc[n][0] * f0, acc[n][1] * f0);
    if (r0 + 8 < limit)
      *reinterpret_cast<float2*>(dst + (r0 + 8) * stride + col) = make_float2(acc[n][2] * f1, acc[n][3] * f1);
  }
}

// Double buffering: prefetch tile it + 1 into the other buffer (load(tile, buffer)), then wait until
// tile it has landed for every thread of the block.
template <typename Load>
__device__ __forceinline__ void await_tile(int it, int tiles, const Load& load) {
  if (it + 1 < tiles) {
    load(it + 1, (it + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

struct Dims {
  int64_t T, S;
  int H, Dqk, Dv;
  float scale;
};

// ---- forward on warpgroup MMA (wgmma, sm_90a): block = 128 queries (64 per warpgroup) x one head ----
// Operands come packed head-major (pack_heads*): Qp [H][Tp][Dp], Kp [H][Sp][Dp] with the q.k dim padded
// to Dp (a multiple of 64) and rows to Tp / Sp (multiples of 128 / 64), and V transposed, Vt [H][128][Sp]
// (v dims padded to 128), all zero-filled, so that every tile is whole and 128-byte rows of 64 bf16 go
// into 128-byte-swizzled shared tiles (wgmma_bf16.cuh) without bounds checks. Per 64-key tile and
// warpgroup: S (64 x 64) = Q K^T from shared memory (Dp / 16 wgmma steps); the online softmax on the
// accumulators; P, rounded to bf16, stays in registers as the A operand of O (64 x 128) += P V, whose B
// is the Vt tile (keys contiguous: "K-major").
constexpr int kFwdQ = 128, kFwdK = 64, kFwdThreads = 256, kFwdDv = 128;

// rows x (kDp / 8) 16-byte chunks of a packed [rows][kDp] tile into column blocks of [rows][128 B].
template <int kDp>
__device__ __forceinline__ void load_swizzled(unsigned char* dst, const bf16* src, int rows) {
  constexpr int chunks = kDp / 8;
  for (int i = threadIdx.x; i < rows * chunks; i += kFwdThreads) {
    const int r = i / chunks, c = i % chunks;
    cp_async16(dst + (c / 8) * rows * 128 + sw128_offset(r, c % 8), src + static_cast<int64_t>(r) * kDp + 8 * c, true);
  }
}

// Issues acc (this warpgroup's 64 rows x 64 keys) += rows . keys^T over kCols columns: the warpgroup's
// rows of a [kFwdQ]-row tile and a [kFwdK]-key tile, both stored as kCols / 64 column blocks of 128-byte
// swizzled rows (load_swizzled). The caller fences, commits and waits.
template <int kCols>
__device__ __forceinline__ void rows_times_keys(float (&acc)[32], const unsigned char* rows_tile,
                                                const unsigned char* keys_tile, int wg) {
#pragma unroll
  for (int kb = 0; kb < kCols / 64; ++kb) {
    const uint64_t da = wgmma_desc_sw128(rows_tile + kb * kFwdQ * 128 + wg * 64 * 128);
    const uint64_t db = wgmma_desc_sw128(keys_tile + kb * kFwdK * 128);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) wgmma_m64n64k16(acc, da + 2 * ks, db + 2 * ks);
  }
}

// The 64 x 64 accumulators as bf16 register A operands of the next product: blocks 2ks, 2ks + 1 (keys
// 16ks .. 16ks + 15) are the A fragment of k-step ks.
__device__ __forceinline__ void to_a_fragments(const float (&acc)[32], uint32_t (&a)[4][4]) {
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    a[ks][0] = pack(acc[8 * ks + 0], acc[8 * ks + 1]);
    a[ks][1] = pack(acc[8 * ks + 2], acc[8 * ks + 3]);
    a[ks][2] = pack(acc[8 * ks + 4], acc[8 * ks + 5]);
    a[ks][3] = pack(acc[8 * ks + 6], acc[8 * ks + 7]);
  }
}

// Start of key tile `it` of a double-buffered wgmma loop: wait for this thread's copies, make them
// visible to the tensor cores, meet the block (tile it landed for all, every warpgroup done with tile
// it - 1), then start loading tile it + 1 into the other buffer.
template <typename Load>
__device__ __forceinline__ void next_key_tile(int it, int tiles, const Load& load_keys) {
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();
  if (it + 1 < tiles) load_keys(it + 1);
  cp_async_commit();
}

// The block of a wgmma attention kernel: queries t0 .. t0 + 127 (the longest rows first) of head h;
// this thread's warpgroup, warp and fragment coordinates (g = lane / 4, t = lane % 4); the key offset
// of query 0 (S - T) and the number of 64-key tiles some row of the block sees.
struct QueryBlock {
  int64_t t0;
  int h, wg, warp, g, t;
  int64_t offset;
  int tiles;
};
__device__ __forceinline__ QueryBlock query_block(const Dims& d) {
  const int64_t t0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kFwdQ;
  const int lane = threadIdx.x % 32;
  const int64_t offset = d.S - d.T;
  const int64_t key_end = d.S < t0 + kFwdQ + offset ? d.S : t0 + kFwdQ + offset;
  return {t0,       static_cast<int>(blockIdx.y), static_cast<int>(threadIdx.x / 128),
          static_cast<int>((threadIdx.x / 32) % 4), lane / 4, lane % 4, offset,
          static_cast<int>((key_end + kFwdK - 1) / kFwdK)};
}

// Warp-specialized (the FlashAttention-3 structure): warpgroup 0 is the producer, one thread of which
// copies the block's Q tile once and then each 64-key tile (K: Dp / 64 boxes of [64][128 B], Vt: one
// box of [128 v dims][64 keys]) with the bulk tensor copy into a ring of slots ("full" barriers);
// warpgroups 1 and 2 are the consumers, 64 queries each, and release a slot ("empty", one arrival per
// consumer warp) once both products that read it are done. No block-wide barrier inside the loop, so
// the two consumers drift apart and one's softmax overlaps the other's products; within a consumer the
// scores of tile j are issued before P V of tile j - 1, so that its tensor-core work overlaps its own
// softmax too. Measured on an H100 (PERFORMANCE.md): 128-key tiles (two slots at Dp 192), a strict
// ping-pong of the consumers on named barriers and three consumer warpgroups were all slower than this.
// Registers: 168 a thread at 384 threads would spill in the consumers; the producer needs few.
constexpr int kFwdWsThreads = 384, kFwdProducerRegs = 24, kFwdConsumerRegs = 240;
constexpr int kFwdMaxStages = 4;
constexpr size_t kMaxSmem = 227 * 1024;

template <int kDp>
struct FwdSmem {
  static constexpr int kQBytes = kFwdQ * kDp * 2;     // kDp / 64 column blocks of [128][128 B]
  static constexpr int kKBytes = kFwdK * kDp * 2;     // kDp / 64 column blocks of [64][128 B]
  static constexpr int kVBytes = kFwdDv * kFwdK * 2;  // [128 v dims][64 keys]
  static constexpr int kStageBytes = kKBytes + kVBytes;
  static constexpr int kBarrierBytes = (2 * kFwdMaxStages + 1) * sizeof(uint64_t);
  static constexpr int kStages =
      std::min<int>(kFwdMaxStages, (kMaxSmem - 1024 - kBarrierBytes - kQBytes) / kStageBytes);
  static constexpr int kBarrierOffset = kQBytes + kStages * kStageBytes;  // full[], empty[], q_full
  static constexpr size_t kBytes = kBarrierOffset + kBarrierBytes + 1024;  // + alignment slack
  static_assert(kStages >= 2, "double buffering at least");
  static_assert(kQBytes % 1024 == 0 && kStageBytes % 1024 == 0 && kKBytes % 1024 == 0, "swizzle atoms stay aligned");
};

template <int kDp>
__global__ void __launch_bounds__(kFwdWsThreads, 1)
    fwd_kernel(const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap k_map,
               const __grid_constant__ CUtensorMap v_map, Dims d, int64_t Tp, int64_t Sp, float* out, float* lse) {
  using L = FwdSmem<kDp>;
  constexpr int kStages = L::kStages;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* Qs = align_to_swizzle_atom(smem_raw);
  unsigned char* ring = Qs + L::kQBytes;
  uint64_t* full = reinterpret_cast<uint64_t*>(Qs + L::kBarrierOffset);
  uint64_t* empty = full + kStages;
  uint64_t* q_full = empty + kStages;
  const int64_t t0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kFwdQ;  // the longest rows first
  const int h = static_cast<int>(blockIdx.y);
  const int64_t offset = d.S - d.T;  // key offset of query 0
  const int64_t block_key_end = d.S < t0 + kFwdQ + offset ? d.S : t0 + kFwdQ + offset;
  const int tiles = static_cast<int>((block_key_end + kFwdK - 1) / kFwdK);
  constexpr uint32_t kConsumerWarps = 8;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      tma::barrier_init(&full[s], 1);
      tma::barrier_init(&empty[s], kConsumerWarps);
    }
    tma::barrier_init(q_full, 1);
    tma::barrier_init_fence();
  }
  __syncthreads();
  const int wg = static_cast<int>(threadIdx.x / 128);
  if (wg == 0) {
    shrink_registers<kFwdProducerRegs>();
    if (threadIdx.x != 0) return;
    tma::arrive_expect_bytes(q_full, L::kQBytes);
    for (int cb = 0; cb < kDp / 64; ++cb)
      tma::load_2d(Qs + cb * kFwdQ * 128, &q_map, 64 * cb, static_cast<int>(h * Tp + t0), q_full);
    for (int j = 0; j < tiles; ++j) {
      const int s = j % kStages;
      if (j >= kStages) tma::wait(&empty[s], ((j / kStages) - 1) & 1);  // its previous tile is consumed
      unsigned char* st = ring + s * L::kStageBytes;
      tma::arrive_expect_bytes(&full[s], L::kStageBytes);
      for (int cb = 0; cb < kDp / 64; ++cb)
        tma::load_2d(st + cb * kFwdK * 128, &k_map, 64 * cb, static_cast<int>(h * Sp + j * kFwdK), &full[s]);
      tma::load_2d(st + L::kKBytes, &v_map, j * kFwdK, h * kFwdDv, &full[s]);
    }
    return;
  }
  grow_registers<kFwdConsumerRegs>();

  const int c = wg - 1, warp = static_cast<int>(threadIdx.x / 32) % 4, lane = static_cast<int>(threadIdx.x % 32);
  const int g = lane / 4, t = lane % 4;
  const int64_t wg_row = t0 + 64 * c, row0 = wg_row + 16 * warp + g, row1 = row0 + 8;
  // This warpgroup's key tiles end at its last row's diagonal; the block's last tile may lie past it.
  const int64_t wg_key_end = d.S < wg_row + 64 + offset ? d.S : wg_row + 64 + offset;
  const int n = static_cast<int>((wg_key_end + kFwdK - 1) / kFwdK);
  const float scale2 = d.scale * kLog2e;
  auto stage = [&](int j) { return ring + (j % kStages) * L::kStageBytes; };
  auto await_tile = [&](int j) { tma::wait(&full[j % kStages], (j / kStages) & 1); };
  // Once the products reading tile j are complete: one arrival per warp frees its slot.
  auto release = [&](int j) {
    if (lane == 0) tma::arrive(&empty[j % kStages]);
  };

  float o[64], s[32];
  uint32_t pa[4][4];  // P of the previous tile: the bf16 A fragments of P V, one per 16 keys
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // running max (log2 units) and sum
  // s = Q K_j^T (this warpgroup's 64 rows x 64 keys), issued; the caller commits.
  auto issue_scores = [&](int j) {
#pragma unroll
    for (int i = 0; i < 32; ++i) s[i] = 0.0f;
    wgmma_fence_operands(s);
    wgmma_fence();
    rows_times_keys<kDp>(s, Qs, stage(j), c);
  };
  // o += P V_j, issued; the caller commits.
  auto issue_pv = [&](int j) {
    wgmma_fence_operands(o);
    wgmma_fence();
    const uint64_t dv = wgmma_desc_sw128(stage(j) + L::kKBytes);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) wgmma_m64n128k16_rs(o, pa[ks], dv + 2 * ks);
  };
  // The online softmax of tile j's scores in s (probabilities in place), the new running max and sum;
  // a0 / a1: the factor the output so far must be scaled by. The per-element work is what bounds this
  // loop next to the tensor cores: masking only on tiles that cross the diagonal (or S), the max taken
  // on raw scores (scale > 0), the scale folded into one fma per probability, ex2 flushing to zero.
  auto softmax = [&](int j, float& a0, float& a1) {
    const int64_t k0 = static_cast<int64_t>(j) * kFwdK;
    if (k0 + kFwdK > d.S || k0 + kFwdK - 1 > wg_row + 16 * warp + offset) {
      // Column col of the tile is key k0 + col: visible to a row while col <= row + offset - k0 and col < S - k0.
      const int64_t limit_s = d.S - k0, limit0 = row0 + offset - k0, limit1 = limit0 + 8;
#pragma unroll
      for (int jj = 0; jj < 8; ++jj)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = 8 * jj + 2 * t + (e & 1);
          if (col >= limit_s || col > (e < 2 ? limit0 : limit1)) s[4 * jj + e] = -INFINITY;
        }
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      if (i & 2) mx1 = fmaxf(mx1, s[i]);
      else mx0 = fmaxf(mx0, s[i]);
    }
    const float n0 = fmaxf(m0, quad_max(mx0) * scale2), n1 = fmaxf(m1, quad_max(mx1) * scale2);
    // A row with no visible key yet keeps max -inf: its probabilities are 0, not exp(nan).
    const float b0 = n0 == -INFINITY ? 0.0f : n0, b1 = n1 == -INFINITY ? 0.0f : n1;
    a0 = fast_exp2(m0 - b0);
    a1 = fast_exp2(m1 - b1);
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const float pr = fast_exp2(fmaf(s[i], scale2, (i & 2) ? -b1 : -b0));
      s[i] = pr;
      if (i & 2) sum1 += pr;
      else sum0 += pr;
    }
    l0 = l0 * a0 + quad_sum(sum0);
    l1 = l1 * a1 + quad_sum(sum1);
    m0 = n0;
    m1 = n1;
  };
  tma::wait(q_full, 0);
  float a0, a1;
  await_tile(0);
  issue_scores(0);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operands(s);
  softmax(0, a0, a1);  // o is still zero: nothing to rescale
  to_a_fragments(s, pa);
  for (int j = 1; j < n; ++j) {
    await_tile(j);
    issue_scores(j);
    wgmma_commit();
    issue_pv(j - 1);
    wgmma_commit();
    wgmma_wait<1>();  // the scores are in; P V of the previous tile may still run
    wgmma_fence_operands(s);
    softmax(j, a0, a1);
    wgmma_wait<0>();
    wgmma_fence_operands(o);
    release(j - 1);
#pragma unroll
    for (int i = 0; i < 64; ++i) o[i] *= (i & 2) ? a1 : a0;
    to_a_fragments(s, pa);
  }
  issue_pv(n - 1);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operands(o);
  release(n - 1);
  // Tiles past this warpgroup's diagonal: released once landed, so that each arrival counts toward the
  // fill it belongs to.
  for (int j = n; j < tiles; ++j) {
    await_tile(j);
    release(j);
  }

  const float f0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, f1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  const int64_t os = static_cast<int64_t>(d.H) * d.Dv;
#pragma unroll
  for (int j = 0; j < kFwdDv / 8; ++j) {
    const int col = 8 * j + 2 * t;
    if (col >= d.Dv) break;
    if (row0 < d.T) *reinterpret_cast<float2*>(out + row0 * os + h * d.Dv + col) = make_float2(o[4 * j] * f0, o[4 * j + 1] * f0);
    if (row1 < d.T)
      *reinterpret_cast<float2*>(out + row1 * os + h * d.Dv + col) = make_float2(o[4 * j + 2] * f1, o[4 * j + 3] * f1);
  }
  if (lse && t == 0) {  // natural-log units, as the backward kernels read them
    if (row0 < d.T) lse[row0 * d.H + h] = (m0 + log2f(l0)) * kLn2;
    if (row1 < d.T) lse[row1 * d.H + h] = (m1 + log2f(l1)) * kLn2;
  }
}

// ---- dq on warpgroup MMA: block = 128 queries (64 per warpgroup) x one head ----
// Operands packed head-major as for the forward: Qp [H][Tp][Dp], dOp [H][Tp][128] (v dims padded), Kp
// [H][Sp][Dp], Vp [H][Sp][128] and K transposed, Kt [H][Dp][Sp]. Per 64-key tile and warpgroup: S = Q K^T
// and dP = dO V^T from shared memory in one wgmma batch; dS = P (dP - D) scale on the accumulators
// (P = exp(S scale - lse)); dS, rounded to bf16, stays in registers as the A operand of dQ (64 x Dp) +=
// dS K, whose B is the Kt tile (keys contiguous), in Dp / 64 products of 64 columns.
template <int kDp>
struct DqSmem {
  static constexpr int kQBytes = kFwdQ * kDp * 2;      // kDp / 64 column blocks of [128][128 B]
  static constexpr int kGBytes = kFwdQ * kFwdDv * 2;   // 2 column blocks of [128][128 B]
  static constexpr int kKBytes = kFwdK * kDp * 2;      // kDp / 64 column blocks of [64][128 B]
  static constexpr int kVBytes = kFwdK * kFwdDv * 2;   // 2 column blocks of [64][128 B]
  static constexpr int kKtBytes = kDp * kFwdK * 2;     // [kDp][64 keys]
  static constexpr int kStageBytes = kKBytes + kVBytes + kKtBytes;
  static constexpr size_t kBytes = kQBytes + kGBytes + 2 * kStageBytes + 1024;  // + alignment slack
};

template <int kDp>
__global__ void __launch_bounds__(kFwdThreads, 1)
    bwd_q_wgmma_kernel(const bf16* qp, const bf16* gp, const bf16* kp, const bf16* vp, const bf16* ktp,
                       const float* lse, const float* Dsum, Dims d, int64_t Tp, int64_t Sp, float* dq_out) {
  using L = DqSmem<kDp>;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* Qs = align_to_swizzle_atom(smem_raw);
  unsigned char* Gs = Qs + L::kQBytes;
  unsigned char* stages = Gs + L::kGBytes;
  const auto [t0, h, wg, warp, g, t, offset, tiles] = query_block(d);
  const bf16* kh = kp + h * Sp * kDp;
  const bf16* vh = vp + h * Sp * kFwdDv;
  const bf16* kth = ktp + static_cast<int64_t>(h) * kDp * Sp;
  auto load_keys = [&](int tile) {
    unsigned char* st = stages + (tile & 1) * L::kStageBytes;
    const int64_t k0 = static_cast<int64_t>(tile) * kFwdK;
    load_swizzled<kDp>(st, kh + k0 * kDp, kFwdK);
    load_swizzled<kFwdDv>(st + L::kKBytes, vh + k0 * kFwdDv, kFwdK);
    for (int i = threadIdx.x; i < kDp * (kFwdK / 8); i += kFwdThreads) {
      const int r = i / (kFwdK / 8), c = i % (kFwdK / 8);
      cp_async16(st + L::kKBytes + L::kVBytes + sw128_offset(r, c), kth + r * Sp + k0 + 8 * c, true);
    }
  };
  load_swizzled<kDp>(Qs, qp + (h * Tp + t0) * kDp, kFwdQ);
  load_swizzled<kFwdDv>(Gs, gp + (h * Tp + t0) * kFwdDv, kFwdQ);
  load_keys(0);
  cp_async_commit();

  const int64_t wg_row = t0 + 64 * wg, row0 = wg_row + 16 * warp + g, row1 = row0 + 8;
  const float L0 = row0 < d.T ? lse[row0 * d.H + h] * kLog2e : 0.0f;
  const float L1 = row1 < d.T ? lse[row1 * d.H + h] * kLog2e : 0.0f;
  const float D0 = row0 < d.T ? Dsum[row0 * d.H + h] : 0.0f, D1 = row1 < d.T ? Dsum[row1 * d.H + h] : 0.0f;
  constexpr int kChunks = kDp / 64;
  float dq[kChunks][32], s[32], dp[32];
#pragma unroll
  for (int c = 0; c < kChunks; ++c)
#pragma unroll
    for (int i = 0; i < 32; ++i) dq[c][i] = 0.0f;
  const float scale2 = d.scale * kLog2e;
  for (int it = 0; it < tiles; ++it) {
    next_key_tile(it, tiles, load_keys);
    const int64_t k0 = static_cast<int64_t>(it) * kFwdK;
    if (k0 > wg_row + 63 + offset) continue;  // every key of the tile is past this warpgroup's diagonal
    const unsigned char* st = stages + (it & 1) * L::kStageBytes;
#pragma unroll
    for (int i = 0; i < 32; ++i) s[i] = dp[i] = 0.0f;
    wgmma_fence_operands(s);
    wgmma_fence_operands(dp);
    wgmma_fence();
    rows_times_keys<kDp>(s, Qs, st, wg);                  // S = Q K^T
    rows_times_keys<kFwdDv>(dp, Gs, st + L::kKBytes, wg);  // dP = dO V^T
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operands(s);
    wgmma_fence_operands(dp);
    const bool masked = k0 + kFwdK > d.S || k0 + kFwdK - 1 > wg_row + 16 * warp + offset;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = k0 + 8 * j + 2 * t + (e & 1), row = e < 2 ? row0 : row1;
        const bool visible = row < d.T && (!masked || (key < d.S && key <= row + offset));
        const float prob = visible ? exp2f(s[4 * j + e] * scale2 - (e < 2 ? L0 : L1)) : 0.0f;
        s[4 * j + e] = prob * (dp[4 * j + e] - (e < 2 ? D0 : D1)) * d.scale;  // dS
      }
    uint32_t da[4][4];
    to_a_fragments(s, da);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) wgmma_fence_operands(dq[c]);
    wgmma_fence();
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const uint64_t dkt_b = wgmma_desc_sw128(st + L::kKBytes + L::kVBytes + c * 64 * 128);
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) wgmma_m64n64k16_rs(dq[c], da[ks], dkt_b + 2 * ks);
    }
    wgmma_commit();
    wgmma_wait<0>();
#pragma unroll
    for (int c = 0; c < kChunks; ++c) wgmma_fence_operands(dq[c]);
  }
  const int64_t qs = static_cast<int64_t>(d.H) * d.Dqk;
#pragma unroll
  for (int c = 0; c < kChunks; ++c)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int col = 64 * c + 8 * j + 2 * t;
      if (col >= d.Dqk) continue;
      if (row0 < d.T) *reinterpret_cast<float2*>(dq_out + row0 * qs + h * d.Dqk + col) = make_float2(dq[c][4 * j], dq[c][4 * j + 1]);
      if (row1 < d.T)
        *reinterpret_cast<float2*>(dq_out + row1 * qs + h * d.Dqk + col) = make_float2(dq[c][4 * j + 2], dq[c][4 * j + 3]);
    }
}

// The fp32 rows a packing reads: value (r, h, c) of a [rows, H, D] view is src[r * stride + h * head_stride
// + c] for c < D - tail_dims, and tail[r * tail_stride + c - (D - tail_dims)] (one tail per row, shared by
// all heads: MLA's roped key) after.
struct HeadRows {
  const float* src;
  int64_t stride, head_stride;
  const float* tail = nullptr;
  int64_t tail_stride = 0;
  int tail_dims = 0;
  __device__ __forceinline__ float at(int64_t r, int h, int c, int D) const {
    const int own = D - tail_dims;
    return c < own ? src[r * stride + h * head_stride + c] : tail[r * tail_stride + (c - own)];
  }
};
// Dense rows of H heads of D values, `stride` apart.
HeadRows dense_rows(const float* src, int64_t stride, int64_t D) { return {src, stride, D}; }

// dst[h][r][c] = bf16(src(r, h, c)) for r < rows, c < D; zero up to [H][rows_pad][width_pad].
__global__ void pack_heads_kernel(HeadRows src, int64_t rows, int D, int H, int64_t rows_pad, int width_pad, bf16* dst) {
  const int chunks = width_pad / 8;
  const int64_t n = static_cast<int64_t>(H) * rows_pad * chunks;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c8 = static_cast<int>(i % chunks);
    const int64_t r = (i / chunks) % rows_pad;
    const int h = static_cast<int>(i / (chunks * rows_pad));
    __align__(16) bf16 v[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int c = 8 * c8 + u;
      v[u] = __float2bfloat16_rn(r < rows && c < D ? src.at(r, h, c, D) : 0.0f);
    }
    *reinterpret_cast<uint4*>(dst + i * 8) = *reinterpret_cast<const uint4*>(v);
  }
}

// dst[h][c][r] = bf16(src(r, h, c)) for r < rows, c < D; zero up to [H][width_pad][rows_pad] (both pads
// multiples of 32). Through a 32 x 32 shared tile, so that reads and writes are coalesced.
__global__ void pack_heads_transposed_kernel(HeadRows src, int64_t rows, int D, int64_t rows_pad, int width_pad,
                                             bf16* dst) {
  __shared__ float tile[32][33];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * 32;
  const int c0 = static_cast<int>(blockIdx.y) * 32, h = static_cast<int>(blockIdx.z);
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;  // 32 x 8 threads
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = r0 + ty + 8 * i;
    const int c = c0 + tx;
    tile[ty + 8 * i][tx] = r < rows && c < D ? src.at(r, h, c, D) : 0.0f;
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int c = c0 + ty + 8 * i;
    dst[(static_cast<int64_t>(h) * width_pad + c) * rows_pad + r0 + tx] = __float2bfloat16_rn(tile[tx][ty + 8 * i]);
  }
}

// ---- dk, dv: block = 64 keys (16 per warp) x one head; query tiles of 32, double-buffered ----
// Per warp, transposed products: S^T = K_w Q^T, dP^T = V_w dO^T, then dV_w += P^T dO, dK_w += dS^T Q.
constexpr int kKvK = 16 * kWarps, kKvQ = 32;  // 86 KB at 192 / 128

// The per-query statistics come head-major (lse_h, D_h: [H][Tp], Tp a multiple of kKvQ, zero past T) and
// ride along with each query tile into shared memory: read per element from global memory inside the
// loop, their latency stalled every tile.
__global__ void __launch_bounds__(kThreads, 2)
    bwd_kv_kernel(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse_h, const float* D_h,
                  int64_t Tp, Dims d, float* dk_out, float* dv_out) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int ldq = d.Dqk + kPad, ldv = d.Dv + kPad;
  bf16* Ks = reinterpret_cast<bf16*>(smem);  // [64][ldq]
  bf16* Vs = Ks + kKvK * ldq;                // [64][ldv]
  bf16* Qs = Vs + kKvK * ldv;                // [2][32][ldq]
  bf16* dOs = Qs + 2 * kKvQ * ldq;           // [2][32][ldv]
  float* Ls = reinterpret_cast<float*>(dOs + 2 * kKvQ * ldv);  // [2][32] logsumexp of the tile's queries
  float* Ds = Ls + 2 * kKvQ;                                   // [2][32] dout . out
  const int64_t s0 = static_cast<int64_t>(blockIdx.x) * kKvK;  // the first key blocks see the most queries
  const int h = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t qs = static_cast<int64_t>(d.H) * d.Dqk, vs = static_cast<int64_t>(d.H) * d.Dv, offset = d.S - d.T;
  const int keys = static_cast<int>(d.S - s0 < kKvK ? d.S - s0 : kKvK);
  const bf16 *qh = q + h * d.Dqk, *kh = k + h * d.Dqk, *vh = v + h * d.Dv, *gh = dout + h * d.Dv;
  int64_t first = s0 - offset > 0 ? s0 - offset : 0;  // the first query that sees key s0
  first -= first % kKvQ;
  const int tiles = static_cast<int>((d.T - first + kKvQ - 1) / kKvQ);
  auto load_queries = [&](int tile, int buf) {
    const int64_t q0 = first + static_cast<int64_t>(tile) * kKvQ;
    const int rows = static_cast<int>(d.T - q0 < kKvQ ? d.T - q0 : kKvQ);
    load_tile(Qs + buf * kKvQ * ldq, ldq, qh, q0, kKvQ, rows, qs, d.Dqk);
    load_tile(dOs + buf * kKvQ * ldv, ldv, gh, q0, kKvQ, rows, vs, d.Dv);
    if (threadIdx.x < kKvQ / 2) {  // 8 chunks of 4 lse values, then 8 of D
      const int c = threadIdx.x % (kKvQ / 4);
      const float* src = (threadIdx.x < kKvQ / 4 ? lse_h : D_h) + h * Tp + q0 + 4 * c;
      cp_async16((threadIdx.x < kKvQ / 4 ? Ls : Ds) + buf * kKvQ + 4 * c, src, true);
    }
  };
  load_tile(Ks, ldq, kh, s0, kKvK, keys, qs, d.Dqk);
  load_tile(Vs, ldv, vh, s0, kKvK, keys, vs, d.Dv);
  if (tiles > 0) load_queries(0, 0);
  cp_async_commit();

  float dk[kMaxDqk / 8][4], dv[kMaxDv / 8][4];
  zero(dk);
  zero(dv);
  const int64_t key0 = s0 + warp * 16 + g, key1 = key0 + 8;
  const bf16* Kw = Ks + warp * 16 * ldq;
  const bf16* Vw = Vs + warp * 16 * ldv;
  const float scale2 = d.scale * kLog2e;
  for (int it = 0; it < tiles; ++it) {
    const int buf = it & 1;
    await_tile(it, tiles, load_queries);
    const int64_t q0 = first + static_cast<int64_t>(it) * kKvQ;
    const bf16* Qb = Qs + buf * kKvQ * ldq;
    const bf16* dOb = dOs + buf * kKvQ * ldv;
    float sT[kKvQ / 8][4], dpT[kKvQ / 8][4];
    zero(sT);
    zero(dpT);
    rows_times_rows<kKvQ / 8>(sT, Kw, ldq, Qb, ldq, d.Dqk, lane);
    rows_times_rows<kKvQ / 8>(dpT, Vw, ldv, dOb, ldv, d.Dv, lane);
#pragma unroll
    for (int j = 0; j < kKvQ / 8; ++j)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int64_t qi = q0 + 8 * j + 2 * t + c;
        const bool in = qi < d.T;
        const float L = Ls[buf * kKvQ + 8 * j + 2 * t + c] * kLog2e, D = Ds[buf * kKvQ + 8 * j + 2 * t + c];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int e = 2 * r + c;
          const int64_t key = r == 0 ? key0 : key1;
          const bool visible = in && key < d.S && key <= qi + offset;
          const float prob = visible ? exp2f(sT[j][e] * scale2 - L) : 0.0f;
          sT[j][e] = prob;
          dpT[j][e] = prob * (dpT[j][e] - D) * d.scale;
        }
      }
    regs_times_rows<kKvQ / 8, kMaxDv / 8>(dv, sT, dOb, ldv, d.Dv, lane);
    regs_times_rows<kKvQ / 8, kMaxDqk / 8>(dk, dpT, Qb, ldq, d.Dqk, lane);
    __syncthreads();
  }
  store_rows(dk_out + h * d.Dqk, qs, key0, d.S, d.Dqk, dk, 1.0f, 1.0f, t);
  store_rows(dv_out + h * d.Dv, vs, key0, d.S, d.Dv, dv, 1.0f, 1.0f, t);
}

template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}
unsigned tiles_of(int64_t n, int tile) { return static_cast<unsigned>((n + tile - 1) / tile); }
// Blocks of 256 threads for a grid-stride loop over n items.
unsigned grid_for(int64_t n) { return static_cast<unsigned>((n + 255) / 256 < 65536 ? (n + 255) / 256 : 65536); }
size_t kv_smem(const Dims& d) {
  return sizeof(bf16) * static_cast<size_t>((kKvK + 2 * kKvQ) * (d.Dqk + kPad + d.Dv + kPad)) +
         sizeof(float) * 2 * 2 * kKvQ;
}
// lse_h[h][t] = lse[t][h], D_h[h][t] = Dsum[t][h] for t < T; zero for T <= t < Tp.
__global__ void head_major_stats_kernel(const float* lse, const float* Dsum, int64_t T, int H, int64_t Tp,
                                        float* lse_h, float* D_h) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < H * Tp;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t h = i / Tp, t = i % Tp;
    lse_h[i] = t < T ? lse[t * H + h] : 0.0f;
    D_h[i] = t < T ? Dsum[t * H + h] : 0.0f;
  }
}

// A bf16 copy (dense rows of `width`, a multiple of 8) of rows x width fp32 values with row stride `stride`.
cudaError_t bf16_rows(DeviceScratch& scratch, const float* src, int64_t stride, int64_t rows, int64_t width,
                      cudaStream_t stream, const bf16** out) {
  bf16* dst = scratch.get<bf16>(rows * width);
  *out = dst;
  if (!dst) return cudaErrorMemoryAllocation;
  // One "head" as wide as the row, no padding: the same conversion as the forward's packing.
  pack_heads_kernel<<<grid_for(rows * width / 8), 256, 0, stream>>>(dense_rows(src, stride, width), rows,
                                                                    static_cast<int>(width), 1, rows,
                                                                    static_cast<int>(width), dst);
  return cudaGetLastError();
}

template <int kDp>
cudaError_t forward_kernel(const bf16* q, const bf16* k, const bf16* vt, const Dims& d, int64_t Tp, int64_t Sp,
                           float* out, float* lse, cudaStream_t stream) {
  using L = FwdSmem<kDp>;
  CUtensorMap q_map, k_map, v_map;
  cudaError_t e = make_bf16_tile_map(&q_map, q, d.H * Tp, kDp, kDp, kFwdQ);
  if (e == cudaSuccess) e = make_bf16_tile_map(&k_map, k, d.H * Sp, kDp, kDp, kFwdK);
  if (e == cudaSuccess) e = make_bf16_tile_map(&v_map, vt, static_cast<int64_t>(d.H) * kFwdDv, Sp, Sp, kFwdDv);
  if (e == cudaSuccess) e = allow_smem(fwd_kernel<kDp>, L::kBytes);
  if (e != cudaSuccess) return e;
  fwd_kernel<kDp><<<dim3(tiles_of(d.T, kFwdQ), static_cast<unsigned>(d.H)), kFwdWsThreads, L::kBytes, stream>>>(
      q_map, k_map, v_map, d, Tp, Sp, out, lse);
  return cudaGetLastError();
}

// out (and lse when not null) of causal attention from fp32 q [T, H, Dqk] dense and the rows of k and
// v: packs bf16 head-major copies, then the wgmma kernel.
cudaError_t forward(const float* q, const HeadRows& k, const HeadRows& v, const Dims& d, float* out, float* lse,
                    cudaStream_t stream) {
  const int Dp = (d.Dqk + 63) / 64 * 64;
  const int64_t Tp = (d.T + kFwdQ - 1) / kFwdQ * kFwdQ, Sp = (d.S + kFwdK - 1) / kFwdK * kFwdK;
  DeviceScratch scratch;
  bf16* qp = scratch.get<bf16>(d.H * Tp * Dp);
  bf16* kp = scratch.get<bf16>(d.H * Sp * Dp);
  bf16* vt = scratch.get<bf16>(d.H * kFwdDv * Sp);
  if (scratch.failed()) return cudaErrorMemoryAllocation;
  pack_heads_kernel<<<grid_for(d.H * Tp * Dp / 8), 256, 0, stream>>>(
      dense_rows(q, static_cast<int64_t>(d.H) * d.Dqk, d.Dqk), d.T, d.Dqk, d.H, Tp, Dp, qp);
  pack_heads_kernel<<<grid_for(d.H * Sp * Dp / 8), 256, 0, stream>>>(k, d.S, d.Dqk, d.H, Sp, Dp, kp);
  pack_heads_transposed_kernel<<<dim3(static_cast<unsigned>(Sp / 32), kFwdDv / 32, static_cast<unsigned>(d.H)), 256, 0,
                                 stream>>>(v, d.S, d.Dv, Sp, kFwdDv, vt);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  switch (Dp) {
    case 64: return forward_kernel<64>(qp, kp, vt, d, Tp, Sp, out, lse, stream);
    case 128: return forward_kernel<128>(qp, kp, vt, d, Tp, Sp, out, lse, stream);
    case 192: return forward_kernel<192>(qp, kp, vt, d, Tp, Sp, out, lse, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <int kDp>
cudaError_t dq_kernel(const bf16* qp, const bf16* gp, const bf16* kp, const bf16* vp, const bf16* ktp, const float* lse,
                      const float* Dsum, const Dims& d, int64_t Tp, int64_t Sp, float* dq, cudaStream_t stream) {
  const cudaError_t e = allow_smem(bwd_q_wgmma_kernel<kDp>, DqSmem<kDp>::kBytes);
  if (e != cudaSuccess) return e;
  bwd_q_wgmma_kernel<kDp><<<dim3(tiles_of(d.T, kFwdQ), static_cast<unsigned>(d.H)), kFwdThreads, DqSmem<kDp>::kBytes,
                            stream>>>(qp, gp, kp, vp, ktp, lse, Dsum, d, Tp, Sp, dq);
  return cudaGetLastError();
}

// dq from the statistics (lse, D = dout . out; [T, H]): packs head-major bf16 copies of q, dout, k, v and
// k transposed, then the wgmma kernel.
cudaError_t dq_wgmma(const AttentionBackwardParams& p, const Dims& d, const float* lse, const float* Dsum,
                     cudaStream_t stream) {
  const int Dp = (d.Dqk + 63) / 64 * 64;
  const int64_t Tp = (d.T + kFwdQ - 1) / kFwdQ * kFwdQ, Sp = (d.S + kFwdK - 1) / kFwdK * kFwdK;
  const int64_t qw = p.H * p.Dqk, vw = p.H * p.Dv;
  DeviceScratch scratch;
  bf16* qp = scratch.get<bf16>(d.H * Tp * Dp);
  bf16* gp = scratch.get<bf16>(d.H * Tp * kFwdDv);
  bf16* kp = scratch.get<bf16>(d.H * Sp * Dp);
  bf16* vp = scratch.get<bf16>(d.H * Sp * kFwdDv);
  bf16* ktp = scratch.get<bf16>(d.H * Dp * Sp);
  if (scratch.failed()) return cudaErrorMemoryAllocation;
  const HeadRows q_rows = dense_rows(p.q, qw, d.Dqk), k_rows = dense_rows(p.k, qw, d.Dqk);
  pack_heads_kernel<<<grid_for(d.H * Tp * Dp / 8), 256, 0, stream>>>(q_rows, d.T, d.Dqk, d.H, Tp, Dp, qp);
  pack_heads_kernel<<<grid_for(d.H * Tp * kFwdDv / 8), 256, 0, stream>>>(dense_rows(p.dout, vw, d.Dv), d.T, d.Dv, d.H,
                                                                         Tp, kFwdDv, gp);
  pack_heads_kernel<<<grid_for(d.H * Sp * Dp / 8), 256, 0, stream>>>(k_rows, d.S, d.Dqk, d.H, Sp, Dp, kp);
  pack_heads_kernel<<<grid_for(d.H * Sp * kFwdDv / 8), 256, 0, stream>>>(dense_rows(p.v, vw, d.Dv), d.S, d.Dv, d.H, Sp,
                                                                         kFwdDv, vp);
  pack_heads_transposed_kernel<<<dim3(static_cast<unsigned>(Sp / 32), static_cast<unsigned>(Dp / 32),
                                      static_cast<unsigned>(d.H)), 256, 0, stream>>>(k_rows, d.S, d.Dqk, Sp, Dp, ktp);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  switch (Dp) {
    case 64: return dq_kernel<64>(qp, gp, kp, vp, ktp, lse, Dsum, d, Tp, Sp, p.dq, stream);
    case 128: return dq_kernel<128>(qp, gp, kp, vp, ktp, lse, Dsum, d, Tp, Sp, p.dq, stream);
    case 192: return dq_kernel<192>(qp, gp, kp, vp, ktp, lse, Dsum, d, Tp, Sp, p.dq, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool flash_attention_bf16_supported(int64_t H, int64_t Hkv, int64_t Dqk, int64_t Dv, int64_t T, int64_t S) {
  return (Hkv == 0 || Hkv == H) && Dqk % 16 == 0 && Dv % 16 == 0 && Dqk > 0 && Dv > 0 && Dqk <= kMaxDqk &&
         Dv <= kMaxDv && T > 0 && T <= S && H > 0 && H <= 65535;
}

cudaError_t flash_attention_bf16(const AttentionParams& p, cudaStream_t stream) {
  if (!flash_attention_bf16_supported(p.H, p.Hkv, p.Dqk, p.Dv, p.T, p.S)) return cudaErrorInvalidValue;
  const Dims d{p.T, p.S, static_cast<int>(p.H), static_cast<int>(p.Dqk), static_cast<int>(p.Dv), p.scale};
  // Head strides and a shared key tail as ops::AttentionParams defines them.
  const int64_t tail = p.k_shared ? p.k_shared_dims : 0;
  const int64_t kh = p.k_head_stride ? p.k_head_stride : p.Dqk - tail, vh = p.v_head_stride ? p.v_head_stride : p.Dv;
  const HeadRows k{p.k, p.k_stride ? p.k_stride : p.H * kh, kh, p.k_shared, p.k_shared_stride, static_cast<int>(tail)};
  const HeadRows v = dense_rows(p.v, p.v_stride ? p.v_stride : p.H * vh, vh);
  return forward(p.q, k, v, d, p.out, p.lse, stream);
}

cudaError_t flash_attention_bf16_backward(const AttentionBackwardParams& p, cudaStream_t stream) {
  if (!flash_attention_bf16_supported(p.H, p.H, p.Dqk, p.Dv, p.T, p.S)) return cudaErrorInvalidValue;
  const Dims d{p.T, p.S, static_cast<int>(p.H), static_cast<int>(p.Dqk), static_cast<int>(p.Dv), p.scale};
  const int64_t qw = p.H * p.Dqk, vw = p.H * p.Dv, rows = p.T * p.H;
  DeviceScratch scratch;
  const bf16 *q, *k, *v, *g;
  cudaError_t e = bf16_rows(scratch, p.q, qw, p.T, qw, stream, &q);
  if (e == cudaSuccess) e = bf16_rows(scratch, p.k, qw, p.S, qw, stream, &k);
  if (e == cudaSuccess) e = bf16_rows(scratch, p.v, vw, p.S, vw, stream, &v);
  if (e == cudaSuccess) e = bf16_rows(scratch, p.dout, vw, p.T, vw, stream, &g);
  // Statistics: the forward's out and logsumexp (given, or the forward again), then D = dout . out per
  // (query, head).
  const bool given = p.out && p.lse;
  float* own_out = given ? nullptr : scratch.get<float>(rows * p.Dv);
  float* own_lse = given ? nullptr : scratch.get<float>(rows);
  const float* out = given ? p.out : own_out;
  const float* lse = given ? p.lse : own_lse;
  float* Dsum = scratch.get<float>(rows);
  const int64_t Tp = (p.T + kKvQ - 1) / kKvQ * kKvQ;
  float* lse_h = scratch.get<float>(2 * p.H * Tp);  // then D_h
  float* D_h = lse_h + p.H * Tp;
  if (e == cudaSuccess && scratch.failed()) e = cudaErrorMemoryAllocation;
  if (e == cudaSuccess && !given)
    e = forward(p.q, dense_rows(p.k, qw, p.Dqk), dense_rows(p.v, vw, p.Dv), d, own_out, own_lse, stream);
  if (e == cudaSuccess) e = attention_row_dots(p.dout, out, Dsum, rows, p.Dv, stream);
  if (e == cudaSuccess) {
    head_major_stats_kernel<<<grid_for(p.H * Tp), 256, 0, stream>>>(lse, Dsum, p.T, d.H, Tp, lse_h, D_h);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) e = allow_smem(bwd_kv_kernel, kv_smem(d));
  if (e == cudaSuccess) {
    bwd_kv_kernel<<<dim3(tiles_of(p.S, kKvK), static_cast<unsigned>(p.H)), kThreads, kv_smem(d), stream>>>(
        q, k, v, g, lse_h, D_h, Tp, d, p.dk, p.dv);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) e = dq_wgmma(p, d, lse, Dsum, stream);
  return e;
}

}  // namespace dsv::ops::cuda
