// Causal attention, fp32, one block per (query, head). Two reference-grade kernels: scores kept in
// shared memory (used up to ~51k keys) and a three-pass kernel needing no shared memory (beyond).
// Decode steps (few query rows over a long cache) split the keys across blocks instead.
// Shared K/V heads (Hkv = 1) and token strides let it run absorbed MLA straight over the cache rows,
// which may be fp32 or bf16 (the kernels are templates on the K/V element type KV).
#include <cfloat>
#include <cmath>
#include <type_traits>

#include "backends/cuda/bf16_dot.cuh"
#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"

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

// Problem b of a batched call: its key count and its key / value bases.
__device__ __forceinline__ int64_t problem_keys(const AttentionParams& p, int64_t b) {
  return p.kv_lengths ? p.kv_lengths[b] : p.S;
}

template <typename KV>
__global__ void attention_kernel(AttentionParams p, const KV* K, const KV* V, int64_t hkv, int64_t ks, int64_t vs) {
  const int64_t t = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t visible = problem_keys(p, b) - p.T + t + 1;
  const float* q = p.q + ((b * p.T + t) * p.H + h) * p.Dqk;
  const KV* kbase = K + b * p.k_batch_stride + (h % hkv) * p.Dqk;
  const KV* vbase = V + b * p.v_batch_stride + (h % hkv) * p.Dv;
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
  const float total = block_sum(local_sum, reduce), inv_sum = 1.0f / total;
  if (p.lse && threadIdx.x == 0) p.lse[(b * p.T + t) * p.H + h] = row_max + logf(total);
  // Pass 3: out[d] = sum_s p_s v_s[d], threads over d, keys in order (deterministic).
  float* out = p.out + ((b * p.T + t) * p.H + h) * p.Dv;
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
  const int64_t t = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t visible = problem_keys(p, b) - p.T + t + 1;
  const float* q = p.q + ((b * p.T + t) * p.H + h) * p.Dqk;
  const KV* kbase = K + b * p.k_batch_stride + (h % hkv) * p.Dqk;
  const KV* vbase = V + b * p.v_batch_stride + (h % hkv) * p.Dv;
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
  const float total = block_sum(local_sum, reduce), inv_sum = 1.0f / total;
  if (p.lse && threadIdx.x == 0) p.lse[(b * p.T + t) * p.H + h] = row_max + logf(total);
  float* out = p.out + ((b * p.T + t) * p.H + h) * p.Dv;
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
// One block per (chunk of keys, query row) instead of one per query row: a decode step has T = 1, so
// the per-(query, head) kernels would run H blocks on a GPU with 132 SMs. Each block writes its
// chunk's softmax statistics (max m, sum l of exp(score - m)) and unnormalized output; a second
// kernel merges the chunks in order (deterministic). Chunks are at least 64 keys (a short dependent
// loop per block) and longer when there are many query rows (batched decode), so that about
// kTargetBlocks blocks run. Grids depend only on S (a bound when kv_lengths is given): chunks past a
// problem's keys exit at once, so one launch shape serves every step of a captured decode graph.
constexpr int kMinChunk = 64, kDecodeWarps = kThreads / 32, kTargetBlocks = 2048, kMaxChunk = 8192;

template <typename KV>
__global__ void decode_partial_kernel(AttentionParams p, const KV* K, const KV* V, int64_t hkv, int64_t ks, int64_t vs,
                                      int64_t chunks, int64_t chunk, float* partial) {
  extern __shared__ float sm[];  // q [Dqk], exp(scores) [chunk]
  float* qs = sm;
  float* sc = qs + p.Dqk;
  __shared__ float reduce[kThreads];
  dependent_start();
  // row = (b * T + t) * H + h
  const int64_t c = blockIdx.x, row = blockIdx.y, h = row % p.H, t = (row / p.H) % p.T, b = row / (p.H * p.T);
  const int64_t visible = problem_keys(p, b) - p.T + t + 1, s_begin = c * chunk;
  const int64_t s_end = visible < s_begin + chunk ? visible : s_begin + chunk;
  float* part = partial + (row * chunks + c) * (p.Dv + 2);
  if (s_begin >= s_end) {  // a chunk past this query's visible keys
    for (int64_t d = threadIdx.x; d < p.Dv + 2; d += kThreads) part[d] = d == 0 ? -INFINITY : 0.0f;
    return;
  }
  const float* q = p.q + row * p.Dqk;
  const KV* kbase = K + b * p.k_batch_stride + (h % hkv) * p.Dqk;
  const KV* vbase = V + b * p.v_batch_stride + (h % hkv) * p.Dv;
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

// One block per query row: chunk weights exp(m_c - M) / L computed once into shared memory, then each
// thread's value dims summed over chunks in order (loads independent, so they overlap).
constexpr int kMaxCombineChunks = 4096;
__global__ void decode_combine_kernel(AttentionParams p, int64_t chunks, const float* partial) {
  __shared__ float weight[kMaxCombineChunks];
  __shared__ float reduce[kThreads];
  dependent_start();
  const int64_t row = blockIdx.x;
  const float* part = partial + row * chunks * (p.Dv + 2);
  float local_max = -INFINITY;
  for (int64_t c = threadIdx.x; c < chunks; c += kThreads) local_max = fmaxf(local_max, part[c * (p.Dv + 2)]);
  const float M = block_max(local_max, reduce);
  float local_sum = 0.0f;
  for (int64_t c = threadIdx.x; c < chunks; c += kThreads) {
    const float w = expf(part[c * (p.Dv + 2)] - M);
    weight[c] = w;
    local_sum += w * part[c * (p.Dv + 2) + 1];
  }
  const float inv = 1.0f / block_sum(local_sum, reduce);  // ends with a barrier: weight[] is written
  float* out = p.out + row * p.Dv;  // out [batch, T, H, Dv]
  for (int64_t d = threadIdx.x; d < p.Dv; d += kThreads) {
    float acc = 0.0f;
#pragma unroll 8
    for (int64_t c = 0; c < chunks; ++c) acc += weight[c] * part[c * (p.Dv + 2) + 2 + d];
    out[d] = acc * inv;
  }
}

// Second stage of both split decode kernels: merges the chunks' partials (when the first stage
// launched: e), then hands the partials buffer back (reused only by later work on the same stream).
cudaError_t combine_partials(const AttentionParams& p, int64_t rows, int64_t chunks, float* partial, cudaError_t e,
                             cudaStream_t stream) {
  if (e == cudaSuccess) {
    e = launch_dependent(decode_combine_kernel, static_cast<unsigned>(rows), kThreads, 0, stream, p, chunks,
                         static_cast<const float*>(partial));
  }
  cached_release(partial);
  return e;
}

template <typename KV>
cudaError_t decode_attention(const AttentionParams& p, const KV* K, const KV* V, int64_t hkv, int64_t ks, int64_t vs,
                             cudaStream_t stream) {
  const int64_t rows = p.batch * p.T * p.H;
  const int64_t want_chunks = (kTargetBlocks + rows - 1) / rows;
  int64_t chunk = (p.S + want_chunks - 1) / want_chunks;
  chunk = chunk < kMinChunk ? kMinChunk : (chunk + 31) / 32 * 32;
  chunk = chunk > kMaxChunk ? kMaxChunk : chunk;
  const int64_t chunks = (p.S + chunk - 1) / chunk;
  if (chunks > kMaxCombineChunks) return cudaErrorInvalidValue;
  float* partial = static_cast<float*>(cached_allocate(static_cast<size_t>(rows * chunks * (p.Dv + 2)) * sizeof(float)));
  if (!partial) return cudaErrorMemoryAllocation;
  const size_t smem = static_cast<size_t>(p.Dqk + chunk) * sizeof(float);
  cudaError_t e = cudaSuccess;
  if (smem > 48 * 1024)
    e = cudaFuncSetAttribute(decode_partial_kernel<KV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem));
  if (e == cudaSuccess) {
    e = launch_dependent(decode_partial_kernel<KV>, dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(rows)),
                         kThreads, smem, stream, p, K, V, hkv, ks, vs, chunks, chunk, partial);
  }
  return combine_partials(p, rows, chunks, partial, e, stream);
}

