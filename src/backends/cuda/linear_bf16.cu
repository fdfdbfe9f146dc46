// bf16-weight products for few rows (decode): y[m, n] (+)= bf16(x[m]) . w[n] (+ bias[n]), one warp
// per output column n, up to 8 rows of x per pass, fp32 accumulation. Memory-bound by design: the
// weights are read once per pass at close to the copy bandwidth. Also the fp32 <-> bf16 casts.
// linear.cpp sends larger products to cuBLASLt (bf16 tensor cores).
#include "backends/cuda/bf16_dot.cuh"
#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"

#include <type_traits>

namespace dsv::ops::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;  // weight rows per warp: each x chunk is read once for all of them
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;

// w[N, K] row-major. Grid: (ceil(N / kRowsPerBlock), batch); rows [m0, m0 + M) of x.
template <int M>
__global__ void gemv_bf16_kernel(LinearParams p, int64_t xs, int64_t ys, int64_t m0) {
  dependent_start();
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x / 32) * kRowsPerWarp;
  const int64_t b = blockIdx.y;
  if (n0 >= p.N) return;
  const float* x = p.x + b * p.x_batch_stride + m0 * xs;
  const uint16_t* w = p.w_bf16 + b * p.w_batch_stride;
  const uint16_t* rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) rows[r] = w + (n0 + r < p.N ? n0 + r : n0) * p.K;  // past N: re-read n0
  float acc[M][kRowsPerWarp] = {};
  lane_dots_bf16<M, kRowsPerWarp>(x, xs, rows, p.K, acc);
  float* y = p.y + b * p.y_batch_stride + m0 * ys;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t n = n0 + r;
    const float bias = p.bias && n < p.N ? p.bias[b * p.bias_batch_stride + n] : 0.0f;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float v = warp_sum(acc[m][r]) + bias;
      if (threadIdx.x % 32 == 0 && n < p.N) y[m * ys + n] = p.accumulate ? y[m * ys + n] + v : v;
    }
  }
}

// The same rows with the K sum split over `slices` warps of one block (each warp one contiguous,
// 8-aligned K range): a decode-sized product then has every load in flight at once instead of a few
// trips per warp, which is what limits small matrices. Partial sums are added in slice order.
constexpr int kMaxSlices = 8;

// Each warp's per-lane sums reduced over the warp into its slice's row of `partial`, for the whole
// block to read after the barrier.
template <int M>
__device__ __forceinline__ void stage_warp_sums(float (&partial)[kMaxSlices][M][kRowsPerWarp],
                                                const float (&acc)[M][kRowsPerWarp], int slice, int lane) {
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float v = warp_sum(acc[m][r]);
      if (lane == 0) partial[slice][m][r] = v;
    }
  __syncthreads();
}

// The end of the split and preload kernels: the slices' partial sums added in slice order
// (deterministic), plus bias, into (or onto) y.
template <int M>
__device__ __forceinline__ void rows_finish(const LinearParams& p, float (&partial)[kMaxSlices][M][kRowsPerWarp],
                                            const float (&acc)[M][kRowsPerWarp], int slice, int lane, int slices,
                                            int64_t n0, int64_t b, int64_t ys, int64_t m0) {
  stage_warp_sums<M>(partial, acc, slice, lane);
  if (threadIdx.x >= M * kRowsPerWarp) return;
  const int m = threadIdx.x / kRowsPerWarp, r = threadIdx.x % kRowsPerWarp;
  const int64_t n = n0 + r;
  if (n >= p.N) return;
  float v = 0.0f;
  for (int sl = 0; sl < slices; ++sl) v += partial[sl][m][r];
  v += p.bias ? p.bias[b * p.bias_batch_stride + n] : 0.0f;
  float* y = p.y + b * p.y_batch_stride + (m0 + m) * ys + n;
  *y = p.accumulate ? *y + v : v;
}
template <int M>
__global__ void gemv_bf16_split_kernel(LinearParams p, int64_t xs, int64_t ys, int64_t m0, int64_t slice_k) {
  __shared__ float partial[kMaxSlices][M][kRowsPerWarp];
  const int slice = threadIdx.x / 32, lane = threadIdx.x % 32, slices = blockDim.x / 32;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRowsPerWarp, b = blockIdx.y;
  const int64_t k0 = slice * slice_k, k1 = k0 + slice_k < p.K ? k0 + slice_k : p.K;
  dependent_start();
  const float* x = p.x + b * p.x_batch_stride + m0 * xs + k0;
  const uint16_t* w = p.w_bf16 + b * p.w_batch_stride + k0;
  const uint16_t* rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) rows[r] = w + (n0 + r < p.N ? n0 + r : n0) * p.K;  // past N: re-read n0
  float acc[M][kRowsPerWarp] = {};
  if (k1 > k0) lane_dots_bf16<M, kRowsPerWarp>(x, xs, rows, k1 - k0, acc);
  rows_finish<M>(p, partial, acc, slice, lane, slices, n0, b, ys, m0);
}

