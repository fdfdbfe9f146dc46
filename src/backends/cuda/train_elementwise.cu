// Elementwise and row-wise training ops, fp32, grid-stride loops with 64-bit indices:
// swiglu_backward, embed_backward (deterministic, no atomics), row_dots (one warp per row), axpby, adamw
// (four elements per thread where the buffers allow).
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

// With the tokens grouped by id: a block per id adds its tokens' rows in position order onto the table
// row (the same sums as above, without every thread scanning all T ids: 1.2 ms -> tens of us at 8192).
__global__ void embed_backward_grouped_kernel(EmbedBackwardParams p) {
  for (int64_t group = blockIdx.x; group < p.groups; group += gridDim.x) {
    const int begin = p.group_start[group], end = p.group_start[group + 1];
    float* row = p.dtable + static_cast<int64_t>(p.ids[p.grouped_tokens[begin]]) * p.D;
    for (int64_t d = threadIdx.x; d < p.D; d += blockDim.x) {
      float acc = row[d];
      for (int i = begin; i < end; ++i) acc += p.dout[static_cast<int64_t>(p.grouped_tokens[i]) * p.D + d];
      row[d] = acc;
    }
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

// Four bf16 values as one 8-byte word (element 0 in the low half).
__device__ uint2 pack_bf16x4(const uint16_t (&h)[4]) {
  return make_uint2(h[0] | uint32_t{h[1]} << 16, h[2] | uint32_t{h[3]} << 16);
}

// Four elements per thread with 16-byte (fp32) and 8-byte (bf16) loads and stores, for buffers aligned
// to that: one element per thread keeps too few bytes in flight to reach the copy bandwidth with bf16
// moments (12 bytes read per thread). Same arithmetic (adamw_update); the caller does the tail.
template <bool kBf16Moments>
__global__ void adamw_vec4_kernel(AdamWParams p, AdamWScalars s) {
  GRID_STRIDE(j, p.n / 4) {
    const int64_t i = 4 * j;
    float4 w = *reinterpret_cast<const float4*>(p.param + i);
    const float4 g = *reinterpret_cast<const float4*>(p.grad + i);
    float m[4], v[4];
    if constexpr (kBf16Moments) {
      const uint2 mb = *reinterpret_cast<const uint2*>(p.m_bf16 + i), vb = *reinterpret_cast<const uint2*>(p.v_bf16 + i);
      const uint32_t mw[2] = {mb.x, mb.y}, vw[2] = {vb.x, vb.y};
      for (int k = 0; k < 4; ++k) {
        m[k] = bf16_to_f32(static_cast<uint16_t>(mw[k / 2] >> (16 * (k % 2))));
        v[k] = bf16_to_f32(static_cast<uint16_t>(vw[k / 2] >> (16 * (k % 2))));
      }
    } else {
      const float4 m4 = *reinterpret_cast<const float4*>(p.m + i), v4 = *reinterpret_cast<const float4*>(p.v + i);
      m[0] = m4.x, m[1] = m4.y, m[2] = m4.z, m[3] = m4.w;
      v[0] = v4.x, v[1] = v4.y, v[2] = v4.z, v[3] = v4.w;
    }
    float wk[4] = {w.x, w.y, w.z, w.w};
    const float gk[4] = {g.x, g.y, g.z, g.w};
    uint16_t m16[4], v16[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const AdamWUpdate u = adamw_update(p, s, wk[k], gk[k], m[k], v[k]);
      wk[k] = u.param;
      m[k] = u.m;
      v[k] = u.v;
      if constexpr (kBf16Moments) round_moments_bf16(p, p.offset + i + k, u.m, u.v, m16[k], v16[k]);
    }
    if constexpr (kBf16Moments) {
      *reinterpret_cast<uint2*>(p.m_bf16 + i) = pack_bf16x4(m16);
      *reinterpret_cast<uint2*>(p.v_bf16 + i) = pack_bf16x4(v16);
    } else {
      *reinterpret_cast<float4*>(p.m + i) = make_float4(m[0], m[1], m[2], m[3]);
      *reinterpret_cast<float4*>(p.v + i) = make_float4(v[0], v[1], v[2], v[3]);
    }
    *reinterpret_cast<float4*>(p.param + i) = make_float4(wk[0], wk[1], wk[2], wk[3]);
    if (p.param_bf16) {
      uint16_t c[4];
      for (int k = 0; k < 4; ++k) c[k] = f32_to_bf16(wk[k]);
      *reinterpret_cast<uint2*>(p.param_bf16 + i) = pack_bf16x4(c);
    }
  }
}

// The tail past the last whole group of four.
__global__ void adamw_tail_kernel(AdamWParams p, AdamWScalars s, int64_t begin) {
  for (int64_t i = begin + threadIdx.x; i < p.n; i += blockDim.x) adamw_element(p, s, i);
}

bool aligned(const void* ptr, uintptr_t bytes) { return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

}  // namespace

cudaError_t swiglu_backward(const SwigluBackwardParams& p, cudaStream_t s) {
  if (p.n <= 0) return cudaSuccess;
  swiglu_backward_kernel<<<blocks_for(p.n), kThreads, 0, s>>>(p);
  return cudaGetLastError();
}

cudaError_t embed_backward(const EmbedBackwardParams& p, cudaStream_t s) {
  if (p.T <= 0 || p.D <= 0) return cudaSuccess;
  if (p.grouped_tokens) {
    embed_backward_grouped_kernel<<<static_cast<unsigned>(p.groups < 65535 ? p.groups : 65535), kThreads, 0, s>>>(p);
    return cudaGetLastError();
  }
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
  const AdamWScalars scalars = adamw_scalars(p);
  const bool vec4 = aligned(p.param, 16) && aligned(p.grad, 16) && aligned(p.m, 16) && aligned(p.v, 16) &&
                    aligned(p.m_bf16, 8) && aligned(p.v_bf16, 8) && aligned(p.param_bf16, 8);
  if (!vec4) {
    adamw_kernel<<<blocks_for(p.n), kThreads, 0, s>>>(p, scalars);
    return cudaGetLastError();
  }
  if (p.n >= 4) {
    if (p.m_bf16)
      adamw_vec4_kernel<true><<<blocks_for(p.n / 4), kThreads, 0, s>>>(p, scalars);
    else
      adamw_vec4_kernel<false><<<blocks_for(p.n / 4), kThreads, 0, s>>>(p, scalars);
  }
  if (p.n % 4) adamw_tail_kernel<<<1, 32, 0, s>>>(p, scalars, p.n / 4 * 4);
  return cudaGetLastError();
}

}  // namespace dsv::ops::cuda