// ---- Absorbed-MLA decode: one latent row per key shared by all heads ----
// Hkv = 1 with v the first Dv values of each key row (the latent cache) and one query per problem.
// One block per (key split, group of HEADS heads, problem) stages kLatentKeys-row tiles of the
// cache in shared memory once for all of its heads (the per-head kernels above read every row once
// per head): q.k with one thread per (head pair, key), an online softmax per head by one warp (a lane
// per key), then P.V with threads over value dims and every head's sums in registers. Partials per
// (problem, head, split) go through decode_combine_kernel. Grids depend only on S (kv_lengths read on
// the device), so a captured decode graph replays them.
// HEADS = 16 heads per block, or 8 when 16-head blocks would leave most SMs idle (batch-1 decode of a
// short cache: 16b-l4 at 512 keys ran 17 blocks).
constexpr int kLatentKeys = 32, kLatentThreads = 256, kLatentWarps = kLatentThreads / 32;
constexpr int64_t kLatentTargetBlocks = 264;  // two per SM of an H100

// Row pitch of the staged q and key rows: even (float2 reads) and = 2 mod 32 words, so the 16 lanes
// of a half-warp reading 16 different rows at one d hit 16 different bank pairs.
__host__ __device__ constexpr int64_t latent_pitch(int64_t Dqk) { return (Dqk + 1) / 2 * 2 + 2; }