// Eight consecutive weights of a row, as loaded (bf16: one 16-byte word; fp32: two, rounded to bf16
// when unpacked, which is what a bf16 product with fp32 weights means).
template <typename W>
struct Chunk8;
template <>
struct Chunk8<uint16_t> {
  uint4 v;
  __device__ __forceinline__ void load(const uint16_t* p) { v = __ldg(reinterpret_cast<const uint4*>(p)); }
  __device__ __forceinline__ void zero() { v = make_uint4(0, 0, 0, 0); }
  __device__ __forceinline__ void unpack(float (&f)[8]) const { unpack8(v, f); }
};
template <>
struct Chunk8<float> {
  float4 a, b;
  __device__ __forceinline__ void load(const float* p) {
    a = __ldg(reinterpret_cast<const float4*>(p));
    b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  }
  __device__ __forceinline__ void zero() { a = b = make_float4(0.f, 0.f, 0.f, 0.f); }
  __device__ __forceinline__ void unpack(float (&f)[8]) const {
    f[0] = round_bf16(a.x), f[1] = round_bf16(a.y), f[2] = round_bf16(a.z), f[3] = round_bf16(a.w);
    f[4] = round_bf16(b.x), f[5] = round_bf16(b.y), f[6] = round_bf16(b.z), f[7] = round_bf16(b.w);
  }
  __device__ __forceinline__ void unpack_exact(float (&f)[8]) const {
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
  }
};

// The split kernel's layout with every weight load issued before the wait for the previous kernel
// (launch.cuh): a lane holds its ITERS chunks of eight weights of each of its block's kRowsPerWarp
// rows in registers, so the weight stream of a decode step overlaps the small kernels before each
// product instead of starting after them. Measured on the H100 (2026-11-23, a 3072 x 2048 product
// after a 1-6 us kernel, CUDA graph): 6.9 us for the split kernel, 3.4-4.2 us this way.
// W = uint16_t: bf16 weights (p.w_bf16); W = float: fp32 weights (p.w) rounded to bf16 in registers,
// the bf16 product of fp32 weights without a cast kernel first, or with EXACT neither x nor w rounded:
// the exact fp32 product (fp32 decode, and the fp32 routers of a bf16 decode: one kernel where
// cuBLAS's GEMV took two).
// GATED (ops::gated_linear): p.w_bf16 / p.bias are the gate's, `up` / `up_bias` the up product's; a
// block's rows are gate and up rows of kGatedCols output columns, and y = silu(gate) * up.
// Needs K % 8 == 0 and 16-byte aligned weight and x rows; K <= kMaxSlices * 256 * ITERS.
// Activations are read with ordinary loads (they were written by the kernel this one waited for).
constexpr int kGatedCols = kRowsPerWarp / 2;
template <int M>
__device__ __forceinline__ void gated_finish(const LinearParams& p, float (&partial)[kMaxSlices][M][kRowsPerWarp],
                                             const float (&acc)[M][kRowsPerWarp], int slice, int lane, int slices,
                                             int64_t c0, const float* up_bias, int64_t ys, int64_t m0) {
  stage_warp_sums<M>(partial, acc, slice, lane);
  if (threadIdx.x >= M * kGatedCols) return;
  const int m = threadIdx.x / kGatedCols, c = threadIdx.x % kGatedCols;
  const int64_t n = c0 + c;
  if (n >= p.N) return;
  float g = 0.0f, u = 0.0f;
  for (int sl = 0; sl < slices; ++sl) g += partial[sl][m][c], u += partial[sl][m][kGatedCols + c];
  g += p.bias ? p.bias[n] : 0.0f;
  u += up_bias ? up_bias[n] : 0.0f;
  p.y[(m0 + m) * ys + n] = (g / (1.0f + __expf(-g))) * u;  // as swiglu.cu
}

