// Causal attention forward and backward on bf16 tensor cores (ops::MatmulPrecision::Bf16: the
// autocast-style mode, fp32 storage, products on bf16-rounded inputs with fp32 accumulation).
// All three kernels run on Hopper warpgroup MMA (wgmma) over head-major bf16 copies of q, k, v, dout
// (and k transposed for dq): the forward, 128 queries per block, warp-specialized with its tiles fed
// by the bulk tensor copy (TMA); dq, 128 queries per block; dk / dv, 128 keys per block, reading the
// same q and dout tiles K-major for the scores and MN-major for the gradients. The probabilities P and
// dS are rounded to bf16 as the register A operand of the second product of each pair (P V, P^T dO,
// dS^T Q, dS K); the softmax, its statistics and every accumulator are fp32.
//
// Semantics are those of the reference (attention.cu): query t of T sees keys 0 .. S - T + t;
// q [T, H, Dqk] dense, k / v rows of H * D floats (or k_stride / v_stride), out [T, H, Dv] dense.
// Backward as flash_attention.cu: out and logsumexp from the forward (or the forward again), D = dout .
// out, then dk / dv per 128-key block over the query tiles that see it and dq per 128-query block (no
// atomics: deterministic).
//
// Accumulator fragments (g = lane / 4, t = lane % 4, per warp of a warpgroup: rows 16 warp + g and + 8)
// hold columns 8j + 2t, 8j + 2t + 1; two adjacent 8-column groups of them are exactly the A fragment of
// a k16 step (PTX m16n8k16 A layout), which is how P and dS feed the next product from registers.
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

constexpr int kMaxDqk = 192, kMaxDv = 128;  // packed widths the wgmma kernels take (Dp <= 192, v dims <= 128)
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

using namespace ptx;
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
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

// ---- dk, dv on warpgroup MMA: block = 128 keys (64 per warpgroup) x one head ----
// The transposed problem of dq, over the same head-major packs (Kp, Vp with Sp a multiple of 128). Per
// 64-query tile: S^T = K Q^T and dP^T = V dO^T from shared memory in one wgmma batch (rows_times_keys:
// the 128-key block plays the query block, the query tile the key tile); P^T = exp(S^T scale - lse) and
// dS^T = P^T (dP^T - D) scale on the accumulators, rounded to bf16 and kept in registers as the A
// operands of dV (64 x 128) += P^T dO and dK (64 x Dp) += dS^T Q, whose B operands are the same Q and dO
// tiles read MN-major (the head dims contiguous), so no transposed copy is made. The per-query
// statistics (head-major lse_h, D_h) ride along with each query tile. Registers: dK and dV take
// (Dp + 128) / 2 a thread, and ptxas spills ~150 bytes at Dp 192; two sub-tiles of 32 queries (n32
// score products, no spills) measured slower on an H100 (7.7 against 5.6 ms per bench-16b-l4 step).
constexpr int kKvBlock = kFwdQ, kKvTile = kFwdK;  // the tile shapes rows_times_keys reads
template <int kDp>
struct KvSmem {
  static constexpr int kKBytes = kKvBlock * kDp * 2;     // kDp / 64 column blocks of [128][128 B]
  static constexpr int kVBytes = kKvBlock * kFwdDv * 2;  // 2 column blocks of [128][128 B]
  static constexpr int kQBytes = kKvTile * kDp * 2;      // kDp / 64 column blocks of [64][128 B]
  static constexpr int kGBytes = kKvTile * kFwdDv * 2;   // 2 column blocks of [64][128 B]
  static constexpr int kStageBytes = kQBytes + kGBytes + 1024;  // + lse and D of the 64 queries
  static constexpr size_t kBytes = kKBytes + kVBytes + 2 * kStageBytes + 1024;  // + alignment slack
};