size_t latent_smem_bytes(int64_t Dqk, int heads) {
  return static_cast<size_t>((heads + kLatentKeys) * latent_pitch(Dqk) + heads * kLatentKeys + 3 * heads) *
         sizeof(float);
}

__device__ __forceinline__ void unpack_words(const uint4& raw, float (&f)[8]) { unpack8(raw, f); }
__device__ __forceinline__ void unpack_words(const uint4& raw, float (&f)[4]) {
  f[0] = __uint_as_float(raw.x), f[1] = __uint_as_float(raw.y), f[2] = __uint_as_float(raw.z), f[3] = __uint_as_float(raw.w);
}

// dst[j * pitch + d] = src[j * stride + d] widened, for j < n rows and d < D: 16-byte loads when
// aligned, every load of a thread issued before its stores (staging is latency-bound otherwise).
template <typename T>
__device__ __forceinline__ void stage_rows(const T* src, int64_t stride, int n, int D, float* dst, int pitch) {
  constexpr int kVec = 16 / sizeof(T), kLoads = 12;
  if (D % kVec == 0 && stride % kVec == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0) {
    const int per_row = D / kVec, total = n * per_row;
    for (int base = threadIdx.x; base < total; base += kLatentThreads * kLoads) {
      uint4 raw[kLoads];
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        const int v = base + u * kLatentThreads;
        if (v < total) raw[u] = __ldg(reinterpret_cast<const uint4*>(src + (v / per_row) * stride) + v % per_row);
      }
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        const int v = base + u * kLatentThreads;
        if (v >= total) break;
        float f[kVec];
        unpack_words(raw[u], f);
        float2* out = reinterpret_cast<float2*>(dst + (v / per_row) * pitch + (v % per_row) * kVec);
#pragma unroll
        for (int i = 0; i < kVec / 2; ++i) out[i] = make_float2(f[2 * i], f[2 * i + 1]);
      }
    }
    return;
  }
