// Data movement kernels, twins of backends/cpu/data_movement.cpp. Grid-stride loops over elements.
#include <cuda_bf16.h>

#include "backends/cuda/cuda_ops.h"

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
  GRID_STRIDE(i, p.T * p.D) p.out[i] = p.table[static_cast<int64_t>(p.ids[i / p.D]) * p.D + i % p.D];
}
__global__ void add_kernel(AddParams p) {
  GRID_STRIDE(i, p.n) p.y[i] += p.x[i];
}
__global__ void copy2d_kernel(Copy2dParams p) {
  GRID_STRIDE(i, p.batch * p.rows * p.cols) {
    const int64_t c = i % p.cols, r = (i / p.cols) % p.rows, b = i / (p.cols * p.rows);
    p.dst[b * p.dst_batch_stride + r * p.dst_stride + c] =
        p.src ? p.src[b * p.src_batch_stride + r * p.src_stride + c] : 0.0f;
  }
}
__global__ void gather_rows_kernel(RowsParams p) {
  GRID_STRIDE(i, p.n * p.D) {
    const int64_t r = i / p.D;
    const float v = p.x[static_cast<int64_t>(p.rows[r]) * p.D + i % p.D];
    p.y[i] = p.scale ? p.scale[r] * v : v;
  }
}
__global__ void scatter_add_rows_kernel(RowsParams p) {  // rows are unique within a call: no races
  GRID_STRIDE(i, p.n * p.D) {
    const int64_t r = i / p.D;
    p.y[static_cast<int64_t>(p.rows[r]) * p.D + i % p.D] += (p.scale ? p.scale[r] : 1.0f) * p.x[i];
  }
}

__global__ void store_rows_kernel(StoreRowsParams p, int64_t ys) {  // rows are unique: no races
  GRID_STRIDE(i, p.n * p.D) {
    const int64_t dst = static_cast<int64_t>(p.rows[i / p.D]) * ys + i % p.D;
    if (p.y) p.y[dst] = p.x[i];
    else reinterpret_cast<__nv_bfloat16*>(p.y_bf16)[dst] = __float2bfloat16_rn(p.x[i]);
  }
}

}  // namespace

cudaError_t store_rows(const StoreRowsParams& p, cudaStream_t s) {
  if (p.n * p.D == 0) return cudaSuccess;
  store_rows_kernel<<<blocks_for(p.n * p.D), kThreads, 0, s>>>(p, p.y_stride ? p.y_stride : p.D);
  return cudaGetLastError();
}
cudaError_t embed(const EmbedParams& p, cudaStream_t s) {
  embed_kernel<<<blocks_for(p.T * p.D), kThreads, 0, s>>>(p);
  return cudaGetLastError();
}
cudaError_t add(const AddParams& p, cudaStream_t s) {
  add_kernel<<<blocks_for(p.n), kThreads, 0, s>>>(p);
  return cudaGetLastError();
}
cudaError_t copy2d(const Copy2dParams& p, cudaStream_t s) {
  copy2d_kernel<<<blocks_for(p.batch * p.rows * p.cols), kThreads, 0, s>>>(p);
  return cudaGetLastError();
}
cudaError_t gather_rows(const RowsParams& p, cudaStream_t s) {
  gather_rows_kernel<<<blocks_for(p.n * p.D), kThreads, 0, s>>>(p);
  return cudaGetLastError();
}
cudaError_t scatter_add_rows(const RowsParams& p, cudaStream_t s) {
  scatter_add_rows_kernel<<<blocks_for(p.n * p.D), kThreads, 0, s>>>(p);
  return cudaGetLastError();
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