template <int M, int ITERS, typename W, bool GATED, bool EXACT = false>
__global__ void gemv_preload_kernel(LinearParams p, int64_t xs, int64_t ys, int64_t m0, int64_t slice_k, const W* up,
                                    const float* up_bias) {
  __shared__ float partial[kMaxSlices][M][kRowsPerWarp];
  const int slice = threadIdx.x / 32, lane = threadIdx.x % 32, slices = blockDim.x / 32;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * (GATED ? kGatedCols : kRowsPerWarp), b = blockIdx.y;
  const int64_t k0 = slice * slice_k, k1 = k0 + slice_k < p.K ? k0 + slice_k : p.K;
  const W* w = (std::is_same_v<W, float> ? reinterpret_cast<const W*>(p.w) : reinterpret_cast<const W*>(p.w_bf16)) +
               b * p.w_batch_stride;
  Chunk8<W> raw[kRowsPerWarp][ITERS];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t n = GATED ? n0 + r % kGatedCols : n0 + r;
    const W* matrix = GATED && r >= kGatedCols ? up : w;
    const W* row = matrix + (n < p.N ? n : p.N - 1) * p.K;  // past N: a repeat, dropped below
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int64_t k = k0 + (i * 32 + lane) * 8;
      if (k < k1) raw[r][i].load(row + k);
      else raw[r][i].zero();
    }
  }
  dependent_start();
  const float* x = p.x + b * p.x_batch_stride + m0 * xs;
  float acc[M][kRowsPerWarp] = {};
  // A few chunks of x per lane are loaded all at once (predicated, no branch between them) before
  // the products: loaded inside the loop, each sat behind the loop's exit branch, one dependent L2
  // round trip per chunk. More than kStaged chunks stay in the loop (registers).
  constexpr int kStaged = 4;
  constexpr bool kStage = M * ITERS <= kStaged;
  float4 staged[kStage ? M : 1][kStage ? ITERS : 1][2];
  if constexpr (kStage) {
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int64_t k = k0 + (i * 32 + lane) * 8;
      const bool ok = k < k1;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float4* src = reinterpret_cast<const float4*>(x + m * xs + (ok ? k : 0));
        staged[m][i][0] = ok ? src[0] : make_float4(0.f, 0.f, 0.f, 0.f);
        staged[m][i][1] = ok ? src[1] : make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {
    const int64_t k = k0 + (i * 32 + lane) * 8;
    if (k >= k1) break;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float4 lo, hi;
      if constexpr (kStage) lo = staged[m][i][0], hi = staged[m][i][1];
      else lo = *reinterpret_cast<const float4*>(x + m * xs + k), hi = *reinterpret_cast<const float4*>(x + m * xs + k + 4);
      float xv[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
      if constexpr (!EXACT)
#pragma unroll
        for (int j = 0; j < 8; ++j) xv[j] = round_bf16(xv[j]);
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        float wf[8];
        if constexpr (EXACT) raw[r][i].unpack_exact(wf);
        else raw[r][i].unpack(wf);
        float sum = acc[m][r];
#pragma unroll
        for (int j = 0; j < 8; ++j) sum += xv[j] * wf[j];
        acc[m][r] = sum;
      }
    }
  }
  if constexpr (GATED) gated_finish<M>(p, partial, acc, slice, lane, slices, n0, up_bias, ys, m0);
  else rows_finish<M>(p, partial, acc, slice, lane, slices, n0, b, ys, m0);
}

