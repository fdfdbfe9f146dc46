// Tile shapes and the main loop of the grouped expert GEMMs on Hopper warpgroup MMA
// (moe_grouped_gemm.cu for prefill, moe_train_experts.cu for training): one 128 x 256 output tile per
// block, K in steps of 64, warp-specialized. Warpgroup 0's first thread copies each k-tile's A box
// (128 rows) and B box (256 rows) with the bulk tensor copy (TMA, tma.cuh) into a 4-slot ring of
// 128-byte-swizzled, K-major tiles (wgmma_bf16.cuh) and completes the slot's "full" barrier;
// warpgroups 1 and 2 multiply 64 rows each (wgmma m64n256k16, 128 fp32 accumulators per thread), keep
// one batch in flight, and release a slot on its "empty" barrier once their batch on it is done.
// A cp.async main loop in which every thread computed addresses and issued 16-byte copies between its
// MMAs measured 1155 us for the 16b-l4 prefill up product at 4096 tokens (~250 TFLOP/s); this one 557 us.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "backends/cuda/mma_bf16.cuh"
#include "backends/cuda/tma.cuh"
#include "backends/cuda/wgmma_bf16.cuh"

namespace dsv::ops::cuda::grouped_gemm {

using bf16 = __nv_bfloat16;

constexpr int kBM = 128, kBN = 256, kBK = 64;
constexpr int kThreads = 384;                          // warpgroup 0 feeds the ring, 1 and 2 multiply
constexpr uint32_t kConsumerWarps = 8;
constexpr int kRowBytes = kBK * 2;                     // one swizzled shared row: 64 bf16 = 128 bytes
constexpr int kAcc = kBN / 2;                          // fp32 accumulators per thread (64 x 256 each)
constexpr int kStageBytes = (kBM + kBN) * kRowBytes;   // 48 KB
constexpr int kSmemLimit = 227 * 1024;                 // shared memory one block may have on sm_90
constexpr int kExtraBytes = kBM * 4;                   // room after the ring for the barriers
constexpr int kStages = (kSmemLimit - kExtraBytes - 1024) / kStageBytes;  // 4
constexpr size_t kSmemBytes = kStages * kStageBytes + kExtraBytes + 1024;  // + alignment slack
static_assert(kStages >= 3, "the ring needs a slot in flight, one being read and one landing");
static_assert(2 * kStages * sizeof(uint64_t) <= kExtraBytes, "the barriers live after the ring");

// The ring at a swizzle-atom boundary of the block's shared memory, and its barriers after it.
struct Ring {
  unsigned char* slots;
  uint64_t* full;
  uint64_t* empty;
};
// Every thread of the block calls it (it ends in a barrier).
__device__ __forceinline__ Ring make_ring(unsigned char* smem_raw) {
  Ring r;
  r.slots = ptx::align_to_swizzle_atom(smem_raw);
  r.full = reinterpret_cast<uint64_t*>(r.slots + kStages * kStageBytes);
  r.empty = r.full + kStages;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      tma::barrier_init(&r.full[s], 1);
      tma::barrier_init(&r.empty[s], kConsumerWarps);
    }
    tma::barrier_init_fence();
  }
  __syncthreads();
  return r;
}

// Splits the block after make_ring: true for warpgroup 0, the producer (its first thread copies, the
// others have nothing to do), which gives registers back; false for the consumers, which take them
// (the epilogues hold 128 accumulators and their operands: 168 registers each spilled).
constexpr int kProducerRegs = 24, kConsumerRegs = 240;
static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= 65536, "the register file of one SM");
__device__ __forceinline__ bool is_producer() {
  if (threadIdx.x < 128) {
    ptx::shrink_registers<kProducerRegs>();
    return true;
  }
  ptx::grow_registers<kConsumerRegs>();
  return false;
}

// The producer thread: for each k-tile, waits for the slot, then load(a_tile, b_tile, kt, bar) issues
// copies completing `bar` with kStageBytes in all (boxes count whole, zero-filled parts included).
template <class Load>
__device__ __forceinline__ void produce(const Ring& r, int ktiles, const Load& load) {
  for (int kt = 0; kt < ktiles; ++kt) {
    const int s = kt % kStages;
    if (kt >= kStages) tma::wait(&r.empty[s], ((kt / kStages) - 1) & 1);  // its previous tile is consumed
    unsigned char* a = r.slots + s * kStageBytes;
    tma::arrive_expect_bytes(&r.full[s], kStageBytes);
    load(a, a + kBM * kRowBytes, kt, &r.full[s]);
  }
}

