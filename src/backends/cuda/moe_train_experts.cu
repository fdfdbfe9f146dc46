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
//            dgu from dh = dys . down                 rows GEMM, SwiGLU backward in the epilogue
//            dx += sum_k dgu . [gate; up]             rows GEMM in two K halves, then combine
//            dW += (rows of one expert)^T (rows)      segment GEMMs: an expert's rows are a K segment
// Every operand is a plain box of a tensor map: gathered rows are in expert order already and each
// expert weight has a map (expert_maps_kernel). The backward reads the weights and the saved rows as
// they are stored, with no transposes: wgmma takes bf16 operands MN-major too (the weights for dh and
// dx, both operands of the weight gradients). A segment's last k-tile reaches into the next expert's
// rows; the consumers zero those rows in shared memory before they multiply. No atomics: results do
// not depend on timing.
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

const bf16* as_bf16(const uint16_t* p) { return reinterpret_cast<const bf16*>(p); }

enum class Epilogue {
  GatedSave,       // 128 columns of gate and the same 128 of up: h = bf16(silu(g) * u), gu = [g | u] (fp32)
  StoreF32,        // y = acc (fp32)
  SwigluBackward,  // acc = dh; dgu = bf16([dh * u * silu'(g) | dh * silu(g)]) with g, u read from gu
};

// Row-grouped products: out[r] = a[r] . B_e^T for the rows r of expert e, A from a_map over the
// expert-ordered rows [rows, K]. B_e is read through per-expert maps: b_maps[b_first + e]; gated, the
// B tile is 128 rows of it (gate) and the same rows of b_maps[b_second + e] (up). kMnB: B_e is stored
// [K, N] (the weight itself, not a transpose: dh reads down [D, F], dx reads gate and up [F, D]) and
// arrives as four 64-column boxes. With k_split_tiles > 0, k-tiles from k_split_tiles on come from
// a2_map and b_maps[b_second + e], restarting at k = 0 (dx: dgu's gate half times gate, then its up
// half times up; each half's k past its end reads as zeros).
struct RowsGemm {
  const CUtensorMap* b_maps;
  int b_first, b_second, k_split_tiles;
  const int32_t* offsets;     // [E + 1]
  const int32_t* tile_start;  // [E + 1]
  int E, N, K, col_blocks;
  float* y;   // StoreF32: [rows, N]
  bf16* h;    // GatedSave: [rows, N]
  float* gu;  // GatedSave writes, SwigluBackward reads: [rows, 2N]
  bf16* dgu;  // SwigluBackward: [rows, 2N]
};

