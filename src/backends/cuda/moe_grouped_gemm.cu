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
// GEMM tiles: BM x 128 x 64 with BM = 128 (8 warps as 2 (M) x 4 (N) of 64 x 32) or, when experts get
// few rows each (fewer than 256 on average), BM = 64 (warps of 32 x 32); mma.sync m16n8k16 (bf16 in,
// fp32 accumulate), ldmatrix fragments, a 3-stage cp.async pipeline (<= 108 KB of shared memory: two
// blocks per SM). Rows past an expert's count and columns past N are zero-filled and not stored; K must be a
// multiple of 8 (16-byte copies). Expert tiles are found by a binary search over the plan's tile
// offsets; the grid is sized for the most tiles any routing can need, and extra blocks exit.
#include <cuda_bf16.h>

#include <cstdint>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/mma_bf16.cuh"

namespace dsv::ops::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kMaxBM = 128, kBN = 128, kBK = 64, kStages = 3, kThreads = 256;
constexpr int kLd = kBK + 8;  // padded shared row (144 bytes): the 8 rows of an ldmatrix hit distinct banks
constexpr int kPlanThreads = 1024;

using namespace ptx;

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
  bf16* h;                          // gated: [pairs, N] = bf16(silu(gate) * up)
  float* y;                         // plain: [pairs, N]
};

// BM = 128 (warps of 64 x 32) or 64 (32 x 32, for experts of few rows: less of the last tile wasted).
template <bool kGated, int kBM>
__global__ void __launch_bounds__(kThreads, 2) grouped_gemm_kernel(GemmArgs g) {
  constexpr int kMI = kBM / 32;  // m16 tiles per warp
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* As = reinterpret_cast<bf16*>(smem);  // [stages][BM][kLd]
  bf16* Bs = As + kStages * kBM * kLd;       // [stages][BN][kLd]
  __shared__ int32_t a_row[kBM];
  const int tile = static_cast<int>(blockIdx.x);
  if (tile >= g.tile_start[g.E]) return;
  int lo = 0, hi = g.E - 1;  // the expert whose tile range holds this tile: the last e with start <= tile
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (g.tile_start[mid] <= tile) lo = mid;
    else hi = mid - 1;
  }
  const int e = lo;
  const int row_begin = g.offsets[e] + (tile - g.tile_start[e]) * kBM;
  const int rows = min(kBM, g.offsets[e + 1] - row_begin);
  const int n0 = static_cast<int>(blockIdx.y) * (kGated ? kBN / 2 : kBN);
  if (threadIdx.x < kBM) {
    const int r = static_cast<int>(threadIdx.x);
    a_row[r] = r < rows ? (g.a_rows ? g.a_rows[row_begin + r] : row_begin + r) : -1;
  }
  __syncthreads();
  const bf16* w0 = reinterpret_cast<const bf16*>(g.w0[e]);
  const bf16* w1 = kGated ? reinterpret_cast<const bf16*>(g.w1[e]) : w0;

  auto load_stage = [&](int stage, int k0) {
    bf16* as = As + stage * kBM * kLd;
    bf16* bs = Bs + stage * kBN * kLd;
    for (int i = threadIdx.x; i < kBM * (kBK / 8); i += kThreads) {
      const int r = i / (kBK / 8), c = (i % (kBK / 8)) * 8;
      const int src = a_row[r];
      const bool ok = src >= 0 && k0 + c < g.K;
      cp_async16(as + r * kLd + c, ok ? g.a + static_cast<int64_t>(src) * g.K + k0 + c : g.a, ok);
    }
    for (int i = threadIdx.x; i < kBN * (kBK / 8); i += kThreads) {
      const int r = i / (kBK / 8), c = (i % (kBK / 8)) * 8;
      // Gated: shared rows 0..63 are gate rows n0.., rows 64..127 the same rows of up.
      const int n = kGated ? n0 + (r & (kBN / 2 - 1)) : n0 + r;
      const bf16* w = kGated && r >= kBN / 2 ? w1 : w0;
      const bool ok = n < g.N && k0 + c < g.K;
      cp_async16(bs + r * kLd + c, ok ? w + static_cast<int64_t>(n) * g.K + k0 + c : w0, ok);
    }
  };

  const int ktiles = (g.K + kBK - 1) / kBK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load_stage(s, s * kBK);
    cp_async_commit();
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wm = warp / 4, wn = warp % 4;
  float acc[kMI][4][4];
#pragma unroll
  for (int i = 0; i < kMI; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
  // This warp's two 16-row groups of B (each two n8 tiles): gated, 16 gate then the same 16 up rows.
  const int b_row0 = kGated ? 16 * wn : 32 * wn, b_row1 = kGated ? kBN / 2 + 16 * wn : 32 * wn + 16;
  const int a_lane = (wm * (kBM / 2) + (lane % 16)) * kLd + 8 * (lane / 16);
  const int b_lane = ((lane % 8) + 8 * (lane / 16)) * kLd + 8 * ((lane / 8) % 2);

  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile kt landed for all threads; the slot of tile kt-1 is free
    const int pf = kt + kStages - 1;
    if (pf < ktiles) load_stage(pf % kStages, pf * kBK);
    cp_async_commit();
    const bf16* as = As + (kt % kStages) * kBM * kLd;
    const bf16* bs = Bs + (kt % kStages) * kBN * kLd;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t af[kMI][4], bfr[2][4];
#pragma unroll
      for (int i = 0; i < kMI; ++i) ldsm_x4(af[i], as + a_lane + i * 16 * kLd + kk);
      ldsm_x4(bfr[0], bs + b_row0 * kLd + b_lane + kk);
      ldsm_x4(bfr[1], bs + b_row1 * kLd + b_lane + kk);
#pragma unroll
      for (int i = 0; i < kMI; ++i)
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
          mma_bf16(acc[i][2 * jj], af[i], bfr[jj][0], bfr[jj][1]);
          mma_bf16(acc[i][2 * jj + 1], af[i], bfr[jj][2], bfr[jj][3]);
        }
    }
  }
  cp_async_wait<0>();

  const int gq = lane / 4, t = lane % 4;
