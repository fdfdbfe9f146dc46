// Deterministic column sums (bias gradients, rmsnorm weight gradients): rows are split into a fixed
// number of chunks that depends only on the sizes; stage 1 sums each (chunk, 32-column tile) in a
// fixed order, stage 2 adds the chunk partials in chunk order.
#include "backends/cuda/cuda_ops.h"

namespace dsv::ops::cuda {
namespace {

constexpr int kCols = 32, kRowThreads = 8;
constexpr int64_t kRowsPerChunk = 256, kMaxChunks = 1024, kMaxScratch = int64_t{16} << 20;  // floats

struct ColumnSumArgs {
  const float* a;
  int64_t a_stride;
  const float* b;
  int64_t b_stride;
  const float* row_scale;
  float* out;  // partials [chunks, cols], or the result when there is one chunk
  int64_t rows, cols, rows_per_chunk;
  bool accumulate;  // only used when writing the result directly
};

__global__ void column_sum_stage1(ColumnSumArgs p) {
  __shared__ float partial[kRowThreads][kCols + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * p.rows_per_chunk;
  const int64_t r1 = r0 + p.rows_per_chunk < p.rows ? r0 + p.rows_per_chunk : p.rows;
  float acc = 0.0f;
  if (c < p.cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowThreads) {
      float v = p.a[r * p.a_stride + c];
      if (p.b) v *= p.b[r * p.b_stride + c];
      if (p.row_scale) v *= p.row_scale[r];
      acc += v;
    }
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < p.cols) {
    float sum = 0.0f;
    for (int i = 0; i < kRowThreads; ++i) sum += partial[i][threadIdx.x];
    if (gridDim.y == 1) p.out[c] = p.accumulate ? p.out[c] + sum : sum;
    else p.out[static_cast<int64_t>(blockIdx.y) * p.cols + c] = sum;
  }
}

__global__ void column_sum_stage2(const float* partial, float* out, int64_t chunks, int64_t cols, bool accumulate) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < cols;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int64_t i = 0; i < chunks; ++i) sum += partial[i * cols + c];
    out[c] = accumulate ? out[c] + sum : sum;
  }
}

__global__ void fill_kernel(float* out, int64_t n, float value) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = value;
}

}  // namespace

cudaError_t column_sum(const float* a, int64_t a_stride, const float* b, int64_t b_stride, const float* row_scale,
                       float* out, int64_t rows, int64_t cols, bool accumulate, cudaStream_t stream) {
  if (cols <= 0) return cudaSuccess;
  if (rows <= 0) {
    if (accumulate) return cudaSuccess;
    const int64_t blocks = (cols + 255) / 256;
    fill_kernel<<<static_cast<unsigned>(blocks < 4096 ? blocks : 4096), 256, 0, stream>>>(out, cols, 0.0f);
    return cudaGetLastError();
  }
  int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  if (chunks > kMaxChunks) chunks = kMaxChunks;
  const int64_t scratch_cap = kMaxScratch / cols > 1 ? kMaxScratch / cols : 1;
  if (chunks > scratch_cap) chunks = scratch_cap;
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  float* partial = nullptr;
  if (chunks > 1) {
    partial = static_cast<float*>(cached_allocate(static_cast<size_t>(chunks * cols) * sizeof(float)));
    if (!partial) return cudaErrorMemoryAllocation;
  }
  const ColumnSumArgs args{a, a_stride, b, b_stride, row_scale, chunks > 1 ? partial : out, rows, cols,
                           rows_per_chunk, accumulate};
  const dim3 grid(static_cast<unsigned>((cols + kCols - 1) / kCols), static_cast<unsigned>(chunks));
  column_sum_stage1<<<grid, dim3(kCols, kRowThreads), 0, stream>>>(args);
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess && chunks > 1) {
    const int64_t blocks = (cols + 255) / 256;
    column_sum_stage2<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), 256, 0, stream>>>(partial, out, chunks,
                                                                                                  cols, accumulate);
    e = cudaGetLastError();
  }
  if (partial) cached_release(partial);  // stream-ordered reuse (one stream), as the allocator expects
  return e;
}

}  // namespace dsv::ops::cuda
