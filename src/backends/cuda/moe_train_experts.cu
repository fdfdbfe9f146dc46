// Routed experts of a training step on bf16 tensor cores (ops::moe_train_forward / _backward): every
// product of all experts of a layer is one grouped GEMM on the warp-specialized TMA main loop shared
// with the prefill experts (grouped_gemm_core.cuh), over the caller's padded expert-ordered rows.
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
// and [gate^T | up^T] side by side) and of the four activations. Every operand is a plain box of a
// tensor map: gathered rows are in expert order already, per-expert weights have a map each
// (expert_maps_kernel), the transposed weights of all experts are one matrix with expert e's rows at
// e * rows-per-expert. A segment's last k-tile reaches into the next expert's rows; the consumers zero
// those columns in shared memory before they multiply (segments are multiples of 8 rows: whole 16-byte
// chunks). No atomics: results do not depend on timing.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/grouped_gemm_core.cuh"
#include "backends/cuda/tensor_map.h"

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

// Row-grouped products: out[r] = a[r] . B_e^T for the rows r of expert e (A: a_map over the expert-ordered
// rows [rows, K]). B_e [N, K] is b_maps[b_first + e] (per-expert weight maps; gated: gate rows from
// b_maps[e] and the same rows of up from b_maps[E + e]), or without b_maps the rows
// e * b_expert_rows .. of b_map (one matrix holding every expert's B).
struct RowsGemm {
  const CUtensorMap* b_maps;
  int b_first, b_expert_rows;
  const int32_t* offsets;     // [E + 1]
  const int32_t* tile_start;  // [E + 1]
  int E, N, K, col_blocks;
  float* y;   // StoreF32: [rows, N]
  bf16* h;    // GatedSave: [rows, N]
  float* gu;  // GatedSave writes, SwigluBackward reads: [rows, 2N]
  bf16* dgu;  // SwigluBackward: [rows, 2N]
};