template <int kDp>
__global__ void __launch_bounds__(kFwdThreads, 1)
    bwd_kv_wgmma_kernel(const bf16* qp, const bf16* gp, const bf16* kp, const bf16* vp, const float* lse_h,
                        const float* D_h, Dims d, int64_t Tp, int64_t Sp, float* dk_out, float* dv_out) {
  using L = KvSmem<kDp>;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* Ks = align_to_swizzle_atom(smem_raw);
  unsigned char* Vs = Ks + L::kKBytes;
  unsigned char* stages = Vs + L::kVBytes;
  const int64_t s0 = static_cast<int64_t>(blockIdx.x) * kKvBlock;  // the first key blocks see the most queries
  const int h = blockIdx.y, wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t offset = d.S - d.T;
  int64_t first = s0 - offset > 0 ? s0 - offset : 0;  // the first query that sees key s0
  first -= first % kKvTile;
  const int tiles = first < d.T ? static_cast<int>((d.T - first + kKvTile - 1) / kKvTile) : 0;
  const bf16* qh = qp + h * Tp * kDp;
  const bf16* gh = gp + h * Tp * kFwdDv;
  auto load_queries = [&](int tile) {
    unsigned char* st = stages + (tile & 1) * L::kStageBytes;
    const int64_t q0 = first + static_cast<int64_t>(tile) * kKvTile;
    load_swizzled<kDp>(st, qh + q0 * kDp, kKvTile);
    load_swizzled<kFwdDv>(st + L::kQBytes, gh + q0 * kFwdDv, kKvTile);
    if (threadIdx.x < kKvTile / 2) {  // 16 chunks of 4 lse values, then 16 of D
      const bool is_lse = threadIdx.x < kKvTile / 4;
      const int c = threadIdx.x % (kKvTile / 4);
      float* stats = reinterpret_cast<float*>(st + L::kQBytes + L::kGBytes);
      cp_async16(stats + (is_lse ? 0 : kKvTile) + 4 * c, (is_lse ? lse_h : D_h) + h * Tp + q0 + 4 * c, true);
    }
  };
  load_swizzled<kDp>(Ks, kp + (h * Sp + s0) * kDp, kKvBlock);
  load_swizzled<kFwdDv>(Vs, vp + (h * Sp + s0) * kFwdDv, kKvBlock);
  if (tiles > 0) load_queries(0);
  cp_async_commit();

  constexpr int kChunks = kDp / 64;
  float dk[kChunks][32], dv[2][32];
#pragma unroll
  for (int i = 0; i < 32; ++i) {
#pragma unroll
    for (int c = 0; c < kChunks; ++c) dk[c][i] = 0.0f;
    dv[0][i] = dv[1][i] = 0.0f;
  }
  const int64_t key_wg = s0 + 64 * wg, key0 = key_wg + 16 * warp + g, key1 = key0 + 8;
  // Masks in 32-bit offsets from the warpgroup's first key and the tile's first query.
  const int key_row = 16 * warp + g;
  const int k_valid = static_cast<int>(d.S - key_wg < 64 ? d.S - key_wg : 64);
  const float scale2 = d.scale * kLog2e;
  for (int it = 0; it < tiles; ++it) {
    next_key_tile(it, tiles, load_queries);  // the query tile it landed; tile it + 1 on its way
    const int64_t q0 = first + static_cast<int64_t>(it) * kKvTile;
    const unsigned char* Qt = stages + (it & 1) * L::kStageBytes;
    const unsigned char* Gt = Qt + L::kQBytes;
    const float* Ls = reinterpret_cast<const float*>(Gt + L::kGBytes);
    const float* Ds = Ls + kKvTile;
    const int q_valid = static_cast<int>(d.T - q0 < kKvTile ? d.T - q0 : kKvTile);
    // key_wg + key <= q0 + col + offset  <=>  key - col <= diag (clamped: |key - col| < 64)
    const int64_t diag_wide = q0 + offset - key_wg;
    const int diag = static_cast<int>(diag_wide > 64 ? 64 : diag_wide < -128 ? -128 : diag_wide);
    if (q0 + kKvTile - 1 + offset < key_wg) continue;  // no query of the tile sees this warpgroup's keys
    float sT[32], dpT[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) sT[i] = dpT[i] = 0.0f;
    wgmma_fence_operands(sT);
    wgmma_fence_operands(dpT);
    wgmma_fence();
    rows_times_keys<kDp>(sT, Ks, Qt, wg);      // S^T = K Q^T
    rows_times_keys<kFwdDv>(dpT, Vs, Gt, wg);  // dP^T = V dO^T
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operands(sT);
    wgmma_fence_operands(dpT);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * t + (e & 1);
        const int key = e < 2 ? key_row : key_row + 8;  // within the warpgroup's 64
        const bool visible = col < q_valid && key < k_valid && key - col <= diag;
        const float prob = visible ? exp2f(sT[4 * j + e] * scale2 - Ls[col]) : 0.0f;
        sT[4 * j + e] = prob;
        dpT[4 * j + e] = prob * (dpT[4 * j + e] - Ds[col]) * d.scale;
      }
    uint32_t pa[4][4], sa[4][4];  // A fragments of k-step ks: queries 16 ks .. 16 ks + 15
    to_a_fragments(sT, pa);
    to_a_fragments(dpT, sa);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) wgmma_fence_operands(dk[c]);
    wgmma_fence_operands(dv[0]);
    wgmma_fence_operands(dv[1]);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      const int row = 16 * ks;  // k rows of the MN-major B tiles
