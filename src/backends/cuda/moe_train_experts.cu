// Routed experts of a training step on bf16 tensor cores (ops::moe_train_forward / _backward): every
// product of all experts of a layer is one grouped GEMM on the shared wgmma main loop
// (grouped_gemm_core.cuh), over the caller's padded expert-ordered rows.
//
// Forward:   xs = bf16(x) gathered by row            gather_kernel
//            h = bf16(silu(gate) * up), gu saved      rows GEMM, B rows = 128 gate + the same 128 up rows
//            y = h . down^T                           rows GEMM
//            out = sum_k w * y[slot]                  combine_kernel
// Backward:  dweights[q] = dout[t] . y[slot[q]]       pair_dots_kernel
//            dys = bf16(w * dout) gathered by row     gather_kernel
//            dgu from dh = dys . down                 rows GEMM on down^T, SwiGLU backward in the epilogue
//            dx += sum_k dgu . [gate; up]             rows GEMM on [gate^T | up^T] (K split), then combine
//            dW += (rows of one expert)^T (rows)      segment GEMMs over row-major transposes of dys, h,
//                                                     dgu and xs: an expert's rows become a K segment
// wgmma reads K-major tiles only, so the backward makes bf16 transposes of the expert weights (down^T,
// gate^T, up^T) and of the four activations; padding rows are zeros, so expert segments (multiples of 8
// rows) can be read 16 bytes at a time and add nothing. No atomics: results do not depend on timing.
#include <cuda_bf16.h>

#include <cstdint>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/grouped_gemm_core.cuh"

namespace dsv::ops::cuda {
namespace {

using namespace grouped_gemm;

// out[r] = bf16(scale * src[t]) with q = row_pair[r], t = q / K, scale = w[q] (1 when w is null);
// zeros for padding rows (q < 0). 8 values per thread: D % 8 == 0.
__global__ void gather_kernel(const float* src, const int32_t* row_pair, const float* w, int K, int64_t rows,
                              int64_t D, bf16* out) {
  const int64_t oct = D / 8, n = rows * oct;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / oct, c = (i % oct) * 8;
    const int32_t q = row_pair[r];
    float4 v0 = make_float4(0.f, 0.f, 0.f, 0.f), v1 = v0;
    if (q >= 0) {
      const float s = w ? w[q] : 1.0f;
      const float* p = src + static_cast<int64_t>(q / K) * D + c;
      v0 = *reinterpret_cast<const float4*>(p);
      v1 = *reinterpret_cast<const float4*>(p + 4);
      v0 = make_float4(s * v0.x, s * v0.y, s * v0.z, s * v0.w);
      v1 = make_float4(s * v1.x, s * v1.y, s * v1.z, s * v1.w);
    }
    __nv_bfloat162 o[4] = {__floats2bfloat162_rn(v0.x, v0.y), __floats2bfloat162_rn(v0.z, v0.w),
                           __floats2bfloat162_rn(v1.x, v1.y), __floats2bfloat162_rn(v1.z, v1.w)};
    *reinterpret_cast<uint4*>(out + r * D + c) = *reinterpret_cast<const uint4*>(o);
  }
}

// tile_start[e] = M-tiles of the experts before e (128 rows each); one thread (E <= 1024).
__global__ void tile_starts_kernel(const int32_t* offsets, int E, int32_t* tile_start) {
  int32_t tiles = 0;
  for (int e = 0; e < E; ++e) {
    tile_start[e] = tiles;
    tiles += (offsets[e + 1] - offsets[e] + kBM - 1) / kBM;
  }
  tile_start[E] = tiles;
}

// table[e] = base + e * stride.
__global__ void table_kernel(const bf16* base, int64_t stride, int E, const bf16** table) {
  for (int e = threadIdx.x; e < E; e += blockDim.x) table[e] = base + e * stride;
}

// dst[z][c, r] = src[z][r, c] for an R x C bf16 matrix (row strides ld_src, ld_dst); src from a table of
// matrices (src_table) or one matrix (src), dst at dst + z * dst_stride. 64 x 64 tiles through shared
// memory; both the reads and the writes are 16 bytes per thread with 8 threads on one 128-byte row
// piece (coalesced: scattered 16-byte writes measured 10x slower). R, C, ld_src and ld_dst: multiples of 8.
__global__ void __launch_bounds__(256) transpose_kernel(const bf16* const* src_table, const bf16* src, int64_t R,
                                                        int64_t C, int64_t ld_src, bf16* dst, int64_t ld_dst,
                                                        int64_t dst_stride) {
  // Tile element (r, c) is half c % 2 of word r * 33 + c / 2: the odd row pitch (33 words) puts the
  // 8 rows read by one column-gathering instruction in different banks.
  constexpr int kPitch = 33;
  __shared__ uint32_t tile[64 * kPitch];
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src_table ? src_table[blockIdx.z] : src);
  uint16_t* d = reinterpret_cast<uint16_t*>(dst + blockIdx.z * dst_stride);
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * 64, c0 = static_cast<int64_t>(blockIdx.x) * 64;
  for (int i = threadIdx.x; i < 64 * 8; i += 256) {
    const int r = i / 8, ch = i % 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r0 + r < R && c0 + 8 * ch < C) v = *reinterpret_cast<const uint4*>(s + (r0 + r) * ld_src + c0 + 8 * ch);
    uint32_t* w = tile + r * kPitch + 4 * ch;
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 64 * 8; i += 256) {
    const int c = i / 8, ch = i % 8;  // output row c0 + c, its values r0 + 8ch .. r0 + 8ch + 7
    if (c0 + c >= C || r0 + 8 * ch >= R) continue;
    uint32_t packed[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t lo = tile[(8 * ch + 2 * j) * kPitch + c / 2], hi = tile[(8 * ch + 2 * j + 1) * kPitch + c / 2];
      packed[j] = (c % 2 ? lo >> 16 : lo & 0xFFFFu) | ((c % 2 ? hi >> 16 : hi & 0xFFFFu) << 16);
    }
    *reinterpret_cast<uint4*>(d + (c0 + c) * ld_dst + r0 + 8 * ch) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
  }
}

