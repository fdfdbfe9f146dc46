// Causal attention, fp32, one block per (query, head). Two reference-grade kernels: scores kept in
// shared memory (used up to ~51k keys) and a three-pass kernel needing no shared memory (beyond).
// Decode steps (few query rows over a long cache) split the keys across blocks instead.
// Shared K/V heads (Hkv = 1) and token strides let it run absorbed MLA straight over the cache rows,
// which may be fp32 or bf16 (the kernels are templates on the K/V element type KV).
#include <cfloat>
#include <cmath>

#include "backends/cuda/bf16_dot.cuh"
#include "backends/cuda/cuda_ops.h"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(uint16_t v) { return widen_bf16(v); }

// Block-wide max / sum of one value per thread (kThreads threads); every thread gets the result.
__device__ float block_max(float v, float* reduce) {
  reduce[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) reduce[threadIdx.x] = fmaxf(reduce[threadIdx.x], reduce[threadIdx.x + stride]);
    __syncthreads();
  }
  const float r = reduce[0];
  __syncthreads();
  return r;
}

__device__ float block_sum(float v, float* reduce) {
  reduce[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) reduce[threadIdx.x] += reduce[threadIdx.x + stride];
    __syncthreads();
  }
  const float r = reduce[0];
  __syncthreads();
  return r;
}

template <typename KV>
__global__ void attention_kernel(AttentionParams p, const KV* K, const KV* V, int64_t hkv, int64_t ks, int64_t vs) {
  const int64_t t = blockIdx.x, h = blockIdx.y;
  const int64_t visible = p.S - p.T + t + 1;
  const float* q = p.q + (t * p.H + h) * p.Dqk;
  const KV* kbase = K + (h % hkv) * p.Dqk;
  const KV* vbase = V + (h % hkv) * p.Dv;
  // Pass 1: the row maximum (for a stable softmax).
  float local_max = -FLT_MAX;
  for (int64_t s = threadIdx.x; s < visible; s += blockDim.x) {
    const KV* k = kbase + s * ks;
    float dot = 0.0f;
    for (int64_t d = 0; d < p.Dqk; ++d) dot += q[d] * widen(k[d]);
    local_max = fmaxf(local_max, dot * p.scale);
  }
  __shared__ float reduce[kThreads];
  const float row_max = block_max(local_max, reduce);
  // Pass 2: the denominator.
  float local_sum = 0.0f;
  for (int64_t s = threadIdx.x; s < visible; s += blockDim.x) {
    const KV* k = kbase + s * ks;
    float dot = 0.0f;
    for (int64_t d = 0; d < p.Dqk; ++d) dot += q[d] * widen(k[d]);
    local_sum += __expf(dot * p.scale - row_max);
  }
  const float inv_sum = 1.0f / block_sum(local_sum, reduce);
  // Pass 3: out[d] = sum_s p_s v_s[d], threads over d, keys in order (deterministic).
  float* out = p.out + (t * p.H + h) * p.Dv;
  __shared__ float probs[kThreads];
  for (int64_t s0 = 0; s0 < visible; s0 += kThreads) {
    const int64_t s = s0 + threadIdx.x;
    if (s < visible) {
      const KV* k = kbase + s * ks;
      float dot = 0.0f;
      for (int64_t d = 0; d < p.Dqk; ++d) dot += q[d] * widen(k[d]);
      probs[threadIdx.x] = __expf(dot * p.scale - row_max) * inv_sum;
    }
    __syncthreads();
    const int64_t n = visible - s0 < kThreads ? visible - s0 : kThreads;
    for (int64_t d = threadIdx.x; d < p.Dv; d += blockDim.x) {
      float acc = s0 == 0 ? 0.0f : out[d];
      for (int64_t j = 0; j < n; ++j) acc += probs[j] * widen(vbase[(s0 + j) * vs + d]);
      out[d] = acc;
    }
    __syncthreads();
  }
}