// Launches gemv_preload_kernel when it applies (aligned rows, K % 8 == 0, K up to kMaxSlices * 256 *
// the largest ITERS for W); false otherwise. Slices of 256 K values per chunk of eight per lane.
// GATED: `up` and `up_bias` as in the kernel (batch 1).
template <int M, typename W, bool GATED = false, bool EXACT = false>
bool launch_preload(const LinearParams& p, int64_t xs, int64_t ys, int64_t m0, cudaStream_t s, cudaError_t* e,
                    const W* up = nullptr, const float* up_bias = nullptr) {
  constexpr int64_t kMaxIters = std::is_same_v<W, float> ? 4 : 8;
  const void* w = std::is_same_v<W, float> ? static_cast<const void*>(p.w) : static_cast<const void*>(p.w_bf16);
  const bool aligned = reinterpret_cast<uintptr_t>(w) % 16 == 0 && p.w_batch_stride % 8 == 0 &&
                       reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && xs % 4 == 0 && p.x_batch_stride % 4 == 0 &&
                       reinterpret_cast<uintptr_t>(up) % 16 == 0;
  if (!aligned || p.K % 8 != 0 || p.K > kMaxSlices * 256 * kMaxIters) return false;
  int64_t iters = 1;
  while (p.K > kMaxSlices * 256 * iters) iters *= 2;
  const int64_t slices = (p.K + 256 * iters - 1) / (256 * iters);
  const int64_t slice_k = ((p.K + slices - 1) / slices + 7) / 8 * 8;
  constexpr int64_t cols = GATED ? kGatedCols : kRowsPerWarp;
  const dim3 grid(static_cast<unsigned>((p.N + cols - 1) / cols), static_cast<unsigned>(p.batch));
  const unsigned threads = static_cast<unsigned>(slices * 32);
  switch (iters) {
    case 1:
      *e = launch_dependent(gemv_preload_kernel<M, 1, W, GATED, EXACT>, grid, threads, 0, s, p, xs, ys, m0, slice_k, up, up_bias);
      break;
    case 2:
      *e = launch_dependent(gemv_preload_kernel<M, 2, W, GATED, EXACT>, grid, threads, 0, s, p, xs, ys, m0, slice_k, up, up_bias);
      break;
    case 4:
      *e = launch_dependent(gemv_preload_kernel<M, 4, W, GATED, EXACT>, grid, threads, 0, s, p, xs, ys, m0, slice_k, up, up_bias);
      break;
    default:
      if constexpr (kMaxIters >= 8)
        *e = launch_dependent(gemv_preload_kernel<M, 8, W, GATED, EXACT>, grid, threads, 0, s, p, xs, ys, m0, slice_k, up,
                              up_bias);
      break;
  }
  return true;
}

// w[K, N] row-major (w_transposed): one thread per (n, up to 8 rows), k sequential, coalesced over n.
template <int M>
__global__ void gemv_bf16_transposed_kernel(LinearParams p, int64_t xs, int64_t ys, int64_t m0) {
  dependent_start();
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= p.N) return;
  const int64_t b = blockIdx.y;
  const float* x = p.x + b * p.x_batch_stride + m0 * xs;
  const uint16_t* w = p.w_bf16 + b * p.w_batch_stride + n;
  float acc[M] = {};
  for (int64_t k = 0; k < p.K; ++k) {
    const float wk = widen_bf16(__ldg(w + k * p.N));
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] += round_bf16(__ldg(x + m * xs + k)) * wk;
  }
  float* y = p.y + b * p.y_batch_stride + m0 * ys + n;
  const float bias = p.bias ? p.bias[b * p.bias_batch_stride + n] : 0.0f;
#pragma unroll
  for (int m = 0; m < M; ++m) y[m * ys] = p.accumulate ? y[m * ys] + acc[m] + bias : acc[m] + bias;
}

// The same with the K sum split over kSlices warps and two columns per lane (32-bit loads of bf16
// pairs: 128 B per warp per k), partial sums added in slice order (deterministic). Needs N even and
// 4-byte aligned weight rows; 64 columns per block.
constexpr int kSlices = 4;