// dweights[q] = dout[q / K] . y[slot_of_pair[q]], one warp per pair (D % 4 == 0).
__global__ void pair_dots_kernel(const float* dout, const float* y, const int32_t* slot_of_pair, int64_t pairs, int K,
                                 int64_t D, float* dweights) {
  const int lane = threadIdx.x % 32;
  for (int64_t q = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; q < pairs;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x / 32) {
    const float* a = dout + (q / K) * D;
    const float* b = y + static_cast<int64_t>(slot_of_pair[q]) * D;
    float acc = 0.0f;
    for (int64_t c = 4 * lane; c < D; c += 128) {
      const float4 u = *reinterpret_cast<const float4*>(a + c), v = *reinterpret_cast<const float4*>(b + c);
      acc += u.x * v.x + u.y * v.y + u.z * v.z + u.w * v.w;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) dweights[q] = acc;
  }
}

enum class Epilogue {
  GatedSave,       // 128 columns of gate and the same 128 of up: h = bf16(silu(g) * u), gu = [g | u] (fp32)
  StoreF32,        // y = acc (fp32)
  SwigluBackward,  // acc = dh; dgu = bf16([dh * u * silu'(g) | dh * silu(g)]) with g, u read from gu
};

// Row-grouped products: out[r] = a[r] . B_e^T for the rows r of expert e, B_e [N, K] =
// w0[e] (row stride K), or with k_split > 0 the columns k < k_split from w0[e] ([N, k_split]) and the
// others from w1[e] ([N, K - k_split]); gated, B rows n come from w0[e] (gate) and w1[e] (up) alike.
struct RowsGemm {
  const bf16* a;  // [rows, K]
  const bf16* const* w0;
  const bf16* const* w1;
  int k_split;
  const int32_t* offsets;     // [E + 1]
  const int32_t* tile_start;  // [E + 1]
  int E, N, K, col_blocks;
  float* y;   // StoreF32: [rows, N]
  bf16* h;    // GatedSave: [rows, N]
  float* gu;  // GatedSave writes, SwigluBackward reads: [rows, 2N]
  bf16* dgu;  // SwigluBackward: [rows, 2N]
};