#pragma unroll 4
  for (int i = threadIdx.x; i < n * D; i += kLatentThreads) dst[(i / D) * pitch + i % D] = widen(src[(i / D) * stride + i % D]);
}

// DV: value dims per thread (Dv <= DV * kLatentThreads); HEADS: 16 or 8 (HEADS / 8 per warp).
template <typename KV, int DV, int HEADS>
__global__ void __launch_bounds__(kLatentThreads)
    latent_decode_kernel(AttentionParams p, const KV* K, int64_t ks, int64_t splits, int64_t split_keys, float* partial) {
  static_assert(HEADS % kLatentWarps == 0, "whole heads per warp");
  constexpr int kHeadsPerWarp = HEADS / kLatentWarps;
  dependent_start();
  extern __shared__ float sm[];
  const int Dqk = static_cast<int>(p.Dqk), Dv = static_cast<int>(p.Dv), pitch = static_cast<int>(latent_pitch(p.Dqk));
  float* qs = sm;                                // [HEADS][pitch]
  float* tile = qs + HEADS * pitch;       // [kLatentKeys][pitch]
  float* probs = tile + kLatentKeys * pitch;     // [HEADS][kLatentKeys]
  float* m_run = probs + HEADS * kLatentKeys;  // running max, sum and this tile's rescale per head
  float* l_run = m_run + HEADS;
  float* alpha = l_run + HEADS;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t c = blockIdx.x, h0 = static_cast<int64_t>(blockIdx.y) * HEADS, b = blockIdx.z;
  const int heads = static_cast<int>(p.H - h0 < HEADS ? p.H - h0 : HEADS);
  const int64_t keys = problem_keys(p, b), s_begin = c * split_keys;
  const int64_t s_end = keys < s_begin + split_keys ? keys : s_begin + split_keys;
  if (s_begin >= s_end) {  // a split past this problem's keys
    for (int h = 0; h < heads; ++h) {
      float* part = partial + ((b * p.H + h0 + h) * splits + c) * (Dv + 2);
      for (int d = tid; d < Dv + 2; d += kLatentThreads) part[d] = d == 0 ? -INFINITY : 0.0f;
    }
    return;
  }
  // Zeros where nothing is staged: the pad columns of q and key rows, and the rows of absent heads.
  for (int i = tid; i < (HEADS + kLatentKeys) * (pitch - Dqk); i += kLatentThreads)
    qs[(i / (pitch - Dqk)) * pitch + Dqk + i % (pitch - Dqk)] = 0.0f;
  for (int i = tid; i < (HEADS - heads) * Dqk; i += kLatentThreads)
    qs[(heads + i / Dqk) * pitch + i % Dqk] = 0.0f;
  stage_rows(p.q + (b * p.H + h0) * p.Dqk, p.Dqk, heads, Dqk, qs, pitch);
  if (tid < HEADS) {
    m_run[tid] = -INFINITY;
    l_run[tid] = 0.0f;
  }
  float acc[HEADS][DV] = {};
  const KV* kb = K + b * p.k_batch_stride;
  for (int64_t s0 = s_begin; s0 < s_end; s0 += kLatentKeys) {
    const int n = static_cast<int>(s_end - s0 < kLatentKeys ? s_end - s0 : kLatentKeys);
    __syncthreads();  // the previous tile's P.V is done with `tile` and `probs`
    stage_rows(kb + s0 * ks, ks, n, Dqk, tile, pitch);
    for (int i = tid; i < (kLatentKeys - n) * Dqk; i += kLatentThreads)  // rows past n: zeros (zero weight)
      tile[(n + i / Dqk) * pitch + i % Dqk] = 0.0f;
    __syncthreads();
    {  // scores of key `lane` for this warp's heads (float2 reads: k conflict-free, q broadcast)
      const float2* k = reinterpret_cast<const float2*>(tile + lane * pitch);
      const float2* q[kHeadsPerWarp];
#pragma unroll
      for (int i = 0; i < kHeadsPerWarp; ++i) q[i] = reinterpret_cast<const float2*>(qs + (kHeadsPerWarp * warp + i) * pitch);
      float sc[kHeadsPerWarp] = {};
#pragma unroll 8
      for (int d2 = 0; d2 < pitch / 2; ++d2) {
        const float2 kv = k[d2];
#pragma unroll
        for (int i = 0; i < kHeadsPerWarp; ++i) {
          const float2 a = q[i][d2];
          sc[i] += a.x * kv.x + a.y * kv.y;
        }
      }
#pragma unroll
      for (int i = 0; i < kHeadsPerWarp; ++i)
        probs[(kHeadsPerWarp * warp + i) * kLatentKeys + lane] = lane < n ? sc[i] * p.scale : -INFINITY;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kHeadsPerWarp; ++i) {  // online softmax: warp w owns its heads
      const int h = kHeadsPerWarp * warp + i;
      const float v = probs[h * kLatentKeys + lane];
      float tile_max = v;
      for (int o = 16; o > 0; o >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o));
      const float m_old = m_run[h], m_new = fmaxf(m_old, tile_max);
      const float e = lane < n ? expf(v - m_new) : 0.0f;
      const float sum = warp_sum(e);
      probs[h * kLatentKeys + lane] = e;
      __syncwarp();
      if (lane == 0) {
        const float a = expf(m_old - m_new);  // 0 on the first tile (m_old = -inf)
        alpha[h] = a;
        l_run[h] = l_run[h] * a + sum;
        m_run[h] = m_new;
      }
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < HEADS; ++h) {
      const float a = alpha[h];
#pragma unroll
      for (int i = 0; i < DV; ++i) acc[h][i] *= a;
    }
    // P.V four keys at a time (rows past n are zeros with zero weight).
    for (int j = 0; j < kLatentKeys; j += 4) {
      float v[4][DV];
#pragma unroll
      for (int jj = 0; jj < 4; ++jj)
#pragma unroll
        for (int i = 0; i < DV; ++i) {
          const int d = tid + i * kLatentThreads;
          v[jj][i] = d < Dv ? tile[(j + jj) * pitch + d] : 0.0f;
        }
#pragma unroll
      for (int h = 0; h < HEADS; ++h) {
        const float4 pj = *reinterpret_cast<const float4*>(probs + h * kLatentKeys + j);
#pragma unroll
        for (int i = 0; i < DV; ++i) acc[h][i] += pj.x * v[0][i] + pj.y * v[1][i] + pj.z * v[2][i] + pj.w * v[3][i];
      }
    }
  }
