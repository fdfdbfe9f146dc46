// Routed experts for many tokens (prefill) on bf16 tensor cores without leaving the device: the
// ops::moe_experts semantics (moe_experts.cu's kernels serve decode-sized T) with bf16 weight tables.
//
//   plan      one block: tokens per expert, offsets, M-tiles per expert, and each (token, slot) pair's
//             row in expert order (sorted_token: row -> token; slot_of_pair: pair -> row).
//   up        one grouped GEMM over all experts: block = (M-tile of one expert, 64 columns of gate and
//             the same 64 of up); A rows gathered from bf16(x) through sorted_token; epilogue
//             h = bf16(silu(gate) * up), so the SwiGLU never touches memory in fp32.
//   down      one grouped GEMM: y[row] = h[row] . down[e]^T in fp32, rows in expert order.
//   combine   out[t] = sum_k weights[t, k] * y[slot_of_pair[t K + k]] (k ascending), as the spec.
//
// GEMM tiles: 128 x 256 x 64 on the wgmma main loop of grouped_gemm_core.cuh (two warpgroups of
// m64n256k16, 128-byte-swizzled tiles filled by cp.async: A rows are gathered, which the bulk tensor
// copy cannot do). At prefill sizes these GEMMs are bound by loading operand tiles, not by the tensor
// cores (an expert's weights serve ~128 rows on V3 shapes): 64-row tiles, which waste less of an
// expert's last tile, measured 1.27x slower than 128-row tiles on bench-671b-l2 at 4096 tokens, since
// every tile streams the whole weight slice. Rows past an expert's count and columns past N are zero-filled and not stored; K must be a
// multiple of 8 (16-byte copies). Expert tiles are found by a binary search over the plan's tile
// offsets; the grid is sized for the most tiles any routing can need, and extra blocks exit.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/grouped_gemm_core.cuh"

namespace dsv::ops::cuda {
namespace {

using namespace grouped_gemm;
constexpr int kPlanThreads = 1024;

// offsets[e] .. offsets[e+1]: expert e's rows; tile_start[e] .. tile_start[e+1]: its M-tiles.
__global__ void __launch_bounds__(kPlanThreads)
    plan_kernel(const int32_t* indices, int64_t pairs, int K, int E, int BM, int32_t* offsets, int32_t* tile_start,
                int32_t* sorted_token, int32_t* slot_of_pair) {
  __shared__ int32_t count[kMaxGroupedGemmExperts], cursor[kMaxGroupedGemmExperts];
  for (int e = threadIdx.x; e < E; e += blockDim.x) count[e] = 0;
  __syncthreads();
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) atomicAdd(&count[indices[p]], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t rows = 0, tiles = 0;
    for (int e = 0; e < E; ++e) {
      offsets[e] = cursor[e] = rows;
      tile_start[e] = tiles;
      rows += count[e];
      tiles += (count[e] + BM - 1) / BM;
    }
    offsets[E] = rows;
    tile_start[E] = tiles;
  }
  __syncthreads();
  // The order of rows within an expert depends on the atomics, but no result does: every output row
  // is computed on its own and the combine reads rows through slot_of_pair.
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int32_t row = atomicAdd(&cursor[indices[p]], 1);
    sorted_token[row] = static_cast<int32_t>(p / K);
    slot_of_pair[p] = row;
  }
}

struct GemmArgs {
  const bf16* a;                    // [rows of A, K]
  const int32_t* a_rows;            // expert-ordered row -> A row (null: the identity)
  const uint16_t* const* w0;        // per expert [N, K]: gate (gated) or down
  const uint16_t* const* w1;        // per expert [N, K]: up (gated only)
  const int32_t* offsets;           // [E + 1]
  const int32_t* tile_start;        // [E + 1]
  int E, N, K;
  int col_blocks;                   // blocks across N (128 columns of h gated, 256 of y plain)
  bf16* h;                          // gated: [pairs, N] = bf16(silu(gate) * up)
  float* y;                         // plain: [pairs, N]
};

