// Greedy choice per row on the device (twin of backends/cpu/argmax.cpp). Each row is cut into slices,
// one block each (so a single row of a 100k vocabulary still spreads over the GPU); a thread keeps its
// best (value, index) over a strided part of its slice, a shared-memory tree keeps the larger value
// and, on ties, the lower index (NaNs never enter); a second kernel merges the slices of each row.
#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 256;

// Whether candidate (v, i) beats (bv, bi); an index < 0 is "nothing yet".
__device__ __forceinline__ bool better(float v, int64_t i, float bv, int64_t bi) {
  return i >= 0 && (bi < 0 || v > bv || (v == bv && i < bi));
}

// Grid (slices, rows): slice s of row r covers [s * slice, (s + 1) * slice) ∩ [0, n).
__global__ void argmax_slices_kernel(ArgmaxParams p, int64_t slice, float* best_values, int64_t* best_indices) {
  __shared__ float values[kThreads];
  __shared__ int64_t indices[kThreads];
  dependent_start();
  const float* x = p.x + static_cast<int64_t>(blockIdx.y) * p.n;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * slice, end = begin + slice < p.n ? begin + slice : p.n;
  float bv = 0.0f;
  int64_t bi = -1;
#pragma unroll 4
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const float v = x[i];
    if (!isnan(v) && better(v, i, bv, bi)) bv = v, bi = i;
  }
  values[threadIdx.x] = bv;
  indices[threadIdx.x] = bi;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      const int o = threadIdx.x + stride;
      if (better(values[o], indices[o], values[threadIdx.x], indices[threadIdx.x])) {
        values[threadIdx.x] = values[o];
        indices[threadIdx.x] = indices[o];
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const int64_t slot = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
    best_values[slot] = values[0];
    best_indices[slot] = indices[0];
  }
}

// One thread per row: the slices' winners in order (ties: the earlier slice has the lower index).
__global__ void argmax_merge_kernel(ArgmaxParams p, int64_t slices, const float* best_values,
                                    const int64_t* best_indices) {
  dependent_start();
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= p.rows) return;
  float bv = 0.0f;
  int64_t bi = -1;
  for (int64_t s = 0; s < slices; ++s)
    if (better(best_values[r * slices + s], best_indices[r * slices + s], bv, bi))
      bv = best_values[r * slices + s], bi = best_indices[r * slices + s];
  p.out[r] = static_cast<int32_t>(bi < 0 ? 0 : bi);
}

}  // namespace

cudaError_t argmax_rows(const ArgmaxParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  // About 256 blocks in all, slices of at least 4096 values.
  int64_t slices = (256 + p.rows - 1) / p.rows, max_slices = (p.n + 4095) / 4096;
  slices = slices < max_slices ? slices : max_slices;
  slices = slices < 1 ? 1 : slices;
  const int64_t slice = (p.n + slices - 1) / slices;
  slices = (p.n + slice - 1) / slice;
  if (p.rows > 65535) return cudaErrorInvalidValue;
  char* scratch = static_cast<char*>(cached_allocate(static_cast<size_t>(p.rows * slices) * (sizeof(float) + sizeof(int64_t))));
  if (!scratch) return cudaErrorMemoryAllocation;
  int64_t* best_indices = reinterpret_cast<int64_t*>(scratch);
  float* best_values = reinterpret_cast<float*>(scratch + p.rows * slices * sizeof(int64_t));
  cudaError_t e = launch_dependent(argmax_slices_kernel, dim3(static_cast<unsigned>(slices), static_cast<unsigned>(p.rows)),
                                   kThreads, 0, stream, p, slice, best_values, best_indices);
  if (e == cudaSuccess)
    e = launch_dependent(argmax_merge_kernel, static_cast<unsigned>((p.rows + 127) / 128), 128, 0, stream, p, slices,
                         static_cast<const float*>(best_values), static_cast<const int64_t*>(best_indices));
  cached_release(scratch);  // stream-ordered reuse
  return e;
}

}  // namespace dsv::ops::cuda
