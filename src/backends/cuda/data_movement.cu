// Data movement kernels, twins of backends/cpu/data_movement.cpp. Grid-stride loops over elements.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 256;
unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);
}
#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void embed_kernel(EmbedParams p) {
  dependent_start();
  GRID_STRIDE(i, p.T * p.D) p.out[i] = p.table[static_cast<int64_t>(p.ids[i / p.D]) * p.D + i % p.D];
}
__global__ void add_kernel(AddParams p) {
  dependent_start();
  GRID_STRIDE(i, p.n) p.y[i] += p.x[i];
}
// Element groups (vec floats of one row) over the flattened (batch, row, group) index: consecutive
// threads move consecutive groups of a row and then of the next rows, so short rows (the MLA key /
// value assembly copies 64- and 128-float rows of 65k-row prefill tensors) still fill whole blocks;
// one block per row left 128-float rows to single-warp blocks at ~0.8 TB/s. float4 moves when every
// row start is 16-byte aligned (vec = 4).
template <int vec>
__global__ void copy2d_kernel(Copy2dParams p, int64_t groups) {
  dependent_start();
  GRID_STRIDE(i, p.batch * p.rows * groups) {
    const int64_t y = i / groups, c = i % groups, b = y / p.rows, r = y % p.rows;
    float* dst = p.dst + b * p.dst_batch_stride + r * p.dst_stride;
    const float* src = p.src ? p.src + b * p.src_batch_stride + r * p.src_stride : nullptr;
    if constexpr (vec == 4)
      reinterpret_cast<float4*>(dst)[c] = src ? reinterpret_cast<const float4*>(src)[c] : make_float4(0.f, 0.f, 0.f, 0.f);
    else
      dst[c] = src ? src[c] : 0.0f;
  }
}
__global__ void gather_rows_kernel(RowsParams p) {
  dependent_start();
  GRID_STRIDE(i, p.n * p.D) {
    const int64_t r = i / p.D;
    const float v = p.x[static_cast<int64_t>(p.rows[r]) * p.D + i % p.D];
    p.y[i] = p.scale ? p.scale[r] * v : v;
  }
}
__global__ void scatter_add_rows_kernel(RowsParams p) {  // rows are unique within a call: no races
  dependent_start();
  GRID_STRIDE(i, p.n * p.D) {
    const int64_t r = i / p.D;
    p.y[static_cast<int64_t>(p.rows[r]) * p.D + i % p.D] += (p.scale ? p.scale[r] : 1.0f) * p.x[i];
  }
}

__global__ void store_rows_kernel(StoreRowsParams p, int64_t ys) {  // rows are unique: no races
  dependent_start();
  GRID_STRIDE(i, p.n * p.D) {
    const int64_t dst = static_cast<int64_t>(p.rows[i / p.D]) * ys + i % p.D;
    if (p.y) p.y[dst] = p.x[i];
    else reinterpret_cast<__nv_bfloat16*>(p.y_bf16)[dst] = __float2bfloat16_rn(p.x[i]);
  }
}

}  // namespace

cudaError_t store_rows(const StoreRowsParams& p, cudaStream_t s) {
  if (p.n * p.D == 0) return cudaSuccess;
  return launch_dependent(store_rows_kernel, blocks_for(p.n * p.D), kThreads, 0, s, p, p.y_stride ? p.y_stride : p.D);
}
cudaError_t embed(const EmbedParams& p, cudaStream_t s) {
  return launch_dependent(embed_kernel, blocks_for(p.T * p.D), kThreads, 0, s, p);
}
cudaError_t add(const AddParams& p, cudaStream_t s) {
  return launch_dependent(add_kernel, blocks_for(p.n), kThreads, 0, s, p);
}
cudaError_t copy2d(const Copy2dParams& p, cudaStream_t s) {
  const int64_t rows = p.batch * p.rows;
  if (rows == 0 || p.cols == 0) return cudaSuccess;
  const auto aligned = [](const void* ptr, int64_t a, int64_t b, int64_t c) {
    return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && a % 4 == 0 && b % 4 == 0 && c % 4 == 0;
  };
  const bool vec4 = aligned(p.dst, p.dst_stride, p.dst_batch_stride, p.cols) &&
                    (!p.src || aligned(p.src, p.src_stride, p.src_batch_stride, 0));
  const int64_t groups = vec4 ? p.cols / 4 : p.cols;
  return launch_dependent(vec4 ? copy2d_kernel<4> : copy2d_kernel<1>, blocks_for(rows * groups), kThreads, 0, s, p,
                          groups);
}
cudaError_t gather_rows(const RowsParams& p, cudaStream_t s) {
  return launch_dependent(gather_rows_kernel, blocks_for(p.n * p.D), kThreads, 0, s, p);
}
cudaError_t scatter_add_rows(const RowsParams& p, cudaStream_t s) {
  return launch_dependent(scatter_add_rows_kernel, blocks_for(p.n * p.D), kThreads, 0, s, p);
}

}  // namespace dsv::ops::cuda

#include "ops/counter_rng.h"

namespace dsv::ops::cuda {
namespace {
__global__ void fill_random_kernel(FillRandomParams p) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p.x[i] = p.mean + p.std * counter_normal(p.seed, static_cast<uint64_t>(i));
}
}  // namespace

cudaError_t fill_random(const FillRandomParams& p, cudaStream_t s) {
  if (p.n == 0) return cudaSuccess;
  const int64_t blocks = (p.n + 255) / 256;
  fill_random_kernel<<<static_cast<unsigned>(blocks < 65535 * 8 ? blocks : 65535 * 8), 256, 0, s>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