// Scores in shared memory: one pass of q.k with one warp per key (lanes across the head dim, so key
// rows are read coalesced), then the softmax over the stored scores, then out = P.V with threads
// across the value dim. Each dot is computed once instead of three times.
template <typename KV>
__global__ void attention_smem_kernel(AttentionParams p, const KV* K, const KV* V, int64_t hkv, int64_t ks,
                                      int64_t vs) {
  extern __shared__ float scores[];  // [visible]
  __shared__ float reduce[kThreads];
  const int64_t t = blockIdx.x, h = blockIdx.y;
  const int64_t visible = p.S - p.T + t + 1;
  const float* q = p.q + (t * p.H + h) * p.Dqk;
  const KV* kbase = K + (h % hkv) * p.Dqk;
  const KV* vbase = V + (h % hkv) * p.Dv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = kThreads / 32;
  for (int64_t s = warp; s < visible; s += warps) {
    const KV* k = kbase + s * ks;
    float dot = 0.0f;
    for (int64_t d = lane; d < p.Dqk; d += 32) dot += q[d] * widen(k[d]);
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (lane == 0) scores[s] = dot * p.scale;
  }
  __syncthreads();
  float local_max = -FLT_MAX;
  for (int64_t s = threadIdx.x; s < visible; s += blockDim.x) local_max = fmaxf(local_max, scores[s]);
  const float row_max = block_max(local_max, reduce);
  float local_sum = 0.0f;
  for (int64_t s = threadIdx.x; s < visible; s += blockDim.x) {
    const float e = __expf(scores[s] - row_max);
    scores[s] = e;
    local_sum += e;
  }
  const float inv_sum = 1.0f / block_sum(local_sum, reduce);
  float* out = p.out + (t * p.H + h) * p.Dv;
  for (int64_t d = threadIdx.x; d < p.Dv; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t s = 0; s < visible; ++s) acc += scores[s] * widen(vbase[s * vs + d]);
    out[d] = acc * inv_sum;
  }
}

// Keys whose scores fit in the shared memory a block may opt into (H100: 227 KB); longer contexts
// use the three-pass kernel, which needs none.
constexpr int64_t kMaxSmemKeys = (200 * 1024) / 4;

// ---- Split-key decode (few queries over a long cache) ----
// One block per (chunk of kChunk keys, query, head) instead of one per (query, head): a decode step
// has T = 1, so the per-(query, head) kernels would run H blocks on a GPU with 132 SMs. Each block
// writes its chunk's softmax statistics (max m, sum l of exp(score - m)) and unnormalized output;
// a second kernel merges the chunks in order (deterministic).
// 64-key chunks: enough blocks at short contexts too, and a short dependent loop per block.
constexpr int kChunk = 64, kDecodeWarps = kThreads / 32;

template <typename KV>
__global__ void decode_partial_kernel(AttentionParams p, const KV* K, const KV* V, int64_t hkv, int64_t ks, int64_t vs,
                                      int64_t chunks, float* partial) {
  extern __shared__ float sm[];  // q [Dqk], exp(scores) [kChunk]
  float* qs = sm;
  float* sc = qs + p.Dqk;
  __shared__ float reduce[kThreads];
  const int64_t c = blockIdx.x, th = blockIdx.y, t = th / p.H, h = th % p.H;
  const int64_t visible = p.S - p.T + t + 1, s_begin = c * kChunk;
  const int64_t s_end = visible < s_begin + kChunk ? visible : s_begin + kChunk;
  float* part = partial + (th * chunks + c) * (p.Dv + 2);
  if (s_begin >= s_end) {  // a chunk past this query's visible keys
    for (int64_t d = threadIdx.x; d < p.Dv + 2; d += kThreads) part[d] = d == 0 ? -INFINITY : 0.0f;
    return;
  }
  const float* q = p.q + (t * p.H + h) * p.Dqk;
  const KV* kbase = K + (h % hkv) * p.Dqk;
  const KV* vbase = V + (h % hkv) * p.Dv;
  for (int64_t d = threadIdx.x; d < p.Dqk; d += kThreads) qs[d] = q[d];
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t s = s_begin + warp; s < s_end; s += kDecodeWarps) {
    const KV* k = kbase + s * ks;
    float dot = 0.0f;
#pragma unroll 6
    for (int64_t d = lane; d < p.Dqk; d += 32) dot += qs[d] * widen(k[d]);
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (lane == 0) sc[s - s_begin] = dot * p.scale;
  }
  __syncthreads();
  const int n = static_cast<int>(s_end - s_begin);
  float local_max = -FLT_MAX;
  for (int j = threadIdx.x; j < n; j += kThreads) local_max = fmaxf(local_max, sc[j]);
  const float m = block_max(local_max, reduce);
  float local_sum = 0.0f;
  for (int j = threadIdx.x; j < n; j += kThreads) {
    const float e = expf(sc[j] - m);
    sc[j] = e;
    local_sum += e;
  }
  const float l = block_sum(local_sum, reduce);  // ends with a barrier: every sc[j] is written
  for (int64_t d = threadIdx.x; d < p.Dv; d += kThreads) {
    float acc = 0.0f;
#pragma unroll 8
    for (int j = 0; j < n; ++j) acc += sc[j] * widen(vbase[(s_begin + j) * vs + d]);
    part[2 + d] = acc;
  }
  if (threadIdx.x == 0) {
    part[0] = m;
    part[1] = l;
  }
}