#pragma unroll
  for (int h = 0; h < HEADS; ++h) {
    if (h >= heads) break;
    float* part = partial + ((b * p.H + h0 + h) * splits + c) * (Dv + 2);
#pragma unroll
    for (int i = 0; i < DV; ++i) {
      const int d = tid + i * kLatentThreads;
      if (d < Dv) part[2 + d] = acc[h][i];
    }
    if (tid == 0) {
      part[0] = m_run[h];
      part[1] = l_run[h];
    }
  }
}

// Whether latent_decode_kernel serves this call: shared K/V rows (one head), v inside k, one query.
bool latent_decode_applies(const AttentionParams& p, const void* K, const void* V, int64_t hkv, int64_t ks,
                           int64_t vs) {
  return hkv == 1 && p.T == 1 && K == V && ks == vs && p.Dv <= p.Dqk &&
         p.Dv <= static_cast<int64_t>(kLatentThreads) * 4 && latent_smem_bytes(p.Dqk, 16) <= 200 * 1024 &&
         p.batch <= 65535;  // grid.z
}

template <typename KV>
cudaError_t latent_decode_attention(const AttentionParams& p, const KV* K, int64_t ks, cudaStream_t stream) {
  const int64_t tiles = (p.S + kLatentKeys - 1) / kLatentKeys;
  const int heads = p.H <= 8 || p.batch * ((p.H + 15) / 16) * tiles < kLatentTargetBlocks / 2 ? 8 : 16;
  const int64_t groups = (p.H + heads - 1) / heads;
  int64_t splits = (kLatentTargetBlocks + p.batch * groups - 1) / (p.batch * groups);
  splits = splits < 1 ? 1 : (splits > tiles ? tiles : splits);
  const int64_t split_keys = (tiles + splits - 1) / splits * kLatentKeys;
  splits = (p.S + split_keys - 1) / split_keys;
  if (splits > kMaxCombineChunks) return cudaErrorInvalidValue;
  const int64_t rows = p.batch * p.H;
  float* partial = static_cast<float*>(cached_allocate(static_cast<size_t>(rows * splits * (p.Dv + 2)) * sizeof(float)));
  if (!partial) return cudaErrorMemoryAllocation;
  const size_t smem = latent_smem_bytes(p.Dqk, heads);
  auto kernel = p.Dv <= 2 * kLatentThreads ? (heads == 8 ? latent_decode_kernel<KV, 2, 8> : latent_decode_kernel<KV, 2, 16>)
                                           : (heads == 8 ? latent_decode_kernel<KV, 4, 8> : latent_decode_kernel<KV, 4, 16>);
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e == cudaSuccess) {
    e = launch_dependent(kernel, dim3(static_cast<unsigned>(splits), static_cast<unsigned>(groups), static_cast<unsigned>(p.batch)),
                         kLatentThreads, smem, stream, p, K, ks, splits, split_keys, partial);
  }
  return combine_partials(p, rows, splits, partial, e, stream);
}

