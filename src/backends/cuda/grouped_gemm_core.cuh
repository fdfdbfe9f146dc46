// Tile shapes of the grouped expert GEMMs on Hopper warpgroup MMA (moe_grouped_gemm.cu for prefill,
// moe_train_experts.cu for training) and the cp.async main loop of the training ones: one 128 x 256
// output tile per block of two warpgroups, each 64 rows x 256 columns (m64n256k16, 128 fp32
// accumulators per thread), K in steps of 64. (The prefill kernels feed the same ring by the bulk
// tensor copy from a producer warp instead, tma.cuh; their operands are plain boxes.)
//
// Operand tiles are K-major and 128-byte swizzled (wgmma_bf16.cuh): A is 128 rows, B 256 rows, each
// row 64 bf16 values of k. The caller says where each 16-byte chunk of a row comes from (a row gather,
// a K split over two matrices, a K segment of a transposed matrix ...); a null source zero-fills the
// chunk. Stages are filled by cp.async in a 4-deep ring that runs two tiles ahead, with one wgmma batch
// in flight while the next tiles land.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "backends/cuda/mma_bf16.cuh"
#include "backends/cuda/wgmma_bf16.cuh"

namespace dsv::ops::cuda::grouped_gemm {

using bf16 = __nv_bfloat16;

constexpr int kBM = 128, kBN = 256, kBK = 64, kThreads = 256;
constexpr int kRowBytes = kBK * 2;                     // one swizzled shared row: 64 bf16 = 128 bytes
constexpr int kAcc = kBN / 2;                          // fp32 accumulators per thread (64 x 256 each)
constexpr int kStageBytes = (kBM + kBN) * kRowBytes;   // 48 KB
constexpr int kSmemLimit = 227 * 1024;                 // shared memory one block may have on sm_90
constexpr int kExtraBytes = kBM * 4;                   // room after the ring for a kernel's row table
constexpr int kStages = (kSmemLimit - kExtraBytes - 1024) / kStageBytes;  // 4
constexpr size_t kSmemBytes = kStages * kStageBytes + kExtraBytes + 1024;  // + alignment slack
static_assert(kStages >= 3, "the ring needs a slot in flight, one being read and one landing");

// The block's shared memory: the stage ring at a swizzle-atom boundary, then kExtraBytes.
__device__ __forceinline__ unsigned char* stage_ring(unsigned char* smem_raw) {
  return ptx::align_to_swizzle_atom(smem_raw);
}
__device__ __forceinline__ unsigned char* extra_space(unsigned char* ring) { return ring + kStages * kStageBytes; }

// Issues this thread's share of the cp.async copies of one kRows x 64 tile: chunk c (k 8c..8c+7) of
// row r comes from src(r, c) (16 bytes, 16-byte aligned), or is zero when src returns null.
template <int kRows, class Src>
__device__ __forceinline__ void load_tile(unsigned char* tile, const Src& src, const void* any_global) {
  for (int i = threadIdx.x; i < kRows * (kBK / 8); i += kThreads) {
    const int r = i / (kBK / 8), c = i % (kBK / 8);
    const void* p = src(r, c);
    ptx::cp_async16(tile + ptx::sw128_offset(r, c), p ? p : any_global, p != nullptr);
  }
}

// acc (this warpgroup's 64 x 256 fragment) = sum over ktiles of A . B^T, where
// load_stage(a_tile, b_tile, k0) fills the 128 x 64 A tile and the 256 x 64 B tile for k0.
template <class LoadStage>
__device__ __forceinline__ void mainloop(float (&acc)[kAcc], unsigned char* ring, int ktiles,
                                         const LoadStage& load_stage) {
  using namespace ptx;
  auto issue = [&](int slot, int kt) {
    unsigned char* a = ring + slot * kStageBytes;
    load_stage(a, a + kBM * kRowBytes, kt * kBK);
  };
  // kStages - 2 tiles ahead: the slot refilled in step kt held tile kt - 2, whose wgmma every warpgroup
  // has finished (wgmma_wait<1> after issuing kt - 1) before the barrier of step kt.
#pragma unroll
  for (int s = 0; s < kStages - 2; ++s) {
    if (s < ktiles) issue(s, s);
    cp_async_commit();
  }
  const int wg = threadIdx.x / 128;
  const int a_off = wg * 64 * kRowBytes, b_off = kBM * kRowBytes;  // this warpgroup's A rows; all of B
#pragma unroll
  for (int i = 0; i < kAcc; ++i) acc[i] = 0.0f;
  wgmma_fence_operands(acc);
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kStages - 3>();
    fence_proxy_async();  // this thread's cp.async data, visible to the tensor cores' async proxy
    __syncthreads();
    const int pf = kt + kStages - 2;
    if (pf < ktiles) issue(pf % kStages, pf);
    cp_async_commit();
    const unsigned char* stage = ring + (kt % kStages) * kStageBytes;
    wgmma_fence();
    const uint64_t da = wgmma_desc_sw128(stage + a_off), db = wgmma_desc_sw128(stage + b_off);
#pragma unroll
    for (int s = 0; s < kBK / 16; ++s)  // a k16 step is 32 bytes along the swizzled row: +2 in the descriptor
      wgmma_m64n256k16(acc, da + 2 * s, db + 2 * s);
    wgmma_commit();
    wgmma_wait<1>();
    wgmma_fence_operands(acc);
  }
  wgmma_wait<0>();
  wgmma_fence_operands(acc);
  cp_async_wait<0>();
}