template <Epilogue kEpi>
__global__ void __launch_bounds__(kThreads, 1) rows_gemm_kernel(RowsGemm g) {
  constexpr bool kGated = kEpi == Epilogue::GatedSave;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* ring = stage_ring(smem_raw);
  const int tile = static_cast<int>(blockIdx.x / g.col_blocks);
  if (tile >= g.tile_start[g.E]) return;
  const RowTile rt = locate_row_tile(g.offsets, g.tile_start, g.E, tile);
  const int e = rt.expert, row_begin = rt.row_begin, rows = rt.rows;
  const int n0 = static_cast<int>(blockIdx.x % g.col_blocks) * (kGated ? kBN / 2 : kBN);
  const bf16* w0 = g.w0[e];
  const bf16* w1 = g.w1 ? g.w1[e] : w0;
  const bf16* a = g.a + static_cast<int64_t>(row_begin) * g.K;
  const int ld0 = g.k_split > 0 ? g.k_split : g.K, ld1 = g.K - g.k_split;

  float acc[kAcc];
  mainloop(acc, ring, (g.K + kBK - 1) / kBK, [&](unsigned char* as, unsigned char* bs, int k0) {
    load_tile<kBM>(as, [&](int r, int c) -> const void* {
      const int k = k0 + 8 * c;
      return r < rows && k < g.K ? a + static_cast<int64_t>(r) * g.K + k : nullptr;
    }, g.a);
    load_tile<kBN>(bs, [&](int r, int c) -> const void* {
      const int k = k0 + 8 * c;
      if (kGated) {  // shared rows 0..127: gate rows n0.., rows 128..255: the same rows of up
        const int n = n0 + (r & (kBN / 2 - 1));
        return n < g.N && k < g.K ? (r < kBN / 2 ? w0 : w1) + static_cast<int64_t>(n) * g.K + k : nullptr;
      }
      const int n = n0 + r;
      if (n >= g.N || k >= g.K) return nullptr;
      if (g.k_split > 0 && k >= g.k_split) return w1 + static_cast<int64_t>(n) * ld1 + (k - g.k_split);
      return w0 + static_cast<int64_t>(n) * ld0 + k;
    }, w0);
  });

  const int row0 = first_row(), t = lane_pair();
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = row0 + 8 * half;
    if (r >= rows) continue;
    const int64_t row = row_begin + r;
    if constexpr (kGated) {
#pragma unroll
      for (int j = 0; j < kBN / 16; ++j) {
        const int col = n0 + 8 * j + 2 * t;
        if (col >= g.N) continue;
        float2 gate, up;
        gate_up_pair(acc, j, half, gate, up);
        *reinterpret_cast<__nv_bfloat162*>(g.h + row * g.N + col) =
            __floats2bfloat162_rn(silu_times(gate.x, up.x), silu_times(gate.y, up.y));
        *reinterpret_cast<float2*>(g.gu + row * 2 * g.N + col) = gate;
        *reinterpret_cast<float2*>(g.gu + row * 2 * g.N + g.N + col) = up;
      }
    } else if constexpr (kEpi == Epilogue::StoreF32) {
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        const int col = n0 + 8 * j + 2 * t;
        if (col < g.N) *reinterpret_cast<float2*>(g.y + row * g.N + col) = make_float2(acc[4 * j + 2 * half],
                                                                                       acc[4 * j + 2 * half + 1]);
      }
    } else {
      // Eight column pairs at a time: their gate and up values are all loaded before any dgu store, so
      // the loads go out together instead of each waiting behind the previous store.
      const float* gu = g.gu + row * 2 * g.N;
      bf16* dgu = g.dgu + row * 2 * g.N;
#pragma unroll
      for (int j0 = 0; j0 < kBN / 8; j0 += 8) {
        float2 gg[8], uu[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int col = n0 + 8 * (j0 + j) + 2 * t;
          if (col >= g.N) continue;
          gg[j] = *reinterpret_cast<const float2*>(gu + col);
          uu[j] = *reinterpret_cast<const float2*>(gu + g.N + col);
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int col = n0 + 8 * (j0 + j) + 2 * t;
          if (col >= g.N) continue;
          const float v0 = acc[4 * (j0 + j) + 2 * half], v1 = acc[4 * (j0 + j) + 2 * half + 1];
          const float s0 = 1.0f / (1.0f + __expf(-gg[j].x)), s1 = 1.0f / (1.0f + __expf(-gg[j].y));
          const float dg0 = v0 * uu[j].x * (s0 * (1.0f + gg[j].x * (1.0f - s0)));
          const float dg1 = v1 * uu[j].y * (s1 * (1.0f + gg[j].y * (1.0f - s1)));
          *reinterpret_cast<__nv_bfloat162*>(dgu + col) = __floats2bfloat162_rn(dg0, dg1);
          *reinterpret_cast<__nv_bfloat162*>(dgu + g.N + col) =
              __floats2bfloat162_rn(v0 * (gg[j].x * s0), v1 * (gg[j].y * s1));
        }
      }
    }
  }
}