#pragma unroll
      for (int c = 0; c < kFwdDv / 64; ++c)
        wgmma_m64n64k16_rs<true>(dv[c], pa[ks], wgmma_desc_sw128_mn(Gt + c * kKvTile * 128 + row * 128));
#pragma unroll
      for (int c = 0; c < kChunks; ++c)
        wgmma_m64n64k16_rs<true>(dk[c], sa[ks], wgmma_desc_sw128_mn(Qt + c * kKvTile * 128 + row * 128));
    }
    wgmma_commit();
    wgmma_wait<0>();
#pragma unroll
    for (int c = 0; c < kChunks; ++c) wgmma_fence_operands(dk[c]);
    wgmma_fence_operands(dv[0]);
    wgmma_fence_operands(dv[1]);
  }
  const int64_t qs = static_cast<int64_t>(d.H) * d.Dqk, vs = static_cast<int64_t>(d.H) * d.Dv;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int col = 64 * c + 8 * j + 2 * t;
      if (col >= d.Dqk) continue;
      if (key0 < d.S) *reinterpret_cast<float2*>(dk_out + key0 * qs + h * d.Dqk + col) = make_float2(dk[c][4 * j], dk[c][4 * j + 1]);
      if (key1 < d.S)
        *reinterpret_cast<float2*>(dk_out + key1 * qs + h * d.Dqk + col) = make_float2(dk[c][4 * j + 2], dk[c][4 * j + 3]);
    }
#pragma unroll
    for (int c = 0; c < kFwdDv / 64; ++c) {
      const int col = 64 * c + 8 * j + 2 * t;
      if (col >= d.Dv) continue;
      if (key0 < d.S) *reinterpret_cast<float2*>(dv_out + key0 * vs + h * d.Dv + col) = make_float2(dv[c][4 * j], dv[c][4 * j + 1]);
      if (key1 < d.S)
        *reinterpret_cast<float2*>(dv_out + key1 * vs + h * d.Dv + col) = make_float2(dv[c][4 * j + 2], dv[c][4 * j + 3]);
    }
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

template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}
unsigned tiles_of(int64_t n, int tile) { return static_cast<unsigned>((n + tile - 1) / tile); }
// Blocks of 256 threads for a grid-stride loop over n items.
unsigned grid_for(int64_t n) { return static_cast<unsigned>((n + 255) / 256 < 65536 ? (n + 255) / 256 : 65536); }
// lse_h[h][t] = lse[t][h] log2(e) (base-2 units, as the dk / dv kernel uses it), D_h[h][t] = Dsum[t][h]
// for t < T; zero for T <= t < Tp.
__global__ void head_major_stats_kernel(const float* lse, const float* Dsum, int64_t T, int H, int64_t Tp,
                                        float* lse_h, float* D_h) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < H * Tp;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t h = i / Tp, t = i % Tp;
    lse_h[i] = t < T ? lse[t * H + h] * kLog2e : 0.0f;
    D_h[i] = t < T ? Dsum[t * H + h] : 0.0f;
  }
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