// The end of both transposed kernels: each warp's sums for its lane's two columns go through shared
// memory and are added in slice order, plus bias, into (or onto) y.
template <int M>
__device__ __forceinline__ void columns_finish(const LinearParams& p, float (&partial)[kSlices][M][64],
                                               const float (&acc)[M][2], int slice, int lane, int64_t n, int64_t b,
                                               int64_t ys, int64_t m0) {
#pragma unroll
  for (int m = 0; m < M; ++m) {
    partial[slice][m][2 * lane] = acc[m][0];
    partial[slice][m][2 * lane + 1] = acc[m][1];
  }
  __syncthreads();
  if (slice != 0) return;
  float* y = p.y + b * p.y_batch_stride + m0 * ys;
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const int64_t col = n + c;
    if (col >= p.N) break;
    const float bias = p.bias ? p.bias[b * p.bias_batch_stride + col] : 0.0f;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float v = 0.0f;
#pragma unroll
      for (int sl = 0; sl < kSlices; ++sl) v += partial[sl][m][2 * lane + c];
      y[m * ys + col] = p.accumulate ? y[m * ys + col] + v + bias : v + bias;
    }
  }
}

template <int M>
__global__ void gemv_bf16_transposed_split_kernel(LinearParams p, int64_t xs, int64_t ys, int64_t m0) {
  __shared__ float partial[kSlices][M][64];
  const int lane = threadIdx.x % 32, slice = threadIdx.x / 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * 64 + 2 * lane, b = blockIdx.y;
  dependent_start();
  const float* x = p.x + b * p.x_batch_stride + m0 * xs;
  float acc[M][2] = {};
  if (n < p.N) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(p.w_bf16 + b * p.w_batch_stride + n);
    const int64_t row_words = p.N / 2;
#pragma unroll 8
    for (int64_t k = slice; k < p.K; k += kSlices) {
      const uint32_t pair = __ldg(w + k * row_words);
      const float w0 = widen_bf16(pair & 0xffffu), w1 = __uint_as_float(pair & 0xffff0000u);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float xv = round_bf16(__ldg(x + m * xs + k));
        acc[m][0] += xv * w0;
        acc[m][1] += xv * w1;
      }
    }
  }
  columns_finish<M>(p, partial, acc, slice, lane, n, b, ys, m0);
}

// The transposed split kernel with a thread's KPT weight pairs (k = slice, slice + kSlices, ...) loaded
// before the wait, as gemv_preload_kernel does; K <= kSlices * KPT. Absorbed-MLA decode's q . W_UK
// (K = qk_nope_head_dim = 128) is this shape.
template <int M, int KPT>
__global__ void gemv_bf16_transposed_preload_kernel(LinearParams p, int64_t xs, int64_t ys, int64_t m0) {
  __shared__ float partial[kSlices][M][64];
  const int lane = threadIdx.x % 32, slice = threadIdx.x / 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * 64 + 2 * lane, b = blockIdx.y;
  const uint32_t* w = reinterpret_cast<const uint32_t*>(p.w_bf16 + b * p.w_batch_stride + (n < p.N ? n : 0));
  const int64_t row_words = p.N / 2;
  uint32_t pairs[KPT];
#pragma unroll
  for (int i = 0; i < KPT; ++i) {
    const int64_t k = slice + static_cast<int64_t>(i) * kSlices;
    pairs[i] = k < p.K ? __ldg(w + k * row_words) : 0u;
  }
  dependent_start();
  // x's M rows of K (<= kSlices * KPT) values, rounded, staged in shared memory: every load issued
  // before any is used. (Read in the product loop, each x load sat behind the loop's exit branch:
  // KPT dependent L2 round trips, ~5 us of a 16 x [128 x 512] W_UK product on the H100.)
  constexpr int kRowK = kSlices * KPT, kThreadsT = kSlices * 32, kPer = (M * kRowK + kThreadsT - 1) / kThreadsT;
  __shared__ float x_smem[M][kRowK];
  {
    const float* x = p.x + b * p.x_batch_stride + m0 * xs;
    float staged[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int idx = threadIdx.x + j * kThreadsT, m = idx / kRowK, k = idx % kRowK;
      staged[j] = m < M && k < p.K ? x[m * xs + k] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int idx = threadIdx.x + j * kThreadsT;
      if (idx < M * kRowK) x_smem[idx / kRowK][idx % kRowK] = round_bf16(staged[j]);
    }
  }
  __syncthreads();
  float acc[M][2] = {};
#pragma unroll
  for (int i = 0; i < KPT; ++i) {  // past K: zero weights and zero x
    const int k = slice + i * kSlices;
    const float w0 = widen_bf16(pairs[i] & 0xffffu), w1 = __uint_as_float(pairs[i] & 0xffff0000u);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float xv = x_smem[m][k];
      acc[m][0] += xv * w0;
      acc[m][1] += xv * w1;
    }
  }
  columns_finish<M>(p, partial, acc, slice, lane, n, b, ys, m0);
}

