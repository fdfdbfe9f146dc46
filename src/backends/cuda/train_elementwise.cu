// Elementwise and row-wise training ops, fp32, grid-stride loops with 64-bit indices:
// swiglu_backward, embed_backward (deterministic, no atomics), row_dots (one warp per row), axpby, adamw.
#include <cuda_bf16.h>

#include <cmath>

#include "backends/cuda/cuda_ops.h"
#include "ops/adamw_element.h"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 256;
unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}
#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// silu(g) = g * sig(g); silu'(g) = sig(g) * (1 + g * (1 - sig(g))). Inputs are read before the
// outputs are written (dgate/dup may alias gate/up).
__global__ void swiglu_backward_kernel(SwigluBackwardParams p) {
  GRID_STRIDE(i, p.n) {
    const float g = p.gate[i], u = p.up[i], dy = p.dout[i];
    const float sig = 1.0f / (1.0f + expf(-g));
    const float silu = g * sig;
    p.dgate[i] = dy * u * (sig * (1.0f + g * (1.0f - sig)));
    p.dup[i] = dy * silu;
  }
}

// Deterministic (a resumed run must repeat an uninterrupted one bit for bit, so no atomics): thread
// (d, g) owns column d of the table rows with id % kEmbedGroups == g and adds their tokens' rows in
// token order. ids[t] is the same across a warp, so the branch is uniform.
constexpr int kEmbedGroups = 64;
__global__ void embed_backward_kernel(EmbedBackwardParams p) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int g = static_cast<int>(blockIdx.y);
  if (d >= p.D) return;
  for (int64_t t = 0; t < p.T; ++t) {
    const int32_t id = p.ids[t];
    if (id % kEmbedGroups != g) continue;
    p.dtable[static_cast<int64_t>(id) * p.D + d] += p.dout[t * p.D + d];
  }
}

// One warp per row, lanes across D, a fixed shuffle tree (deterministic).
__global__ void row_dots_kernel(RowDotsParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; r < p.n; r += warps) {
    const float* a = p.a + static_cast<int64_t>(p.rows[r]) * p.D;
    const float* b = p.b + r * p.D;
    float acc = 0.0f;
    for (int64_t d = lane; d < p.D; d += 32) acc += a[d] * b[d];
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) p.out[r] = acc;
  }
}

__global__ void axpby_kernel(AxpbyParams p) {
  if (p.beta == 0.0f) {
    GRID_STRIDE(i, p.n) p.y[i] = p.alpha * p.x[i];
  } else {
    GRID_STRIDE(i, p.n) p.y[i] = p.alpha * p.x[i] + p.beta * p.y[i];
  }
}

__global__ void adamw_kernel(AdamWParams p, AdamWScalars scalars) {
  GRID_STRIDE(i, p.n) adamw_element(p, scalars, i);
}

}  // namespace

cudaError_t swiglu_backward(const SwigluBackwardParams& p, cudaStream_t s) {
  if (p.n <= 0) return cudaSuccess;
  swiglu_backward_kernel<<<blocks_for(p.n), kThreads, 0, s>>>(p);
  return cudaGetLastError();
}

cudaError_t embed_backward(const EmbedBackwardParams& p, cudaStream_t s) {
  if (p.T <= 0 || p.D <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((p.D + kThreads - 1) / kThreads), kEmbedGroups);
  embed_backward_kernel<<<grid, kThreads, 0, s>>>(p);
  return cudaGetLastError();
}

cudaError_t row_dots(const RowDotsParams& p, cudaStream_t s) {
  if (p.n <= 0) return cudaSuccess;
  const int64_t rows_per_block = kThreads / 32, blocks = (p.n + rows_per_block - 1) / rows_per_block;
  row_dots_kernel<<<static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16), kThreads, 0, s>>>(p);
  return cudaGetLastError();
}

cudaError_t axpby(const AxpbyParams& p, cudaStream_t s) {
  if (p.n <= 0) return cudaSuccess;
  axpby_kernel<<<blocks_for(p.n), kThreads, 0, s>>>(p);
  return cudaGetLastError();
}

cudaError_t adamw(const AdamWParams& p, cudaStream_t s) {
  if (p.n <= 0) return cudaSuccess;
  adamw_kernel<<<blocks_for(p.n), kThreads, 0, s>>>(p, adamw_scalars(p));
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