__global__ void decode_combine_kernel(AttentionParams p, int64_t chunks, const float* partial) {
  const int64_t th = blockIdx.x;
  const float* part = partial + th * chunks * (p.Dv + 2);
  float M = -INFINITY;
  for (int64_t c = 0; c < chunks; ++c) M = fmaxf(M, part[c * (p.Dv + 2)]);
  float L = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) L += expf(part[c * (p.Dv + 2)] - M) * part[c * (p.Dv + 2) + 1];
  const float inv = 1.0f / L;
  float* out = p.out + th * p.Dv;  // out [T, H, Dv]: row th = t * H + h
  for (int64_t d = threadIdx.x; d < p.Dv; d += kThreads) {
    float acc = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) acc += expf(part[c * (p.Dv + 2)] - M) * part[c * (p.Dv + 2) + 2 + d];
    out[d] = acc * inv;
  }
}

template <typename KV>
cudaError_t decode_attention(const AttentionParams& p, const KV* K, const KV* V, int64_t hkv, int64_t ks, int64_t vs,
                             cudaStream_t stream) {
  const int64_t chunks = (p.S + kChunk - 1) / kChunk;
  const int64_t rows = p.T * p.H;
  float* partial = static_cast<float*>(cached_allocate(static_cast<size_t>(rows * chunks * (p.Dv + 2)) * sizeof(float)));
  if (!partial) return cudaErrorMemoryAllocation;
  const size_t smem = static_cast<size_t>(p.Dqk + kChunk) * sizeof(float);
  cudaError_t e = cudaSuccess;
  if (smem > 48 * 1024)
    e = cudaFuncSetAttribute(decode_partial_kernel<KV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem));
  if (e == cudaSuccess) {
    decode_partial_kernel<KV><<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(rows)), kThreads, smem,
                                stream>>>(p, K, V, hkv, ks, vs, chunks, partial);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) {
    decode_combine_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(p, chunks, partial);
    e = cudaGetLastError();
  }
  cached_release(partial);  // reused only by later work on the same stream
  return e;
}

template <typename KV>
cudaError_t attention_typed(const AttentionParams& p, const KV* K, const KV* V, cudaStream_t stream) {
  const int64_t hkv = p.Hkv ? p.Hkv : p.H;
  const int64_t ks = p.k_stride ? p.k_stride : hkv * p.Dqk, vs = p.v_stride ? p.v_stride : hkv * p.Dv;
  // Few query rows over many keys (decode steps): split the keys across blocks.
  if (p.T * p.H < 256 && p.S > kChunk && p.T * p.H <= 65535) return decode_attention(p, K, V, hkv, ks, vs, stream);
  const dim3 grid(static_cast<unsigned>(p.T), static_cast<unsigned>(p.H));
  if (p.S <= kMaxSmemKeys) {
    const size_t smem = static_cast<size_t>(p.S) * sizeof(float);
    if (smem > 48 * 1024) {
      const cudaError_t e = cudaFuncSetAttribute(attention_smem_kernel<KV>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      if (e != cudaSuccess) return e;
    }
    attention_smem_kernel<KV><<<grid, kThreads, smem, stream>>>(p, K, V, hkv, ks, vs);
  } else {
    attention_kernel<KV><<<grid, kThreads, 0, stream>>>(p, K, V, hkv, ks, vs);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t attention(const AttentionParams& p, cudaStream_t stream) {
  if (p.T == 0) return cudaSuccess;
  if (p.k_bf16) return attention_typed(p, p.k_bf16, p.v_bf16, stream);
  return attention_typed(p, p.k, p.v, stream);
}

}  // namespace dsv::ops::cuda
