// Routed experts for many tokens (prefill) on bf16 tensor cores without leaving the device: the
// ops::moe_experts semantics (moe_experts.cu's kernels serve decode-sized T) with bf16 weight tables.
//
//   plan      one block: tokens per expert, offsets, M-tiles per expert, and each (token, slot) pair's
//             row in expert order (sorted_token: row -> token; slot_of_pair: pair -> row).
//   maps      a tensor map per expert weight matrix (host templates, addresses from the device tables).
//   gather    xs[row] = bf16(x[sorted_token[row]]): A in expert order, so its tiles are plain boxes.
//   up        one grouped GEMM over all experts: block = (M-tile of one expert, 128 columns of gate and
//             the same 128 of up); epilogue h = bf16(silu(gate) * up), so the SwiGLU never touches
//             memory in fp32.
//   down      one grouped GEMM: y[row] = h[row] . down[e]^T in fp32, rows in expert order.
//   combine   out[t] = sum_k weights[t, k] * y[slot_of_pair[t K + k]] (k ascending), as the spec.
//
// GEMM tiles: 128 x 256 x 64 on the warp-specialized TMA main loop of grouped_gemm_core.cuh. Rows
// past an expert's count are read (the next expert's, or zeros past the end) but not stored; columns
// past N and k past K read as zeros. K and N multiples of 8 (16-byte rows for the maps). Expert tiles are found by a binary search over the plan's tile offsets; the
// grid is sized for the most tiles any routing can need, and extra blocks exit.
//
// The same kernel serves gated_linear for prefill-sized M (one "expert" of all rows, the weight maps
// as kernel parameters, fp32 out): one product instead of two cuBLASLt calls and a SwiGLU pass.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/grouped_gemm_core.cuh"
#include "backends/cuda/tensor_map.h"
#include "backends/cuda/tma.cuh"

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

// xs[row, :] = bf16(x[sorted_token[row], :]) for row < rows: the up product's A operand gathered into
// expert order once, so that its tiles are plain boxes for the bulk tensor copy. D a multiple of 8.
__global__ void gather_rows_bf16_kernel(const float* x, const int32_t* sorted_token, int64_t rows, int64_t D,
                                        bf16* xs) {
  const int64_t octets = D / 8, n = rows * octets;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / octets, c = (i % octets) * 8;
    const float4* src = reinterpret_cast<const float4*>(x + static_cast<int64_t>(sorted_token[row]) * D + c);
    const float4 lo = src[0], hi = src[1];
    __nv_bfloat162 v[4] = {__floats2bfloat162_rn(lo.x, lo.y), __floats2bfloat162_rn(lo.z, lo.w),
                           __floats2bfloat162_rn(hi.x, hi.y), __floats2bfloat162_rn(hi.z, hi.w)};
    *reinterpret_cast<uint4*>(xs + row * D + c) = *reinterpret_cast<const uint4*>(v);
  }
}

struct GemmArgs {
  const CUtensorMap* b_maps;        // [3E]: per expert gate, up, down (expert_maps_kernel); null: one
                                    // group of dense_rows rows whose B maps come as kernel parameters
  const int32_t* offsets;           // [E + 1]
  const int32_t* tile_start;        // [E + 1]
  int E, N, K;
  int col_blocks;                   // blocks across N (128 columns of h gated, 256 of y plain)
  int dense_rows;
  bf16* h;                          // gated experts: [pairs, N] = bf16(silu(gate) * up)
  float* y;                         // plain: [pairs, N]; gated dense: [rows, N] = silu(gate) * up
};