// Segment-grouped products (weight gradients): c[e][M, N] += a_t[:, seg] . b_t[:, seg]^T over expert e's
// rows seg = [offsets[e], offsets[e+1]) of the transposed activations a_t [M, ld] and b_t [N, ld].
struct SegmentGemm {
  const bf16* a_t;
  const bf16* b_t;
  int64_t ld;
  const int32_t* offsets;
  int E, M, N, m_blocks, n_blocks;
  float* const* c;
};

__global__ void __launch_bounds__(kThreads, 1) segment_gemm_kernel(SegmentGemm g) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* ring = stage_ring(smem_raw);
  const int per_expert = g.m_blocks * g.n_blocks;
  const int e = static_cast<int>(blockIdx.x) / per_expert, rest = static_cast<int>(blockIdx.x) % per_expert;
  const int m0 = rest / g.n_blocks * kBM, n0 = rest % g.n_blocks * kBN;
  const int64_t k_begin = g.offsets[e];
  const int len = g.offsets[e + 1] - g.offsets[e];
  if (len == 0) return;
  const bf16* a = g.a_t + k_begin;
  const bf16* b = g.b_t + k_begin;

  float acc[kAcc];
  mainloop(acc, ring, (len + kBK - 1) / kBK, [&](unsigned char* as, unsigned char* bs, int k0) {
    load_tile<kBM>(as, [&](int r, int c) -> const void* {
      const int k = k0 + 8 * c;
      return m0 + r < g.M && k < len ? a + static_cast<int64_t>(m0 + r) * g.ld + k : nullptr;
    }, g.a_t);
    load_tile<kBN>(bs, [&](int r, int c) -> const void* {
      const int k = k0 + 8 * c;
      return n0 + r < g.N && k < len ? b + static_cast<int64_t>(n0 + r) * g.ld + k : nullptr;
    }, g.b_t);
  });

  // c += acc: every old value is loaded before any store, so that the loads go out together (a load
  // after a store to the same array would otherwise wait for it: the compiler cannot tell them apart).
  float* out = g.c[e];
  const int row0 = first_row(), t = lane_pair();
#pragma unroll
  for (int pass = 0; pass < 2; ++pass) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = m0 + row0 + 8 * half;
      if (m >= g.M) continue;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        const int col = n0 + 8 * j + 2 * t;
        if (col >= g.N) continue;
        float2* p = reinterpret_cast<float2*>(out + static_cast<int64_t>(m) * g.N + col);
        float& a0 = acc[4 * j + 2 * half];
        float& a1 = acc[4 * j + 2 * half + 1];
        if (pass == 0) {
          const float2 old = *p;
          a0 += old.x;
          a1 += old.y;
        } else {
          *p = make_float2(a0, a1);
        }
      }
    }
  }
}