// Gated: the block computes 128 output columns from 256 shared B rows, 128 gate rows then the same 128
// up rows, so that gate and up of one column meet in one thread (accumulator blocks j and j + 16).
// Plain: 256 output columns.
template <bool kGated>
__global__ void __launch_bounds__(kThreads, 1) grouped_gemm_kernel(GemmArgs g) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* ring = stage_ring(smem_raw);
  int32_t* a_row = reinterpret_cast<int32_t*>(extra_space(ring));
  // Column blocks vary fastest: the blocks that share an A tile (gathered rows) and the M-tiles of one
  // expert run at the same time, so A and the expert's weights come from device memory about once and
  // from L2 after (expert weights at prefill sizes are read for ~128 rows each: bandwidth-bound).
  const int tile = static_cast<int>(blockIdx.x / g.col_blocks);
  if (tile >= g.tile_start[g.E]) return;
  const RowTile rt = locate_row_tile(g.offsets, g.tile_start, g.E, tile);
  const int e = rt.expert, row_begin = rt.row_begin, rows = rt.rows;
  const int n0 = static_cast<int>(blockIdx.x % g.col_blocks) * (kGated ? kBN / 2 : kBN);
  if (threadIdx.x < kBM) {
    const int r = static_cast<int>(threadIdx.x);
    a_row[r] = r < rows ? (g.a_rows ? g.a_rows[row_begin + r] : row_begin + r) : -1;
  }
  __syncthreads();
  const bf16* w0 = reinterpret_cast<const bf16*>(g.w0[e]);
  const bf16* w1 = kGated ? reinterpret_cast<const bf16*>(g.w1[e]) : w0;

  float acc[kAcc];
  mainloop(acc, ring, (g.K + kBK - 1) / kBK, [&](unsigned char* as, unsigned char* bs, int k0) {
    load_tile<kBM>(as, [&](int r, int c) -> const void* {
      const int src = a_row[r];
      return src >= 0 && k0 + 8 * c < g.K ? g.a + static_cast<int64_t>(src) * g.K + k0 + 8 * c : nullptr;
    }, g.a);
    load_tile<kBN>(bs, [&](int r, int c) -> const void* {
      // Gated: shared rows 0..127 are gate rows n0.., rows 128..255 the same rows of up.
      const int n = kGated ? n0 + (r & (kBN / 2 - 1)) : n0 + r;
      const bf16* w = kGated && r >= kBN / 2 ? w1 : w0;
      return n < g.N && k0 + 8 * c < g.K ? w + static_cast<int64_t>(n) * g.K + k0 + 8 * c : nullptr;
    }, w0);
  });

  const int row0 = first_row(), t = lane_pair();
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = row0 + 8 * half;
    if (r >= rows) continue;
    const int64_t out_row = row_begin + r;
    if (kGated) {
#pragma unroll
      for (int j = 0; j < kBN / 16; ++j) {
        const int col = n0 + 8 * j + 2 * t;
        if (col >= g.N) continue;
        float2 gate, up;
        gate_up_pair(acc, j, half, gate, up);
        *reinterpret_cast<__nv_bfloat162*>(g.h + out_row * g.N + col) =
            __floats2bfloat162_rn(silu_times(gate.x, up.x), silu_times(gate.y, up.y));
      }
    } else {
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        const int col = n0 + 8 * j + 2 * t;
        if (col >= g.N) continue;
        *reinterpret_cast<float2*>(g.y + out_row * g.N + col) = make_float2(acc[4 * j + 2 * half], acc[4 * j + 2 * half + 1]);
      }
    }
  }
}

cudaError_t launch(const GemmArgs& up, const GemmArgs& down, unsigned max_tiles, cudaStream_t s) {
  for (auto kernel : {grouped_gemm_kernel<true>, grouped_gemm_kernel<false>}) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBytes));
    if (e != cudaSuccess) return e;
  }
  grouped_gemm_kernel<true><<<max_tiles * up.col_blocks, kThreads, kSmemBytes, s>>>(up);
  grouped_gemm_kernel<false><<<max_tiles * down.col_blocks, kThreads, kSmemBytes, s>>>(down);
  return cudaGetLastError();
}

}  // namespace

bool moe_grouped_gemm_supported(const MoeExpertsParams& p) {
  return p.gate_bf16 && p.up_bf16 && p.down_bf16 && p.E > 0 && p.E <= kMaxGroupedGemmExperts && p.K > 0 &&
         p.D % 8 == 0 && p.F % 8 == 0 && p.T * p.K < (int64_t{1} << 30) &&
         // the 1-D grid of (M-tile, column block) pairs
         (p.T * p.K / kBM + 1 + p.E) * ((std::max(p.D, 2 * p.F) + kBN - 1) / kBN) < (int64_t{1} << 31);
}

cudaError_t moe_grouped_gemm(const MoeExpertsParams& p, cudaStream_t s) {
  if (!moe_grouped_gemm_supported(p)) return cudaErrorInvalidValue;
  if (p.T == 0) return cudaSuccess;
  const int64_t pairs = p.T * p.K;
  DeviceScratch sc;
  uint16_t* x16 = nullptr;
  cudaError_t e = sc.bf16_copy(p.x, p.T * p.D, s, &x16);
  int32_t* offsets = sc.get<int32_t>(p.E + 1);
  int32_t* tile_start = sc.get<int32_t>(p.E + 1);
  int32_t* sorted_token = sc.get<int32_t>(pairs);
  int32_t* slot_of_pair = sc.get<int32_t>(pairs);
  bf16* h = sc.get<bf16>(pairs * p.F);
  float* y = sc.get<float>(pairs * p.D);
  if (e != cudaSuccess) return e;
  if (sc.failed()) return cudaErrorMemoryAllocation;
  plan_kernel<<<1, kPlanThreads, 0, s>>>(p.indices, pairs, static_cast<int>(p.K), static_cast<int>(p.E), kBM, offsets,
                                         tile_start, sorted_token, slot_of_pair);
  // Any routing needs at most ceil(pairs / BM) + E tiles (each expert wastes at most one partial tile).
  const unsigned max_tiles = static_cast<unsigned>((pairs + kBM - 1) / kBM + p.E);
  const int E = static_cast<int>(p.E), D = static_cast<int>(p.D), F = static_cast<int>(p.F);
  const int up_cols = (F + kBN / 2 - 1) / (kBN / 2), down_cols = (D + kBN - 1) / kBN;
  const GemmArgs up{reinterpret_cast<const bf16*>(x16), sorted_token, p.gate_bf16, p.up_bf16, offsets, tile_start,
                    E, F, D, up_cols, h, nullptr};
  const GemmArgs down{h, nullptr, p.down_bf16, nullptr, offsets, tile_start, E, D, F, down_cols, nullptr, y};
  e = launch(up, down, max_tiles, s);
  if (e != cudaSuccess) return e;
  combine_kernel<<<blocks_for(p.T * p.D / 4, 256), 256, 0, s>>>(y, slot_of_pair, p.weights, p.T, static_cast<int>(p.K),
                                                               p.D, p.out, false);
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