// One 128 x 256 tile of A . B^T on the main loop of grouped_gemm_core.cuh: A is 128 expert-ordered
// rows of a_map (rows past the expert's count are read but not stored). Gated: the B tile is 128 gate
// rows then the same 128 rows of up, so that gate and up of one output column meet in one thread
// (accumulator blocks j and j + 16), 128 output columns. Plain: 256.
template <bool kGated>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_gemm_kernel(const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap b0_map,
                        const __grid_constant__ CUtensorMap b1_map, GemmArgs g) {
  extern __shared__ unsigned char smem_raw[];
  // Experts: column blocks vary fastest, so the blocks that share an A tile and the M-tiles of one
  // expert run at the same time: A and the expert's weights come from device memory about once and from
  // L2 after. Dense: a weight matrix larger than L2 would be streamed again for every M-tile that way;
  // instead groups of kRowGroup M-tiles walk the columns with M-tiles fastest, so the blocks in flight
  // share a few weight tiles and one group's A rows, and the weights are read once per group.
  constexpr int kRowGroup = 16;
  const bool dense = g.b_maps == nullptr;
  int tile = 0, col_block = 0;
  if (dense) {
    const int row_tiles = (g.dense_rows + kBM - 1) / kBM, per_group = kRowGroup * g.col_blocks;
    const int first = static_cast<int>(blockIdx.x / per_group) * kRowGroup, local = static_cast<int>(blockIdx.x % per_group);
    const int group_rows = min(kRowGroup, row_tiles - first);
    tile = first + local % group_rows;
    col_block = local / group_rows;
  } else {
    tile = static_cast<int>(blockIdx.x / g.col_blocks);
    col_block = static_cast<int>(blockIdx.x % g.col_blocks);
    if (tile >= g.tile_start[g.E]) return;
  }
  const RowTile rt = dense ? RowTile{0, tile * kBM, min(kBM, g.dense_rows - tile * kBM)}
                           : locate_row_tile(g.offsets, g.tile_start, g.E, tile);
  const int e = rt.expert, row_begin = rt.row_begin, rows = rt.rows;
  const int n0 = col_block * (kGated ? kBN / 2 : kBN);
  const int ktiles = (g.K + kBK - 1) / kBK;
  const Ring ring = make_ring(smem_raw);
  if (is_producer()) {
    if (threadIdx.x != 0) return;
    const CUtensorMap* b0 = dense ? &b0_map : g.b_maps + (kGated ? e : 2 * g.E + e);
    const CUtensorMap* b1 = dense ? &b1_map : g.b_maps + g.E + e;
    if (!dense) {
      tma::acquire_map(b0);
      if (kGated) tma::acquire_map(b1);
    }
    produce(ring, ktiles, [&](unsigned char* a, unsigned char* b, int kt, uint64_t* bar) {
      tma::load_2d(a, &a_map, kt * kBK, row_begin, bar);
      tma::load_2d(b, b0, kt * kBK, n0, bar);
      if (kGated) tma::load_2d(b + (kBN / 2) * kRowBytes, b1, kt * kBK, n0, bar);
    });
    return;
  }
  float acc[kAcc];
  consume(ring, acc, ktiles, NoEdit{});

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
        const float2 v = make_float2(silu_times(gate.x, up.x), silu_times(gate.y, up.y));
        if (g.h) *reinterpret_cast<__nv_bfloat162*>(g.h + out_row * g.N + col) = __floats2bfloat162_rn(v.x, v.y);
        else *reinterpret_cast<float2*>(g.y + out_row * g.N + col) = v;
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

template <bool kGated>
cudaError_t launch(const CUtensorMap& a, const CUtensorMap& b0, const CUtensorMap& b1, const GemmArgs& g,
                   unsigned max_tiles, cudaStream_t s) {
  const cudaError_t e = cudaFuncSetAttribute(grouped_gemm_kernel<kGated>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(kSmemBytes));
  if (e != cudaSuccess) return e;
  grouped_gemm_kernel<kGated><<<max_tiles * g.col_blocks, kThreads, kSmemBytes, s>>>(a, b0, b1, g);
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
  bf16* xs = sc.get<bf16>(pairs * p.D);
  int32_t* offsets = sc.get<int32_t>(p.E + 1);
  int32_t* tile_start = sc.get<int32_t>(p.E + 1);
  int32_t* sorted_token = sc.get<int32_t>(pairs);
  int32_t* slot_of_pair = sc.get<int32_t>(pairs);
  bf16* h = sc.get<bf16>(pairs * p.F);
  float* y = sc.get<float>(pairs * p.D);
  CUtensorMap* maps = sc.get<CUtensorMap>(3 * p.E);
  if (sc.failed()) return cudaErrorMemoryAllocation;
  const int E = static_cast<int>(p.E), D = static_cast<int>(p.D), F = static_cast<int>(p.F);
  // A operands over the expert-ordered rows; the weight maps' templates carry a placeholder address.
  CUtensorMap a_up, a_down, gate_up_tmpl, down_tmpl;
  cudaError_t e = make_bf16_tile_map(&a_up, xs, pairs, D, D, kBM);
  if (e == cudaSuccess) e = make_bf16_tile_map(&a_down, h, pairs, F, F, kBM);
  if (e == cudaSuccess) e = make_bf16_tile_map(&gate_up_tmpl, xs, F, D, D, kBN / 2);
  if (e == cudaSuccess) e = make_bf16_tile_map(&down_tmpl, xs, D, F, F, kBN);
  if (e != cudaSuccess) return e;
  plan_kernel<<<1, kPlanThreads, 0, s>>>(p.indices, pairs, static_cast<int>(p.K), E, kBM, offsets, tile_start,
                                         sorted_token, slot_of_pair);
  expert_maps_kernel<<<(3 * E + 127) / 128, 128, 0, s>>>(gate_up_tmpl, down_tmpl, p.gate_bf16, p.up_bf16, p.down_bf16,
                                                         E, maps);
  gather_rows_bf16_kernel<<<blocks_for(pairs * p.D / 8, 256), 256, 0, s>>>(p.x, sorted_token, pairs, p.D, xs);
  // Any routing needs at most ceil(pairs / BM) + E tiles (each expert wastes at most one partial tile).
  const unsigned max_tiles = static_cast<unsigned>((pairs + kBM - 1) / kBM + p.E);
  const int up_cols = (F + kBN / 2 - 1) / (kBN / 2), down_cols = (D + kBN - 1) / kBN;
  const GemmArgs up{maps, offsets, tile_start, E, F, D, up_cols, 0, h, nullptr};
  const GemmArgs down{maps, offsets, tile_start, E, D, F, down_cols, 0, nullptr, y};
  // The weight maps are read from `maps`; the parameter maps are unused placeholders.
  e = launch<true>(a_up, gate_up_tmpl, gate_up_tmpl, up, max_tiles, s);
  if (e == cudaSuccess) e = launch<false>(a_down, down_tmpl, down_tmpl, down, max_tiles, s);
  if (e != cudaSuccess) return e;
  combine_kernel<<<blocks_for(p.T * p.D / 4, 256), 256, 0, s>>>(y, slot_of_pair, p.weights, p.T, static_cast<int>(p.K),
                                                               p.D, p.out, false);
  return cudaGetLastError();
}

bool gated_linear_tma_supported(const GatedLinearParams& p) {
  return p.gate_bf16 && p.up_bf16 && !p.gate_bias && !p.up_bias && p.M >= kGatedTmaMinRows && p.K % 8 == 0 &&
         p.N % 8 == 0 && p.M < (int64_t{1} << 31) / kBM * kBM && p.N < (int64_t{1} << 30) && p.K < (int64_t{1} << 30) &&
         reinterpret_cast<uintptr_t>(p.gate_bf16) % 16 == 0 && reinterpret_cast<uintptr_t>(p.up_bf16) % 16 == 0 &&
         (p.M + kBM - 1) / kBM * ((p.N + kBN / 2 - 1) / (kBN / 2)) < (int64_t{1} << 31);
}

cudaError_t gated_linear_tma(const GatedLinearParams& p, cudaStream_t s) {
  if (!gated_linear_tma_supported(p)) return cudaErrorInvalidValue;
  DeviceScratch sc;
  uint16_t* x16 = nullptr;
  cudaError_t e = sc.bf16_copy(p.x, p.M * p.K, s, &x16);
  if (e != cudaSuccess) return e;
  CUtensorMap a, gate, up;
  e = make_bf16_tile_map(&a, x16, p.M, p.K, p.K, kBM);
  if (e == cudaSuccess) e = make_bf16_tile_map(&gate, p.gate_bf16, p.N, p.K, p.K, kBN / 2);
  if (e == cudaSuccess) e = make_bf16_tile_map(&up, p.up_bf16, p.N, p.K, p.K, kBN / 2);
  if (e != cudaSuccess) return e;
  const int N = static_cast<int>(p.N), K = static_cast<int>(p.K), cols = (N + kBN / 2 - 1) / (kBN / 2);
  const GemmArgs g{nullptr, nullptr, nullptr, 1, N, K, cols, static_cast<int>(p.M), nullptr, p.y};
  return launch<true>(a, gate, up, g, static_cast<unsigned>((p.M + kBM - 1) / kBM), s);
}

}  // namespace dsv::ops::cuda