template <typename KV>
cudaError_t attention_typed(const AttentionParams& p, const KV* K, const KV* V, cudaStream_t stream) {
  const int64_t hkv = p.Hkv ? p.Hkv : p.H;
  const int64_t ks = p.k_stride ? p.k_stride : hkv * p.Dqk, vs = p.v_stride ? p.v_stride : hkv * p.Dv;
  // Few query rows per problem over many keys (decode steps, batched or not): split the keys across
  // blocks. Per-problem key counts (kv_lengths) always take this path: its grid depends only on S.
  // (The split-key paths keep no per-row statistics: a request for lse takes the per-row kernels.)
  if constexpr (std::is_same_v<KV, uint16_t>) {  // bf16 latent cache: tensor cores, cluster merges
    if (latent_decode_bf16_applies(p, K, V, hkv, ks, vs)) return latent_decode_bf16(p, K, ks, stream);
  }
  if (!p.lse && latent_decode_applies(p, K, V, hkv, ks, vs) && (p.kv_lengths || p.S > kMinChunk))
    return latent_decode_attention(p, K, ks, stream);
  const int64_t rows = p.batch * p.T * p.H;
  if (!p.lse && rows <= 65535 && (p.kv_lengths || (p.T * p.H < 256 && p.S > kMinChunk)))
    return decode_attention(p, K, V, hkv, ks, vs, stream);
  const dim3 grid(static_cast<unsigned>(p.T), static_cast<unsigned>(p.H), static_cast<unsigned>(p.batch));
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

cudaError_t decode_combine(const AttentionParams& p, int64_t rows, int64_t chunks, const float* partial,
                           cudaStream_t stream) {
  if (chunks > kMaxCombineChunks) return cudaErrorInvalidValue;
  return launch_dependent(decode_combine_kernel, static_cast<unsigned>(rows), kThreads, 0, stream, p, chunks, partial);
}

cudaError_t attention(const AttentionParams& p, cudaStream_t stream) {
  if (p.T == 0) return cudaSuccess;
  if (p.k_bf16) return attention_typed(p, p.k_bf16, p.v_bf16, stream);
  return attention_typed(p, p.k, p.v, stream);
}

}  // namespace dsv::ops::cuda