template <int M>
cudaError_t launch_rows(const LinearParams& p, int64_t xs, int64_t ys, int64_t m0, cudaStream_t s) {
  const unsigned batch = static_cast<unsigned>(p.batch);
  const bool pairs = p.N % 2 == 0 && p.w_batch_stride % 2 == 0 && reinterpret_cast<uintptr_t>(p.w_bf16) % 4 == 0;
  if (p.w_transposed && pairs && p.K <= kSlices * 32) {
    const dim3 grid(static_cast<unsigned>((p.N + 63) / 64), batch);
    if (p.K <= kSlices * 8)
      return launch_dependent(gemv_bf16_transposed_preload_kernel<M, 8>, grid, kSlices * 32, 0, s, p, xs, ys, m0);
    return launch_dependent(gemv_bf16_transposed_preload_kernel<M, 32>, grid, kSlices * 32, 0, s, p, xs, ys, m0);
  }
  if (p.w_transposed && pairs) {
    return launch_dependent(gemv_bf16_transposed_split_kernel<M>, dim3(static_cast<unsigned>((p.N + 63) / 64), batch),
                            kSlices * 32, 0, s, p, xs, ys, m0);
  } else if (p.w_transposed) {
    return launch_dependent(gemv_bf16_transposed_kernel<M>, dim3(static_cast<unsigned>((p.N + 127) / 128), batch), 128, 0,
                            s, p, xs, ys, m0);
  }
  // Weights into registers before the wait: the usual case (aligned rows, K % 8 == 0, K up to 16384).
  cudaError_t e = cudaSuccess;
  if (launch_preload<M, uint16_t>(p, xs, ys, m0, s, &e)) return e;
  {
    // Split K only as far as needed for about kWantWarps warps in all (each a few loads in flight;
    // more, smaller blocks only add block overhead): slices of at least 256 K values (one 16-byte
    // load per lane per row), at most kMaxSlices. Measured on the H100 (ncu, 2026-11-23) with 8
    // slices everywhere: 576 x 2048 9.6 -> 5.0 us, 1408 x 2048 10.9 -> 8.4 us, 10944 x 2048 no
    // change, the 102400 x 2048 LM head 139 -> 144 us.
    constexpr int64_t kWantWarps = 1024;
    const int64_t groups = (p.N + kRowsPerWarp - 1) / kRowsPerWarp * p.batch;
    int64_t slices = (kWantWarps + groups - 1) / groups;
    const int64_t by_k = p.K / 256;
    slices = slices > by_k ? by_k : slices;
    slices = slices < 1 ? 1 : (slices > kMaxSlices ? kMaxSlices : slices);
    const int64_t slice_k = ((p.K + slices - 1) / slices + 7) / 8 * 8;
    if (slices > 1)
      return launch_dependent(gemv_bf16_split_kernel<M>,
                              dim3(static_cast<unsigned>((p.N + kRowsPerWarp - 1) / kRowsPerWarp), batch),
                              static_cast<unsigned>(slices * 32), 0, s, p, xs, ys, m0, slice_k);
    return launch_dependent(gemv_bf16_kernel<M>, dim3(static_cast<unsigned>((p.N + kRowsPerBlock - 1) / kRowsPerBlock), batch),
                            kWarps * 32, 0, s, p, xs, ys, m0);
  }
}