template <Epilogue kEpi, bool kMnB>
__global__ void __launch_bounds__(kThreads, 1)
    rows_gemm_kernel(const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap a2_map, RowsGemm g) {
  constexpr bool kGated = kEpi == Epilogue::GatedSave;
  extern __shared__ unsigned char smem_raw[];
  const int tile = static_cast<int>(blockIdx.x / g.col_blocks);
  if (tile >= g.tile_start[g.E]) return;
  const RowTile rt = locate_row_tile(g.offsets, g.tile_start, g.E, tile);
  const int e = rt.expert, row_begin = rt.row_begin, rows = rt.rows;
  const int n0 = static_cast<int>(blockIdx.x % g.col_blocks) * (kGated ? kBN / 2 : kBN);
  const int split = g.k_split_tiles;
  const int ktiles = split > 0 ? 2 * split : (g.K + kBK - 1) / kBK;
  const Ring ring = make_ring(smem_raw);
  if (is_producer()) {
    if (threadIdx.x != 0) return;
    const CUtensorMap* b0 = g.b_maps + g.b_first + e;
    const CUtensorMap* b1 = g.b_maps + g.b_second + e;
    tma::acquire_map(b0);
    if (kGated || split > 0) tma::acquire_map(b1);
    produce(ring, ktiles, [&](unsigned char* a, unsigned char* b, int kt, uint64_t* bar) {
      const bool second = split > 0 && kt >= split;
      const int k0 = (second ? kt - split : kt) * kBK;
      tma::load_2d(a, second ? &a2_map : &a_map, k0, row_begin, bar);
      const CUtensorMap* bm = second ? b1 : b0;
      if constexpr (kMnB) {
#pragma unroll
        for (int j = 0; j < kBN / 64; ++j) tma::load_2d(b + j * 64 * kRowBytes, bm, n0 + 64 * j, k0, bar);
      } else {
        tma::load_2d(b, bm, k0, n0, bar);
        if (kGated) tma::load_2d(b + (kBN / 2) * kRowBytes, b1, k0, n0, bar);
      }
    });
    return;
  }
  float acc[kAcc];
  consume<false, kMnB>(ring, acc, ktiles, NoEdit{});

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

// Segment-grouped products (weight gradients): c[e][M, N] += a[seg, :]^T . b[seg, :] over expert e's
// rows seg = [offsets[e], offsets[e+1]) of the row-major activations a [rows, M] (a_map) and
// b [rows, N] (b_map): both operands MN-major, 64 rows of k per box (two boxes of A, four of B).
// With overwrite, c[e] = the product (zeros for an expert without rows), the old values never read.
struct SegmentGemm {
  const int32_t* offsets;
  int E, M, N, m_blocks, n_blocks;
  float* const* c;
  bool overwrite;
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
  if (len == 0 && !g.overwrite) return;
  const int ktiles = (len + kBK - 1) / kBK;
  const Ring ring = make_ring(smem_raw);
  constexpr int kBox = 64 * kRowBytes;  // 64 k rows x 64 values
  if (is_producer()) {
    if (threadIdx.x != 0) return;
    produce(ring, ktiles, [&](unsigned char* a, unsigned char* b, int kt, uint64_t* bar) {
      const int k = k_begin + kt * kBK;
#pragma unroll
      for (int i = 0; i < kBM / 64; ++i) tma::load_2d(a + i * kBox, &a_map, m0 + 64 * i, k, bar);
#pragma unroll
      for (int j = 0; j < kBN / 64; ++j) tma::load_2d(b + j * kBox, &b_map, n0 + 64 * j, k, bar);
    });
    return;
  }
  // The last k-tile's rows past the segment are the next expert's: zero them in all six boxes.
  const int valid_rows = len % kBK;
  float acc[kAcc];
  consume<true, true>(ring, acc, ktiles, [&](unsigned char* a, unsigned char*, int kt) {
    if (kt != ktiles - 1 || valid_rows == 0) return;
    const int chunks = (kBK - valid_rows) * 8;  // 16-byte pieces per box
    for (int i = static_cast<int>(threadIdx.x) - 128; i < (kBM + kBN) / 64 * chunks; i += kThreads - 128) {
      const int box = i / chunks, piece = i % chunks;  // B's boxes follow A's
      *reinterpret_cast<uint4*>(a + box * kBox + valid_rows * kRowBytes + 16 * piece) = make_uint4(0, 0, 0, 0);
    }
    ptx::fence_proxy_async();  // the zeros, visible to the tensor cores
    consumers_sync();
  });

  // c += acc (c = acc with overwrite): every old value is loaded before any store, so that the loads go out together (a load
  // after a store to the same array would otherwise wait for it: the compiler cannot tell them apart).
  float* out = g.c[e];
  const int row0 = first_row(), t = lane_pair();
#pragma unroll
  for (int pass = g.overwrite ? 1 : 0; pass < 2; ++pass) {
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
    const void* kernels[] = {reinterpret_cast<const void*>(rows_gemm_kernel<Epilogue::GatedSave, false>),
                             reinterpret_cast<const void*>(rows_gemm_kernel<Epilogue::StoreF32, false>),
                             reinterpret_cast<const void*>(rows_gemm_kernel<Epilogue::SwigluBackward, true>),
                             reinterpret_cast<const void*>(rows_gemm_kernel<Epilogue::StoreF32, true>),
                             reinterpret_cast<const void*>(segment_gemm_kernel)};
    for (const void* k : kernels) {
      const cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
      if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
  }();
  return status;
}

// Enough blocks for any routing: each expert wastes at most one partial M-tile.
unsigned rows_grid(const MoeTrainParams& p, int col_blocks) {
  return static_cast<unsigned>((p.rows / kBM + 1 + p.E) * col_blocks);
}

template <Epilogue kEpi, bool kMnB>
void launch_rows(const CUtensorMap& a, const CUtensorMap& a2, const RowsGemm& g, const MoeTrainParams& p,
                 cudaStream_t s) {
  rows_gemm_kernel<kEpi, kMnB><<<rows_grid(p, g.col_blocks), kThreads, kSmemBytes, s>>>(a, a2, g);
}

// c[e] += a[seg_e, :]^T . b[seg_e, :] for the row-major a [rows, M] (rows ld_a apart) and b [rows, N].
cudaError_t launch_segments(const bf16* a, int64_t ld_a, const bf16* b, const MoeTrainParams& p, int M, int N,
                            float* const* c, bool overwrite, cudaStream_t s) {
  CUtensorMap am, bm;
  cudaError_t e = make_bf16_tile_map(&am, a, p.rows, M, ld_a, 64);
  if (e == cudaSuccess) e = make_bf16_tile_map(&bm, b, p.rows, N, N, 64);
  if (e != cudaSuccess) return e;
  const SegmentGemm g{p.offsets, static_cast<int>(p.E), M, N, (M + kBM - 1) / kBM, (N + kBN - 1) / kBN, c,
                      overwrite};
  segment_gemm_kernel<<<static_cast<unsigned>(g.E * g.m_blocks * g.n_blocks), kThreads, kSmemBytes, s>>>(am, bm, g);
  return cudaSuccess;
}

}  // namespace

bool moe_train_supported(const MoeTrainParams& p) {
  static_assert(kMoeTrainMaxExperts <= kMaxGroupedGemmExperts, "tile_starts_kernel and the plan share the bound");
  return p.D % 8 == 0 && p.F % 8 == 0 && p.E <= kMoeTrainMaxExperts && p.rows % 8 == 0 &&
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
  const RowsGemm up{maps, 0, E, 0, p.offsets, tile_start, E, F, D, (F + kBN / 2 - 1) / (kBN / 2),
                    nullptr, h, p.gu, nullptr};
  launch_rows<Epilogue::GatedSave, false>(a_up, a_up, up, p, s);
  const RowsGemm down{maps, 2 * E, 2 * E, 0, p.offsets, tile_start, E, D, F, (D + kBN - 1) / kBN,
                      p.y, nullptr, nullptr, nullptr};
  launch_rows<Epilogue::StoreF32, false>(a_down, a_down, down, p, s);
  combine_kernel<<<blocks_for(p.T * p.D / 4, 256), 256, 0, s>>>(p.y, p.slot_of_pair, p.weights, p.T,
                                                               static_cast<int>(p.K), p.D, p.out, p.accumulate);
  return cudaGetLastError();
}

cudaError_t moe_train_backward(const MoeTrainBackwardParams& b, cudaStream_t s) {
  const MoeTrainParams& p = b.fwd;
  if (!moe_train_supported(p)) return cudaErrorInvalidValue;
  cudaError_t e = allow_big_smem();
  if (e != cudaSuccess) return e;
  const int E = static_cast<int>(p.E), D = static_cast<int>(p.D), F = static_cast<int>(p.F);
  const int64_t rows = p.rows;
  DeviceScratch sc, acts;
  int32_t* tile_start = sc.get<int32_t>(p.E + 1);
  CUtensorMap* maps = sc.get<CUtensorMap>(3 * p.E);
  bf16* dys = acts.get<bf16>(rows * p.D);
  bf16* dgu = acts.get<bf16>(rows * 2 * p.F);
  float* dxs = acts.get<float>(rows * p.D);
  if (sc.failed() || acts.failed()) return cudaErrorMemoryAllocation;
  // The weights as MN-major B operands (64-row boxes of gate, up [F, D] and down [D, F]); A over the
  // expert-ordered rows: dys for dh, the gate and up halves of dgu for dx.
  CUtensorMap gate_up_tmpl, down_tmpl, a_dh, a_dx_gate, a_dx_up;
  e = make_bf16_tile_map(&gate_up_tmpl, dys, F, D, D, 64);
  if (e == cudaSuccess) e = make_bf16_tile_map(&down_tmpl, dys, D, F, F, 64);
  if (e == cudaSuccess) e = make_bf16_tile_map(&a_dh, dys, rows, D, D, kBM);
  if (e == cudaSuccess) e = make_bf16_tile_map(&a_dx_gate, dgu, rows, F, 2 * F, kBM);
  if (e == cudaSuccess) e = make_bf16_tile_map(&a_dx_up, dgu + F, rows, F, 2 * F, kBM);
  if (e != cudaSuccess) return e;

  const int64_t pairs = p.T * p.K;
  pair_dots_kernel<<<blocks_for(pairs * 32, 256), 256, 0, s>>>(b.dout, p.y, p.slot_of_pair, pairs,
                                                              static_cast<int>(p.K), p.D, b.dweights);
  gather_kernel<<<blocks_for(rows * p.D / 8, 256), 256, 0, s>>>(b.dout, p.row_pair, p.weights, static_cast<int>(p.K),
                                                                rows, p.D, dys);
  tile_starts_kernel<<<1, 1, 0, s>>>(p.offsets, E, tile_start);
  expert_maps_kernel<<<(3 * E + 127) / 128, 128, 0, s>>>(gate_up_tmpl, down_tmpl, p.gate, p.up, p.down, E, maps);

  // dh = dys . down_e (B = down [D, F]: k = D, n = F), SwiGLU backward in the epilogue.
  const RowsGemm dh{maps, 2 * E, 2 * E, 0, p.offsets, tile_start, E, F, D, (F + kBN - 1) / kBN,
                    nullptr, nullptr, p.gu, dgu};
  launch_rows<Epilogue::SwigluBackward, true>(a_dh, a_dh, dh, p, s);
  // dxs = dgu[:, :F] . gate_e + dgu[:, F:] . up_e (B = gate, up [F, D]: k = F, n = D).
  const int half_tiles = (F + kBK - 1) / kBK;
  const RowsGemm dx{maps, 0, E, half_tiles, p.offsets, tile_start, E, D, 2 * F, (D + kBN - 1) / kBN,
                    dxs, nullptr, nullptr, nullptr};
  launch_rows<Epilogue::StoreF32, true>(a_dx_gate, a_dx_up, dx, p, s);
  combine_kernel<<<blocks_for(p.T * p.D / 4, 256), 256, 0, s>>>(dxs, p.slot_of_pair, nullptr, p.T,
                                                               static_cast<int>(p.K), p.D, b.dx, true);

  // Weight gradients straight from the row-major activations: an expert's rows are a K segment.
  e = launch_segments(dys, D, as_bf16(p.h), p, D, F, b.ddown, b.overwrite_dw, s);
  if (e == cudaSuccess) e = launch_segments(dgu, 2 * F, as_bf16(p.xs), p, F, D, b.dgate, b.overwrite_dw, s);
  if (e == cudaSuccess) e = launch_segments(dgu + F, 2 * F, as_bf16(p.xs), p, F, D, b.dup, b.overwrite_dw, s);
  if (e != cudaSuccess) return e;
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