// A consumer thread: acc (its warpgroup's 64 x 256 fragment) = sum over k-tiles of A . B^T.
// edit(a_tile, b_tile, kt) runs on every consumer thread once a tile has landed, before the tensor
// cores read it; a kernel that writes the tile there fences and synchronizes the consumers itself.
// Tiles are K-major (128 / 256 rows of 64 k values), or with kMnA / kMnB MN-major: 64 k rows of 64 MN
// values per 8 KB box, A's box c for consumer c, B's four boxes in order (wgmma_desc_sw128_mn).
template <bool kMnA = false, bool kMnB = false, class Edit>
__device__ __forceinline__ void consume(const Ring& r, float (&acc)[kAcc], int ktiles, const Edit& edit) {
  using namespace ptx;
  const int c = static_cast<int>(threadIdx.x / 128) - 1, lane = static_cast<int>(threadIdx.x % 32);
  constexpr int kStepA = kMnA ? 128 : 2, kStepB = kMnB ? 128 : 2;  // a k16 step in descriptor units (16 bytes)
#pragma unroll
  for (int i = 0; i < kAcc; ++i) acc[i] = 0.0f;
  wgmma_fence_operands(acc);
  for (int kt = 0; kt < ktiles; ++kt) {
    const int s = kt % kStages;
    tma::wait(&r.full[s], (kt / kStages) & 1);
    unsigned char* stage = r.slots + s * kStageBytes;
    edit(stage, stage + kBM * kRowBytes, kt);
    wgmma_fence();
    const unsigned char* a = stage + c * 64 * kRowBytes;  // K-major: 64 rows; MN-major: box c (8 KB either way)
    const unsigned char* b = stage + kBM * kRowBytes;
    const uint64_t da = kMnA ? wgmma_desc_sw128_mn(a) : wgmma_desc_sw128(a);
    const uint64_t db = kMnB ? wgmma_desc_sw128_mn(b) : wgmma_desc_sw128(b);
#pragma unroll
    for (int k = 0; k < kBK / 16; ++k) wgmma_m64n256k16<kMnA, kMnB>(acc, da + kStepA * k, db + kStepB * k);
    wgmma_commit();
    wgmma_wait<1>();  // the previous stage's batch is done: its slot may be refilled
    wgmma_fence_operands(acc);
    if (kt > 0 && lane == 0) tma::arrive(&r.empty[(kt - 1) % kStages]);
  }
  wgmma_wait<0>();
  wgmma_fence_operands(acc);
}
// A barrier of the two consumer warpgroups only (named barrier 1; the producer does not take part).
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, 256;\n" ::: "memory"); }
struct NoEdit {
  __device__ void operator()(unsigned char*, unsigned char*, int) const {}
};

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

// Where a consumer thread's accumulators sit in the 128 x 256 tile: acc[4j + 2h + {0, 1}] is row
// first_row() + 8h, columns 8j + 2 lane_pair() + {0, 1}.
__device__ __forceinline__ int first_row() {
  return 64 * (threadIdx.x / 128 - 1) + 16 * ((threadIdx.x / 32) % 4) + (threadIdx.x % 32) / 4;
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

// Weight maps of the experts: maps[e], maps[E + e], maps[2E + e]: expert e's gate, up and down weights, each a copy of its
// template (made on the host, where the weight addresses are not known: they sit in device tables)
// with the expert's address.
__global__ void expert_maps_kernel(const __grid_constant__ CUtensorMap gate_up_tmpl,
                                   const __grid_constant__ CUtensorMap down_tmpl, const uint16_t* const* gate,
                                   const uint16_t* const* up, const uint16_t* const* down, int E, CUtensorMap* maps) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= 3 * E) return;
  const int which = i / E, e = i % E;
  const uint16_t* base = which == 0 ? gate[e] : which == 1 ? up[e] : down[e];
  tma::copy_map_with_address(maps + i, which < 2 ? gate_up_tmpl : down_tmpl, base);
}


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