__global__ void cast_to_bf16_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, int64_t n) {
  dependent_start();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}

// Four values per thread (16-byte loads, 8-byte stores) for aligned buffers: the one-value kernel
// moved ~2 TB/s, short of the copy bandwidth, and these casts of activations and gradients for bf16
// products are a few percent of a training step.
__global__ void cast_to_bf16_vec4_kernel(const float4* __restrict__ x, uint2* __restrict__ y, int64_t n4) {
  dependent_start();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float4 v = x[i];
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
    y[i] = make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
  }
}

__global__ void cast_to_f32_kernel(const uint16_t* __restrict__ x, float* __restrict__ y, int64_t n) {
  dependent_start();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = widen_bf16(x[i]);
}

}  // namespace

cudaError_t linear_bf16_rows(const LinearParams& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  const int64_t xs = p.x_stride ? p.x_stride : p.K, ys = p.y_stride ? p.y_stride : p.N;
  int64_t m0 = 0;
  for (; m0 + 8 <= p.M; m0 += 8) {
    const cudaError_t e = launch_rows<8>(p, xs, ys, m0, stream);
    if (e != cudaSuccess) return e;
  }
  switch (p.M - m0) {
    case 0: return cudaSuccess;
    case 1: return launch_rows<1>(p, xs, ys, m0, stream);
    case 2: return launch_rows<2>(p, xs, ys, m0, stream);
    case 3: return launch_rows<3>(p, xs, ys, m0, stream);
    case 4: return launch_rows<4>(p, xs, ys, m0, stream);
    case 5: return launch_rows<5>(p, xs, ys, m0, stream);
    case 6: return launch_rows<6>(p, xs, ys, m0, stream);
    default: return launch_rows<7>(p, xs, ys, m0, stream);
  }
}

cudaError_t gated_linear(const GatedLinearParams& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (p.gate_bf16 && p.M <= 8 && p.K > 0) {  // one pass of the preload kernel, gate and up rows together
    const LinearParams q{.x = p.x, .w_bf16 = p.gate_bf16, .bias = p.gate_bias, .y = p.y, .M = p.M, .N = p.N, .K = p.K};
    cudaError_t e = cudaSuccess;
    bool launched = false;
    switch (p.M) {
      case 1: launched = launch_preload<1, uint16_t, true>(q, p.K, p.N, 0, stream, &e, p.up_bf16, p.up_bias); break;
      case 2: launched = launch_preload<2, uint16_t, true>(q, p.K, p.N, 0, stream, &e, p.up_bf16, p.up_bias); break;
      case 3: launched = launch_preload<3, uint16_t, true>(q, p.K, p.N, 0, stream, &e, p.up_bf16, p.up_bias); break;
      case 4: launched = launch_preload<4, uint16_t, true>(q, p.K, p.N, 0, stream, &e, p.up_bf16, p.up_bias); break;
      case 5: launched = launch_preload<5, uint16_t, true>(q, p.K, p.N, 0, stream, &e, p.up_bf16, p.up_bias); break;
      case 6: launched = launch_preload<6, uint16_t, true>(q, p.K, p.N, 0, stream, &e, p.up_bf16, p.up_bias); break;
      case 7: launched = launch_preload<7, uint16_t, true>(q, p.K, p.N, 0, stream, &e, p.up_bf16, p.up_bias); break;
      default: launched = launch_preload<8, uint16_t, true>(q, p.K, p.N, 0, stream, &e, p.up_bf16, p.up_bias); break;
    }
    if (launched || e != cudaSuccess) return e;
  }
  if (gated_linear_tma_supported(p)) return gated_linear_tma(p, stream);
  DeviceScratch scratch;  // the unfused ops: gate into y, up beside it, SwiGLU in place
  float* up = scratch.get<float>(p.M * p.N);
  if (!up) return cudaErrorMemoryAllocation;
  cudaError_t e = linear({.x = p.x, .w = p.gate, .w_bf16 = p.gate_bf16, .bias = p.gate_bias, .y = p.y, .M = p.M,
                          .N = p.N, .K = p.K}, stream);
  if (e == cudaSuccess)
    e = linear({.x = p.x, .w = p.up, .w_bf16 = p.up_bf16, .bias = p.up_bias, .y = up, .M = p.M, .N = p.N, .K = p.K},
               stream);
  if (e == cudaSuccess) e = swiglu({.gate = p.y, .up = up, .out = p.y, .n = p.M * p.N}, stream);
  return e;
}