// An M-tile of expert-grouped rows (expert e owns rows offsets[e] .. offsets[e+1] and M-tiles
// tile_start[e] .. tile_start[e+1]): its expert, first row and number of rows (<= kBM).
struct RowTile {
  int expert, row_begin, rows;
};
__device__ __forceinline__ RowTile locate_row_tile(const int32_t* offsets, const int32_t* tile_start, int E, int tile) {
  int lo = 0, hi = E - 1;  // the last e with tile_start[e] <= tile
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tile_start[mid] <= tile) lo = mid;
    else hi = mid - 1;
  }
  const int row_begin = offsets[lo] + (tile - tile_start[lo]) * kBM;
  return {lo, row_begin, min(kBM, offsets[lo + 1] - row_begin)};
}

// Where this thread's accumulators sit in the 128 x 256 tile: acc[4j + 2h + {0, 1}] is row
// first_row() + 8h, columns 8j + 2 lane_pair() + {0, 1}.
__device__ __forceinline__ int first_row() {
  return 64 * (threadIdx.x / 128) + 16 * ((threadIdx.x / 32) % 4) + (threadIdx.x % 32) / 4;
}
__device__ __forceinline__ int lane_pair() { return threadIdx.x % 4; }

// Gated tiles (B rows 0..127: gate rows, 128..255: the same rows of up) keep gate and up of one output
// column in one thread: accumulator blocks j and j + kBN / 16. The pair of columns j (< kBN / 16) on
// row half `half`, and h = silu(gate) * up from them.
__device__ __forceinline__ void gate_up_pair(const float (&acc)[kAcc], int j, int half, float2& gate, float2& up) {
  gate = make_float2(acc[4 * j + 2 * half], acc[4 * j + 2 * half + 1]);
  up = make_float2(acc[4 * (j + kBN / 16) + 2 * half], acc[4 * (j + kBN / 16) + 2 * half + 1]);
}
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

namespace {  // one copy of the kernel per translation unit that launches it

// out[t, :] (+)= sum_k w[t K + k] * y[slot_of_pair[t K + k], :], k ascending (w null: 1); D a multiple
// of 4. The weighted combine of the routed experts' rows back into token order.
__global__ void combine_kernel(const float* y, const int32_t* slot_of_pair, const float* w, int64_t T, int K,
                               int64_t D, float* out, bool accumulate) {
  const int64_t quads = D / 4, n = T * quads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t tok = i / quads, c = (i % quads) * 4;
    float4 acc = accumulate ? *reinterpret_cast<const float4*>(out + tok * D + c) : make_float4(0.f, 0.f, 0.f, 0.f);
    for (int k = 0; k < K; ++k) {
      const float s = w ? w[tok * K + k] : 1.0f;
      const float4 v = *reinterpret_cast<const float4*>(y + static_cast<int64_t>(slot_of_pair[tok * K + k]) * D + c);
      acc.x += s * v.x;
      acc.y += s * v.y;
      acc.z += s * v.z;
      acc.w += s * v.w;
    }
    *reinterpret_cast<float4*>(out + tok * D + c) = acc;
  }
}

}  // namespace

inline unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 65535 ? b : 65535);
}

}  // namespace dsv::ops::cuda::grouped_gemm
