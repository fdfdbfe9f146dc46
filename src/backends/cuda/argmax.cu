// Greedy choice per row on the device (twin of backends/cpu/argmax.cpp). Each row is cut into slices,
// one block each (so a single row of a 100k vocabulary still spreads over the GPU); a thread keeps its
// best (value, index) over a strided part of its slice, warp shuffles keep the larger value and, on
// ties, the lower index (NaNs never enter); a second kernel, a warp per row, merges the slices.
#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxSlices = 256;  // slices per row (argmax_rows asks for about 256 blocks in all)

// Whether candidate (v, i) beats (bv, bi); an index < 0 is "nothing yet".
__device__ __forceinline__ bool better(float v, int64_t i, float bv, int64_t bi) {
  return i >= 0 && (bi < 0 || v > bv || (v == bv && i < bi));
}

// (v, i) becomes the better of itself and every other lane's: the order is total (NaNs never enter),
// so the butterfly gives every lane the same winner whatever the pairing.
__device__ __forceinline__ void warp_best(float& v, int64_t& i) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(ov, oi, v, i)) v = ov, i = oi;
  }
}

// Grid (slices, rows): slice s of row r covers [s * slice, (s + 1) * slice) ∩ [0, n). Threads keep a
// strided best, warps merge by shuffles, the first warp merges the warps' winners.
__global__ void argmax_slices_kernel(ArgmaxParams p, int64_t slice, float* best_values, int64_t* best_indices) {
  __shared__ float values[kThreads / 32];
  __shared__ int64_t indices[kThreads / 32];
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
  warp_best(bv, bi);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) values[warp] = bv, indices[warp] = bi;
  __syncthreads();
  if (warp != 0) return;
  bv = lane < kThreads / 32 ? values[lane] : 0.0f;
  bi = lane < kThreads / 32 ? indices[lane] : -1;
  warp_best(bv, bi);
  if (lane == 0) {
    const int64_t at = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
    best_values[at] = bv;
    best_indices[at] = bi;
  }
}

// One warp per row: lanes take slices l, l + 32, ..., then the warp merges them.
__global__ void argmax_merge_kernel(ArgmaxParams p, int64_t slices, const float* best_values,
                                    const int64_t* best_indices) {
  dependent_start();
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= p.rows) return;
  const int lane = threadIdx.x % 32;
  float bv = 0.0f;
  int64_t bi = -1;
  // A lane's slices (at most kMaxSlices / 32) loaded all at once, then compared: in one loop, each
  // trip's loads waited for the trip before.
  constexpr int kPerLane = kMaxSlices / 32;
  float v[kPerLane];
  int64_t i[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t s = lane + 32 * j;
    v[j] = s < slices ? best_values[r * slices + s] : 0.0f;
    i[j] = s < slices ? best_indices[r * slices + s] : -1;
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j)
    if (better(v[j], i[j], bv, bi)) bv = v[j], bi = i[j];
  warp_best(bv, bi);
  if (lane == 0) p.out[r] = static_cast<int32_t>(bi < 0 ? 0 : bi);
}

}  // namespace

cudaError_t argmax_rows(const ArgmaxParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  // About 256 blocks in all, slices of at least 1024 values (four per thread: short latency chains).
  int64_t slices = (256 + p.rows - 1) / p.rows, max_slices = (p.n + 1023) / 1024;
  slices = slices < max_slices ? slices : max_slices;
  slices = slices < 1 ? 1 : slices;
  const int64_t slice = (p.n + slices - 1) / slices;
  slices = (p.n + slice - 1) / slice;
  if (p.rows > 65535 || slices > kMaxSlices) return cudaErrorInvalidValue;
  char* scratch = static_cast<char*>(cached_allocate(static_cast<size_t>(p.rows * slices) * (sizeof(float) + sizeof(int64_t))));
  if (!scratch) return cudaErrorMemoryAllocation;
  int64_t* best_indices = reinterpret_cast<int64_t*>(scratch);
  float* best_values = reinterpret_cast<float*>(scratch + p.rows * slices * sizeof(int64_t));
  cudaError_t e = launch_dependent(argmax_slices_kernel, dim3(static_cast<unsigned>(slices), static_cast<unsigned>(p.rows)),
                                   kThreads, 0, stream, p, slice, best_values, best_indices);
  if (e == cudaSuccess)
    e = launch_dependent(argmax_merge_kernel, static_cast<unsigned>((p.rows + 3) / 4), 128, 0, stream, p, slices,
                         static_cast<const float*>(best_values), static_cast<const int64_t*>(best_indices));
  cached_release(scratch);  // stream-ordered reuse
  return e;
}

}  // namespace dsv::ops::cuda