template <bool EXACT>
cudaError_t linear_f32w_rows(const LinearParams& p, cudaStream_t stream, bool* launched) {
  *launched = false;
  if (p.M == 0 || p.N == 0 || p.w_transposed) return cudaSuccess;
  const int64_t xs = p.x_stride ? p.x_stride : p.K, ys = p.y_stride ? p.y_stride : p.N;
  cudaError_t e = cudaSuccess;
  int64_t m0 = 0;
  for (; m0 < p.M && e == cudaSuccess; m0 += 8) {
    bool ok = false;
    switch (p.M - m0 < 8 ? p.M - m0 : 8) {
      case 1: ok = launch_preload<1, float, false, EXACT>(p, xs, ys, m0, stream, &e); break;
      case 2: ok = launch_preload<2, float, false, EXACT>(p, xs, ys, m0, stream, &e); break;
      case 3: ok = launch_preload<3, float, false, EXACT>(p, xs, ys, m0, stream, &e); break;
      case 4: ok = launch_preload<4, float, false, EXACT>(p, xs, ys, m0, stream, &e); break;
      case 5: ok = launch_preload<5, float, false, EXACT>(p, xs, ys, m0, stream, &e); break;
      case 6: ok = launch_preload<6, float, false, EXACT>(p, xs, ys, m0, stream, &e); break;
      case 7: ok = launch_preload<7, float, false, EXACT>(p, xs, ys, m0, stream, &e); break;
      default: ok = launch_preload<8, float, false, EXACT>(p, xs, ys, m0, stream, &e); break;
    }
    if (!ok) return cudaSuccess;  // the same for every pass: nothing launched
    *launched = true;
  }
  return e;
}

cudaError_t linear_f32w_bf16_rows(const LinearParams& p, cudaStream_t stream, bool* launched) {
  return linear_f32w_rows<false>(p, stream, launched);
}
cudaError_t linear_f32_rows(const LinearParams& p, cudaStream_t stream, bool* launched) {
  return linear_f32w_rows<true>(p, stream, launched);
}

cudaError_t cast(const CastParams& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  const int64_t blocks = (p.n + 255) / 256;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);
  const bool aligned = reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && reinterpret_cast<uintptr_t>(p.y) % 8 == 0;
  if (p.to_bf16 && aligned && p.n >= 4) {
    const int64_t n4 = p.n / 4, tail = p.n - 4 * n4, b4 = (n4 + 255) / 256;
    cudaError_t e = launch_dependent(cast_to_bf16_vec4_kernel, static_cast<unsigned>(b4 < 65535 * 16 ? b4 : 65535 * 16),
                                     256, 0, stream, static_cast<const float4*>(p.x), static_cast<uint2*>(p.y), n4);
    if (e == cudaSuccess && tail)
      e = launch_dependent(cast_to_bf16_kernel, 1, 32, 0, stream, static_cast<const float*>(p.x) + 4 * n4,
                           static_cast<__nv_bfloat16*>(p.y) + 4 * n4, tail);
    return e;
  }
  if (p.to_bf16)
    return launch_dependent(cast_to_bf16_kernel, grid, 256, 0, stream, static_cast<const float*>(p.x),
                            static_cast<__nv_bfloat16*>(p.y), p.n);
  return launch_dependent(cast_to_f32_kernel, grid, 256, 0, stream, static_cast<const uint16_t*>(p.x),
                          static_cast<float*>(p.y), p.n);
}

}  // namespace dsv::ops::cuda