cudaError_t allow_big_smem() {
  static cudaError_t status = [] {
    const int bytes = static_cast<int>(kSmemBytes);
    cudaError_t e = cudaFuncSetAttribute(rows_gemm_kernel<Epilogue::GatedSave>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess)
      e = cudaFuncSetAttribute(rows_gemm_kernel<Epilogue::StoreF32>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess)
      e = cudaFuncSetAttribute(rows_gemm_kernel<Epilogue::SwigluBackward>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               bytes);
    if (e == cudaSuccess)
      e = cudaFuncSetAttribute(segment_gemm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    return e;
  }();
  return status;
}

// Enough blocks for any routing: each expert wastes at most one partial M-tile.
unsigned rows_grid(const MoeTrainParams& p, int col_blocks) {
  return static_cast<unsigned>((p.rows / kBM + 1 + p.E) * col_blocks);
}

template <Epilogue kEpi>
void launch_rows(const RowsGemm& g, const MoeTrainParams& p, cudaStream_t s) {
  rows_gemm_kernel<kEpi><<<rows_grid(p, g.col_blocks), kThreads, kSmemBytes, s>>>(g);
}

void launch_segments(SegmentGemm g, cudaStream_t s) {
  g.m_blocks = (g.M + kBM - 1) / kBM;
  g.n_blocks = (g.N + kBN - 1) / kBN;
  segment_gemm_kernel<<<static_cast<unsigned>(g.E * g.m_blocks * g.n_blocks), kThreads, kSmemBytes, s>>>(g);
}

const bf16* const* as_bf16(const uint16_t* const* t) { return reinterpret_cast<const bf16* const*>(t); }
const bf16* as_bf16(const uint16_t* p) { return reinterpret_cast<const bf16*>(p); }

}  // namespace

bool moe_train_supported(const MoeTrainParams& p) {
  static_assert(kMoeTrainMaxExperts <= kMaxGroupedGemmExperts, "tile_starts_kernel and the plan share the bound");
  return p.D % 8 == 0 && p.F % 8 == 0 && p.E <= kMoeTrainMaxExperts && p.rows % 8 == 0 &&
         p.rows < int64_t{65535} * 64 &&  // transpose grid
         p.rows * 2 * p.F < (int64_t{1} << 31) && p.rows * p.D < (int64_t{1} << 31);
}

cudaError_t moe_train_forward(const MoeTrainParams& p, cudaStream_t s) {
  if (!moe_train_supported(p)) return cudaErrorInvalidValue;
  cudaError_t e = allow_big_smem();
  if (e != cudaSuccess) return e;
  DeviceScratch sc;
  int32_t* tile_start = sc.get<int32_t>(p.E + 1);
  if (sc.failed()) return cudaErrorMemoryAllocation;
  const int E = static_cast<int>(p.E), D = static_cast<int>(p.D), F = static_cast<int>(p.F);
  bf16* xs = reinterpret_cast<bf16*>(p.xs);
  bf16* h = reinterpret_cast<bf16*>(p.h);
  gather_kernel<<<blocks_for(p.rows * p.D / 8, 256), 256, 0, s>>>(p.x, p.row_pair, nullptr, static_cast<int>(p.K),
                                                                  p.rows, p.D, xs);
  tile_starts_kernel<<<1, 1, 0, s>>>(p.offsets, E, tile_start);
  RowsGemm up{xs, as_bf16(p.gate), as_bf16(p.up), 0, p.offsets, tile_start, E, F, D, (F + kBN / 2 - 1) / (kBN / 2),
              nullptr, h, p.gu, nullptr};
  launch_rows<Epilogue::GatedSave>(up, p, s);
  RowsGemm down{h, as_bf16(p.down), nullptr, 0, p.offsets, tile_start, E, D, F, (D + kBN - 1) / kBN,
                p.y, nullptr, nullptr, nullptr};
  launch_rows<Epilogue::StoreF32>(down, p, s);
  combine_kernel<<<blocks_for(p.T * p.D / 4, 256), 256, 0, s>>>(p.y, p.slot_of_pair, p.weights, p.T,
                                                               static_cast<int>(p.K), p.D, p.out, false);
  return cudaGetLastError();
}