#pragma unroll
  for (int i = 0; i < kMI; ++i)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = wm * (kBM / 2) + i * 16 + gq + 8 * half;
      if (r >= rows) continue;
      const int64_t out_row = row_begin + r;
      if (kGated) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int col = n0 + 16 * wn + 8 * j + 2 * t;
          if (col >= g.N) continue;
          const float g0 = acc[i][j][2 * half], g1 = acc[i][j][2 * half + 1];
          const float u0 = acc[i][j + 2][2 * half], u1 = acc[i][j + 2][2 * half + 1];
          const float h0 = g0 / (1.0f + __expf(-g0)) * u0, h1 = g1 / (1.0f + __expf(-g1)) * u1;
          *reinterpret_cast<__nv_bfloat162*>(g.h + out_row * g.N + col) = __floats2bfloat162_rn(h0, h1);
        }
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int col = n0 + 32 * wn + 8 * j + 2 * t;
          if (col >= g.N) continue;
          *reinterpret_cast<float2*>(g.y + out_row * g.N + col) =
              make_float2(acc[i][j][2 * half], acc[i][j][2 * half + 1]);
        }
      }
    }
}

// out[t, :] = sum_k weights[t K + k] * y[slot_of_pair[t K + k], :], k ascending; D a multiple of 4.
__global__ void combine_kernel(const float* y, const int32_t* slot_of_pair, const float* weights, int64_t T, int K,
                               int64_t D, float* out) {
  const int64_t quads = D / 4, n = T * quads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t tok = i / quads, c = (i % quads) * 4;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int k = 0; k < K; ++k) {
      const float w = weights[tok * K + k];
      const float4 v = *reinterpret_cast<const float4*>(y + static_cast<int64_t>(slot_of_pair[tok * K + k]) * D + c);
      acc.x += w * v.x;
      acc.y += w * v.y;
      acc.z += w * v.z;
      acc.w += w * v.w;
    }
    *reinterpret_cast<float4*>(out + tok * D + c) = acc;
  }
}

unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 65535 ? b : 65535);
}

template <int kBM>
cudaError_t launch(const GemmArgs& up, const GemmArgs& down, dim3 up_grid, dim3 down_grid, cudaStream_t s) {
  const size_t smem = static_cast<size_t>(kStages) * (kBM + kBN) * kLd * sizeof(bf16);
  for (auto kernel : {grouped_gemm_kernel<true, kBM>, grouped_gemm_kernel<false, kBM>}) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  grouped_gemm_kernel<true, kBM><<<up_grid, kThreads, smem, s>>>(up);
  grouped_gemm_kernel<false, kBM><<<down_grid, kThreads, smem, s>>>(down);
  return cudaGetLastError();
}

}  // namespace

bool moe_grouped_gemm_supported(const MoeExpertsParams& p) {
  return p.gate_bf16 && p.up_bf16 && p.down_bf16 && p.E > 0 && p.E <= kMaxGroupedGemmExperts && p.K > 0 &&
         p.D % 8 == 0 && p.F % 8 == 0 && p.T * p.K < (int64_t{1} << 30);
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
  // Experts of few rows (V3: 256 experts, ~128 rows each at 4096 tokens) waste less in 64-row tiles.
  const int bm = pairs < 256 * p.E ? 64 : kMaxBM;
  plan_kernel<<<1, kPlanThreads, 0, s>>>(p.indices, pairs, static_cast<int>(p.K), static_cast<int>(p.E), bm, offsets,
                                         tile_start, sorted_token, slot_of_pair);
  // Any routing needs at most ceil(pairs / BM) + E tiles (each expert wastes at most one partial tile).
  const unsigned max_tiles = static_cast<unsigned>((pairs + bm - 1) / bm + p.E);
  const int E = static_cast<int>(p.E), D = static_cast<int>(p.D), F = static_cast<int>(p.F);
  const GemmArgs up{reinterpret_cast<const bf16*>(x16), sorted_token, p.gate_bf16, p.up_bf16, offsets, tile_start,
                    E, F, D, h, nullptr};
  const GemmArgs down{h, nullptr, p.down_bf16, nullptr, offsets, tile_start, E, D, F, nullptr, y};
  const dim3 up_grid(max_tiles, static_cast<unsigned>((F + kBN / 2 - 1) / (kBN / 2)));
  const dim3 down_grid(max_tiles, static_cast<unsigned>((D + kBN - 1) / kBN));
  e = bm == 64 ? launch<64>(up, down, up_grid, down_grid, s) : launch<kMaxBM>(up, down, up_grid, down_grid, s);
  if (e != cudaSuccess) return e;
  combine_kernel<<<blocks_for(p.T * p.D / 4, 256), 256, 0, s>>>(y, slot_of_pair, p.weights, p.T, static_cast<int>(p.K),
                                                               p.D, p.out);
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