template <Epilogue kEpi>
__global__ void __launch_bounds__(kThreads, 1)
    rows_gemm_kernel(const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap b_map, RowsGemm g) {
  constexpr bool kGated = kEpi == Epilogue::GatedSave;
  extern __shared__ unsigned char smem_raw[];
  const int tile = static_cast<int>(blockIdx.x / g.col_blocks);
  if (tile >= g.tile_start[g.E]) return;
  const RowTile rt = locate_row_tile(g.offsets, g.tile_start, g.E, tile);
  const int e = rt.expert, row_begin = rt.row_begin, rows = rt.rows;
  const int n0 = static_cast<int>(blockIdx.x % g.col_blocks) * (kGated ? kBN / 2 : kBN);
  const int ktiles = (g.K + kBK - 1) / kBK;
  const Ring ring = make_ring(smem_raw);
  if (is_producer()) {
    if (threadIdx.x != 0) return;
    const CUtensorMap* b0 = g.b_maps ? g.b_maps + g.b_first + e : &b_map;
    const CUtensorMap* b1 = g.b_maps ? g.b_maps + g.E + e : &b_map;
    const int b_row = g.b_maps ? n0 : e * g.b_expert_rows + n0;
    if (g.b_maps) {
      tma::acquire_map(b0);
      if (kGated) tma::acquire_map(b1);
    }
    produce(ring, ktiles, [&](unsigned char* a, unsigned char* b, int kt, uint64_t* bar) {
      tma::load_2d(a, &a_map, kt * kBK, row_begin, bar);
      tma::load_2d(b, b0, kt * kBK, b_row, bar);
      if (kGated) tma::load_2d(b + (kBN / 2) * kRowBytes, b1, kt * kBK, b_row, bar);
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
// rows seg = [offsets[e], offsets[e+1]) of the transposed activations a_t [M, rows] (a_map) and
// b_t [N, rows] (b_map).
struct SegmentGemm {
  const int32_t* offsets;
  int E, M, N, m_blocks, n_blocks;
  float* const* c;
};

__global__ void __launch_bounds__(kThreads, 1)
    segment_gemm_kernel(const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap b_map,
                        SegmentGemm g) {
  extern __shared__ unsigned char smem_raw[];
  const int per_expert = g.m_blocks * g.n_blocks;
  const int e = static_cast<int>(blockIdx.x) / per_expert, rest = static_cast<int>(blockIdx.x) % per_expert;
  const int m0 = rest / g.n_blocks * kBM, n0 = rest % g.n_blocks * kBN;
  const int k_begin = g.offsets[e];
  const int len = g.offsets[e + 1] - k_begin;
  if (len == 0) return;
  const int ktiles = (len + kBK - 1) / kBK;
  const Ring ring = make_ring(smem_raw);
  if (is_producer()) {
    if (threadIdx.x != 0) return;
    produce(ring, ktiles, [&](unsigned char* a, unsigned char* b, int kt, uint64_t* bar) {
      tma::load_2d(a, &a_map, k_begin + kt * kBK, m0, bar);
      tma::load_2d(b, &b_map, k_begin + kt * kBK, n0, bar);
    });
    return;
  }
  // The last k-tile's columns past the segment hold the next expert's rows: zero them in A and B.
  const int valid_chunks = (len % kBK) / 8;
  float acc[kAcc];
  consume(ring, acc, ktiles, [&](unsigned char* a, unsigned char*, int kt) {
    if (kt != ktiles - 1 || valid_chunks == 0) return;
    const int chunks = kBK / 8 - valid_chunks;
    for (int i = static_cast<int>(threadIdx.x) - 128; i < (kBM + kBN) * chunks; i += kThreads - 128) {
      const int r = i / chunks, c = valid_chunks + i % chunks;  // A rows then B rows (B follows A)
      *reinterpret_cast<uint4*>(a + ptx::sw128_offset(r, c)) = make_uint4(0, 0, 0, 0);
    }
    ptx::fence_proxy_async();  // the zeros, visible to the tensor cores
    consumers_sync();
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
void launch_rows(const CUtensorMap& a, const CUtensorMap& b, const RowsGemm& g, const MoeTrainParams& p,
                 cudaStream_t s) {
  rows_gemm_kernel<kEpi><<<rows_grid(p, g.col_blocks), kThreads, kSmemBytes, s>>>(a, b, g);
}

// c[e] += a_t[:, seg_e] . b_t[:, seg_e]^T for a_t [M, rows] and b_t [N, rows].
cudaError_t launch_segments(const bf16* a_t, const bf16* b_t, const MoeTrainParams& p, int M, int N, float* const* c,
                            cudaStream_t s) {
  CUtensorMap a, b;
  cudaError_t e = make_bf16_tile_map(&a, a_t, M, p.rows, p.rows, kBM);
  if (e == cudaSuccess) e = make_bf16_tile_map(&b, b_t, N, p.rows, p.rows, kBN);
  if (e != cudaSuccess) return e;
  const SegmentGemm g{p.offsets, static_cast<int>(p.E), M, N, (M + kBM - 1) / kBM, (N + kBN - 1) / kBN, c};
  segment_gemm_kernel<<<static_cast<unsigned>(g.E * g.m_blocks * g.n_blocks), kThreads, kSmemBytes, s>>>(a, b, g);
  return cudaSuccess;
}

const bf16* const* as_bf16(const uint16_t* const* t) { return reinterpret_cast<const bf16* const*>(t); }
const bf16* as_bf16(const uint16_t* p) { return reinterpret_cast<const bf16*>(p); }

}  // namespace

bool moe_train_supported(const MoeTrainParams& p) {
  static_assert(kMoeTrainMaxExperts <= kMaxGroupedGemmExperts, "tile_starts_kernel and the plan share the bound");
  return p.D % 8 == 0 && p.F % 8 == 0 && p.E <= kMoeTrainMaxExperts && p.rows % 8 == 0 &&
         p.rows < int64_t{65535} * 64 &&  // transpose grid
         p.E * std::max(p.D, p.F) < (int64_t{1} << 31) &&  // tensor-map coordinates of all experts' weights
         p.rows * 2 * p.F < (int64_t{1} << 31) && p.rows * p.D < (int64_t{1} << 31);
}

cudaError_t moe_train_forward(const MoeTrainParams& p, cudaStream_t s) {
  if (!moe_train_supported(p)) return cudaErrorInvalidValue;
  cudaError_t e = allow_big_smem();
  if (e != cudaSuccess) return e;
  DeviceScratch sc;
  int32_t* tile_start = sc.get<int32_t>(p.E + 1);
  CUtensorMap* maps = sc.get<CUtensorMap>(3 * p.E);
  if (sc.failed()) return cudaErrorMemoryAllocation;
  const int E = static_cast<int>(p.E), D = static_cast<int>(p.D), F = static_cast<int>(p.F);
  bf16* xs = reinterpret_cast<bf16*>(p.xs);
  bf16* h = reinterpret_cast<bf16*>(p.h);
  // A over the expert-ordered rows; the weight maps' templates carry a placeholder address.
  CUtensorMap a_up, a_down, gate_up_tmpl, down_tmpl;
  e = make_bf16_tile_map(&a_up, xs, p.rows, D, D, kBM);
  if (e == cudaSuccess) e = make_bf16_tile_map(&a_down, h, p.rows, F, F, kBM);
  if (e == cudaSuccess) e = make_bf16_tile_map(&gate_up_tmpl, xs, F, D, D, kBN / 2);
  if (e == cudaSuccess) e = make_bf16_tile_map(&down_tmpl, xs, D, F, F, kBN);
  if (e != cudaSuccess) return e;
  gather_kernel<<<blocks_for(p.rows * p.D / 8, 256), 256, 0, s>>>(p.x, p.row_pair, nullptr, static_cast<int>(p.K),
                                                                  p.rows, p.D, xs);
  tile_starts_kernel<<<1, 1, 0, s>>>(p.offsets, E, tile_start);
  expert_maps_kernel<<<(3 * E + 127) / 128, 128, 0, s>>>(gate_up_tmpl, down_tmpl, p.gate, p.up, p.down, E, maps);
  const RowsGemm up{maps, 0, 0, p.offsets, tile_start, E, F, D, (F + kBN / 2 - 1) / (kBN / 2),
                    nullptr, h, p.gu, nullptr};
  launch_rows<Epilogue::GatedSave>(a_up, a_up, up, p, s);
  const RowsGemm down{maps, 2 * E, 0, p.offsets, tile_start, E, D, F, (D + kBN - 1) / kBN,
                      p.y, nullptr, nullptr, nullptr};
  launch_rows<Epilogue::StoreF32>(a_down, a_down, down, p, s);
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
  bf16* down_t = sc.get<bf16>(p.E * FD);      // expert e: [F, D] at e * FD
  bf16* gate_up_t = sc.get<bf16>(2 * p.E * FD);  // expert e: [D, 2F] = [gate^T | up^T] at e * 2FD
  bf16* dys = acts.get<bf16>(rows * p.D);
  bf16* dgu = acts.get<bf16>(rows * 2 * p.F);
  float* dxs = acts.get<float>(rows * p.D);
  bf16* dys_t = acts.get<bf16>(rows * p.D);
  bf16* h_t = acts.get<bf16>(rows * p.F);
  bf16* dgu_t = acts.get<bf16>(rows * 2 * p.F);
  bf16* xs_t = acts.get<bf16>(rows * p.D);
  if (sc.failed() || acts.failed()) return cudaErrorMemoryAllocation;
  CUtensorMap a_dh, b_dh, a_dx, b_dx;
  e = make_bf16_tile_map(&a_dh, dys, rows, D, D, kBM);
  if (e == cudaSuccess) e = make_bf16_tile_map(&b_dh, down_t, p.E * p.F, D, D, kBN);
  if (e == cudaSuccess) e = make_bf16_tile_map(&a_dx, dgu, rows, 2 * F, 2 * F, kBM);
  if (e == cudaSuccess) e = make_bf16_tile_map(&b_dx, gate_up_t, p.E * p.D, 2 * F, 2 * F, kBN);
  if (e != cudaSuccess) return e;

  const int64_t pairs = p.T * p.K;
  pair_dots_kernel<<<blocks_for(pairs * 32, 256), 256, 0, s>>>(b.dout, p.y, p.slot_of_pair, pairs,
                                                              static_cast<int>(p.K), p.D, b.dweights);
  gather_kernel<<<blocks_for(rows * p.D / 8, 256), 256, 0, s>>>(b.dout, p.row_pair, p.weights, static_cast<int>(p.K),
                                                                rows, p.D, dys);
  // dst[z] = src[z]^T for R x C sources, rows of dst ld_dst apart.
  auto transpose = [&](const bf16* const* table, const bf16* src, int64_t R, int64_t C, bf16* dst, int64_t ld_dst,
                       int z, int64_t dst_stride) {
    const dim3 grid(static_cast<unsigned>((C + 63) / 64), static_cast<unsigned>((R + 63) / 64), static_cast<unsigned>(z));
    transpose_kernel<<<grid, 256, 0, s>>>(table, src, R, C, C, dst, ld_dst, dst_stride);
  };
  // Weights: down [D, F] -> [F, D]; gate, up [F, D] -> the two halves of [D, 2F].
  transpose(as_bf16(p.down), nullptr, D, F, down_t, D, E, FD);
  transpose(as_bf16(p.gate), nullptr, F, D, gate_up_t, 2 * F, E, 2 * FD);
  transpose(as_bf16(p.up), nullptr, F, D, gate_up_t + F, 2 * F, E, 2 * FD);
  tile_starts_kernel<<<1, 1, 0, s>>>(p.offsets, E, tile_start);

  const RowsGemm dh{nullptr, 0, F, p.offsets, tile_start, E, F, D, (F + kBN - 1) / kBN,
                    nullptr, nullptr, p.gu, dgu};
  launch_rows<Epilogue::SwigluBackward>(a_dh, b_dh, dh, p, s);
  const RowsGemm dx{nullptr, 0, D, p.offsets, tile_start, E, D, 2 * F, (D + kBN - 1) / kBN,
                    dxs, nullptr, nullptr, nullptr};
  launch_rows<Epilogue::StoreF32>(a_dx, b_dx, dx, p, s);
  combine_kernel<<<blocks_for(p.T * p.D / 4, 256), 256, 0, s>>>(dxs, p.slot_of_pair, nullptr, p.T,
                                                               static_cast<int>(p.K), p.D, b.dx, true);

  // Activation transposes [rows, X] -> [X, rows]: an expert's rows become a K segment.
  transpose(nullptr, dys, rows, p.D, dys_t, rows, 1, 0);
  transpose(nullptr, as_bf16(p.h), rows, p.F, h_t, rows, 1, 0);
  transpose(nullptr, dgu, rows, 2 * p.F, dgu_t, rows, 1, 0);
  transpose(nullptr, as_bf16(p.xs), rows, p.D, xs_t, rows, 1, 0);
  e = launch_segments(dys_t, h_t, p, D, F, b.ddown, s);
  if (e == cudaSuccess) e = launch_segments(dgu_t, xs_t, p, F, D, b.dgate, s);
  if (e == cudaSuccess) e = launch_segments(dgu_t + p.F * rows, xs_t, p, F, D, b.dup, s);
  if (e != cudaSuccess) return e;
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