cudaError_t moe_train_backward(const MoeTrainBackwardParams& b, cudaStream_t s) {
  const MoeTrainParams& p = b.fwd;
  if (!moe_train_supported(p)) return cudaErrorInvalidValue;
  cudaError_t e = allow_big_smem();
  if (e != cudaSuccess) return e;
  const int E = static_cast<int>(p.E), D = static_cast<int>(p.D), F = static_cast<int>(p.F);
  const int64_t rows = p.rows, FD = p.F * p.D;
  DeviceScratch sc, acts;
  int32_t* tile_start = sc.get<int32_t>(p.E + 1);
  const bf16** tables = sc.get<const bf16*>(3 * p.E);  // down^T, gate^T, up^T of each expert
  bf16* wt = sc.get<bf16>(3 * p.E * FD);
  bf16* dys = acts.get<bf16>(rows * p.D);
  bf16* dgu = acts.get<bf16>(rows * 2 * p.F);
  float* dxs = acts.get<float>(rows * p.D);
  bf16* dys_t = acts.get<bf16>(rows * p.D);
  bf16* h_t = acts.get<bf16>(rows * p.F);
  bf16* dgu_t = acts.get<bf16>(rows * 2 * p.F);
  bf16* xs_t = acts.get<bf16>(rows * p.D);
  if (sc.failed() || acts.failed()) return cudaErrorMemoryAllocation;
  const bf16** down_t = tables;
  const bf16** gate_t = tables + p.E;
  const bf16** up_t = tables + 2 * p.E;

  const int64_t pairs = p.T * p.K;
  pair_dots_kernel<<<blocks_for(pairs * 32, 256), 256, 0, s>>>(b.dout, p.y, p.slot_of_pair, pairs,
                                                              static_cast<int>(p.K), p.D, b.dweights);
  gather_kernel<<<blocks_for(rows * p.D / 8, 256), 256, 0, s>>>(b.dout, p.row_pair, p.weights, static_cast<int>(p.K),
                                                                rows, p.D, dys);
  // Weight transposes: down [D, F] -> [F, D]; gate, up [F, D] -> [D, F].
  auto transpose = [&](const bf16* const* table, const bf16* src, int64_t R, int64_t C, bf16* dst, int z,
                       int64_t dst_stride) {
    const dim3 grid(static_cast<unsigned>((C + 63) / 64), static_cast<unsigned>((R + 63) / 64), static_cast<unsigned>(z));
    transpose_kernel<<<grid, 256, 0, s>>>(table, src, R, C, C, dst, R, dst_stride);
  };
  transpose(as_bf16(p.down), nullptr, D, F, wt, E, FD);
  transpose(as_bf16(p.gate), nullptr, F, D, wt + E * FD, E, FD);
  transpose(as_bf16(p.up), nullptr, F, D, wt + 2 * E * FD, E, FD);
  table_kernel<<<1, 256, 0, s>>>(wt, FD, 3 * E, tables);
  tile_starts_kernel<<<1, 1, 0, s>>>(p.offsets, E, tile_start);

  RowsGemm dh{dys, down_t, nullptr, 0, p.offsets, tile_start, E, F, D, (F + kBN - 1) / kBN,
              nullptr, nullptr, p.gu, dgu};
  launch_rows<Epilogue::SwigluBackward>(dh, p, s);
  RowsGemm dx{dgu, gate_t, up_t, F, p.offsets, tile_start, E, D, 2 * F, (D + kBN - 1) / kBN,
              dxs, nullptr, nullptr, nullptr};
  launch_rows<Epilogue::StoreF32>(dx, p, s);
  combine_kernel<<<blocks_for(p.T * p.D / 4, 256), 256, 0, s>>>(dxs, p.slot_of_pair, nullptr, p.T,
                                                               static_cast<int>(p.K), p.D, b.dx, true);

  // Activation transposes [rows, X] -> [X, rows]: an expert's rows become a K segment.
  transpose(nullptr, dys, rows, p.D, dys_t, 1, 0);
  transpose(nullptr, as_bf16(p.h), rows, p.F, h_t, 1, 0);
  transpose(nullptr, dgu, rows, 2 * p.F, dgu_t, 1, 0);
  transpose(nullptr, as_bf16(p.xs), rows, p.D, xs_t, 1, 0);
  launch_segments({dys_t, h_t, rows, p.offsets, E, D, F, 0, 0, b.ddown}, s);
  launch_segments({dgu_t, xs_t, rows, p.offsets, E, F, D, 0, 0, b.dgate}, s);
  launch_segments({dgu_t + p.F * rows, xs_t, rows, p.offsets, E, F, D, 0, 0, b.dup}, s);
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