template <int kDp>
cudaError_t dkdv_kernel(const bf16* qp, const bf16* gp, const bf16* kp, const bf16* vp, const float* lse_h,
                        const float* D_h, const Dims& d, int64_t Tp, int64_t Sp, float* dk, float* dv,
                        cudaStream_t stream) {
  const cudaError_t e = allow_smem(bwd_kv_wgmma_kernel<kDp>, KvSmem<kDp>::kBytes);
  if (e != cudaSuccess) return e;
  bwd_kv_wgmma_kernel<kDp><<<dim3(tiles_of(d.S, kKvBlock), static_cast<unsigned>(d.H)), kFwdThreads,
                             KvSmem<kDp>::kBytes, stream>>>(qp, gp, kp, vp, lse_h, D_h, d, Tp, Sp, dk, dv);
  return cudaGetLastError();
}

// dq, dk and dv from the statistics (lse, D = dout . out; [T, H]): packs head-major bf16 copies of q,
// dout, k, v and k transposed once, then the two wgmma kernels.
cudaError_t backward_wgmma(const AttentionBackwardParams& p, const Dims& d, const float* lse, const float* Dsum,
                           cudaStream_t stream) {
  const int Dp = (d.Dqk + 63) / 64 * 64;
  const int64_t Tp = (d.T + kFwdQ - 1) / kFwdQ * kFwdQ, Sp = (d.S + kKvBlock - 1) / kKvBlock * kKvBlock;
  const int64_t qw = p.H * p.Dqk, vw = p.H * p.Dv;
  DeviceScratch scratch;
  bf16* qp = scratch.get<bf16>(d.H * Tp * Dp);
  bf16* gp = scratch.get<bf16>(d.H * Tp * kFwdDv);
  bf16* kp = scratch.get<bf16>(d.H * Sp * Dp);
  bf16* vp = scratch.get<bf16>(d.H * Sp * kFwdDv);
  bf16* ktp = scratch.get<bf16>(d.H * Dp * Sp);
  float* lse_h = scratch.get<float>(2 * d.H * Tp);  // then D_h
  float* D_h = lse_h + d.H * Tp;
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
  head_major_stats_kernel<<<grid_for(d.H * Tp), 256, 0, stream>>>(lse, Dsum, d.T, d.H, Tp, lse_h, D_h);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  switch (Dp) {
    case 64: e = dkdv_kernel<64>(qp, gp, kp, vp, lse_h, D_h, d, Tp, Sp, p.dk, p.dv, stream); break;
    case 128: e = dkdv_kernel<128>(qp, gp, kp, vp, lse_h, D_h, d, Tp, Sp, p.dk, p.dv, stream); break;
    case 192: e = dkdv_kernel<192>(qp, gp, kp, vp, lse_h, D_h, d, Tp, Sp, p.dk, p.dv, stream); break;
    default: return cudaErrorInvalidValue;
  }
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
  // Statistics: the forward's out and logsumexp (given, or the forward again), then D = dout . out per
  // (query, head).
  const bool given = p.out && p.lse;
  float* own_out = given ? nullptr : scratch.get<float>(rows * p.Dv);
  float* own_lse = given ? nullptr : scratch.get<float>(rows);
  const float* out = given ? p.out : own_out;
  const float* lse = given ? p.lse : own_lse;
  float* Dsum = scratch.get<float>(rows);
  cudaError_t e = scratch.failed() ? cudaErrorMemoryAllocation : cudaSuccess;
  if (e == cudaSuccess && !given)
    e = forward(p.q, dense_rows(p.k, qw, p.Dqk), dense_rows(p.v, vw, p.Dv), d, own_out, own_lse, stream);
  if (e == cudaSuccess) e = attention_row_dots(p.dout, out, Dsum, rows, p.Dv, stream);
  if (e == cudaSuccess) e = backward_wgmma(p, d, lse, Dsum, stream);
  return e;
}

}  // namespace dsv::ops::cuda
