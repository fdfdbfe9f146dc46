// Backward of causal attention (Hkv = H), fp32. With P = softmax(scale * q.k) over the keys a query
// sees (query t sees keys 0 .. S - T + t), dP = dout . v and D_t = sum_s P dP (= dout . out):
//   dq[t] = scale * sum_s P (dP - D_t) k[s]      dk[s] = scale * sum_t P (dP - D_t) q[t]
//   dv[s] = sum_t P dout[t]
// Two kernels, no atomics (deterministic):
//  1. one block per (query, head): an online pass over the visible keys gives logsumexp and D_t
//     (kept in a scratch [T, H, 2] for kernel 2); a second pass over key tiles accumulates dq.
//  2. one block per (key, head): tiles of the queries that see the key accumulate dk and dv.
// Within a block, one warp per key (or query) makes the dot products with lanes across the head
// dims (coalesced rows); the tile's coefficients go to shared memory, and then threads across the
// head dims accumulate rows in ascending key (query) order.
#include <cmath>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/warp_reduce.cuh"

namespace dsv::ops::cuda {
namespace {

constexpr int kThreads = 128, kWarps = kThreads / 32, kTile = 128;

// Per (query t, head h): stats and dq. Dynamic shared memory: q row [Dqk], dout row [Dv], tile [kTile].
__global__ void attn_bwd_query_kernel(AttentionBackwardParams p, float* stats) {
  extern __shared__ float smem[];
  float* qs = smem;
  float* dos = qs + p.Dqk;
  float* coef = dos + p.Dv;
  __shared__ float wm[kWarps], wl[kWarps], wa[kWarps];
  const int64_t t = blockIdx.x, h = blockIdx.y, H = p.H;
  const int64_t visible = p.S - p.T + t + 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* q = p.q + (t * H + h) * p.Dqk;
  const float* dout = p.dout + (t * H + h) * p.Dv;
  for (int64_t d = threadIdx.x; d < p.Dqk; d += kThreads) qs[d] = q[d];
  for (int64_t d = threadIdx.x; d < p.Dv; d += kThreads) dos[d] = dout[d];
  __syncthreads();
  const int64_t ks = H * p.Dqk, vs = H * p.Dv;
  const float* kbase = p.k + h * p.Dqk;
  const float* vbase = p.v + h * p.Dv;
  // Pass 1: online max / sum / sum(exp * dP) per warp, then merged in warp order.
  float m = -INFINITY, l = 0.0f, a = 0.0f;
  for (int64_t s = warp; s < visible; s += kWarps) {
    const float* k = kbase + s * ks;
    const float* v = vbase + s * vs;
    float dot = 0.0f, dp = 0.0f;
    for (int64_t d = lane; d < p.Dqk; d += 32) dot += qs[d] * k[d];
    for (int64_t d = lane; d < p.Dv; d += 32) dp += dos[d] * v[d];
    const float score = warp_sum(dot) * p.scale;
    dp = warp_sum(dp);
    if (score > m) {
      const float c = expf(m - score);  // 0 on the first key (m = -inf)
      l = l * c + 1.0f;
      a = a * c + dp;
      m = score;
    } else {
      const float e = expf(score - m);
      l += e;
      a += e * dp;
    }
  }
  if (lane == 0) {
    wm[warp] = m;
    wl[warp] = l;
    wa[warp] = a;
  }
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, wm[w]);
  float L = 0.0f, A = 0.0f;
  for (int w = 0; w < kWarps; ++w) {
    if (wl[w] == 0.0f) continue;  // a warp that saw no key
    const float c = expf(wm[w] - M);
    L += wl[w] * c;
    A += wa[w] * c;
  }
  const float lse = M + logf(L), D = A / L;
  if (threadIdx.x == 0) {
    stats[(t * H + h) * 2] = lse;
    stats[(t * H + h) * 2 + 1] = D;
  }
  // Pass 2: dq = scale * sum_s P (dP - D) k[s], over tiles of keys.
  float* dq = p.dq + (t * H + h) * p.Dqk;
  for (int64_t s0 = 0; s0 < visible; s0 += kTile) {
    const int64_t n = visible - s0 < kTile ? visible - s0 : kTile;
    for (int64_t j = warp; j < n; j += kWarps) {
      const float* k = kbase + (s0 + j) * ks;
      const float* v = vbase + (s0 + j) * vs;
      float dot = 0.0f, dp = 0.0f;
      for (int64_t d = lane; d < p.Dqk; d += 32) dot += qs[d] * k[d];
      for (int64_t d = lane; d < p.Dv; d += 32) dp += dos[d] * v[d];
      dot = warp_sum(dot);
      dp = warp_sum(dp);
      if (lane == 0) coef[j] = p.scale * expf(dot * p.scale - lse) * (dp - D);
    }
    __syncthreads();
    for (int64_t d = threadIdx.x; d < p.Dqk; d += kThreads) {
      float acc = s0 == 0 ? 0.0f : dq[d];
      for (int64_t j = 0; j < n; ++j) acc += coef[j] * kbase[(s0 + j) * ks + d];
      dq[d] = acc;
    }
    __syncthreads();
  }
}

// Per (key s, head h): dk and dv over the queries that see s (t >= s - (S - T)).
// Dynamic shared memory: k row [Dqk], v row [Dv], P tile [kTile], dS tile [kTile].
__global__ void attn_bwd_key_kernel(AttentionBackwardParams p, const float* stats) {
  extern __shared__ float smem[];
  float* ksh = smem;
  float* vsh = ksh + p.Dqk;
  float* prob = vsh + p.Dv;
  float* dsc = prob + kTile;
  const int64_t s = blockIdx.x, h = blockIdx.y, H = p.H;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* k = p.k + (s * H + h) * p.Dqk;
  const float* v = p.v + (s * H + h) * p.Dv;
  for (int64_t d = threadIdx.x; d < p.Dqk; d += kThreads) ksh[d] = k[d];
  for (int64_t d = threadIdx.x; d < p.Dv; d += kThreads) vsh[d] = v[d];
  __syncthreads();
  const int64_t qs = H * p.Dqk, os = H * p.Dv;
  const float* qbase = p.q + h * p.Dqk;
  const float* obase = p.dout + h * p.Dv;
  float* dk = p.dk + (s * H + h) * p.Dqk;
  float* dv = p.dv + (s * H + h) * p.Dv;
  const int64_t first = s - (p.S - p.T) > 0 ? s - (p.S - p.T) : 0;
  if (first >= p.T) {  // no query sees this key (only when T = 0)
    for (int64_t d = threadIdx.x; d < p.Dqk; d += kThreads) dk[d] = 0.0f;
    for (int64_t d = threadIdx.x; d < p.Dv; d += kThreads) dv[d] = 0.0f;
    return;
  }
  for (int64_t t0 = first; t0 < p.T; t0 += kTile) {
    const int64_t n = p.T - t0 < kTile ? p.T - t0 : kTile;
    for (int64_t j = warp; j < n; j += kWarps) {
      const int64_t t = t0 + j;
      const float* q = qbase + t * qs;
      const float* o = obase + t * os;
      float dot = 0.0f, dp = 0.0f;
      for (int64_t d = lane; d < p.Dqk; d += 32) dot += q[d] * ksh[d];
      for (int64_t d = lane; d < p.Dv; d += 32) dp += o[d] * vsh[d];
      dot = warp_sum(dot);
      dp = warp_sum(dp);
      if (lane == 0) {
        const float lse = stats[(t * H + h) * 2], D = stats[(t * H + h) * 2 + 1];
        const float P = expf(dot * p.scale - lse);
        prob[j] = P;
        dsc[j] = p.scale * P * (dp - D);
      }
    }
    __syncthreads();
    for (int64_t d = threadIdx.x; d < p.Dqk; d += kThreads) {
      float acc = t0 == first ? 0.0f : dk[d];
      for (int64_t j = 0; j < n; ++j) acc += dsc[j] * qbase[(t0 + j) * qs + d];
      dk[d] = acc;
    }
    for (int64_t d = threadIdx.x; d < p.Dv; d += kThreads) {
      float acc = t0 == first ? 0.0f : dv[d];
      for (int64_t j = 0; j < n; ++j) acc += prob[j] * obase[(t0 + j) * os + d];
      dv[d] = acc;
    }
    __syncthreads();
  }
}

template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace

cudaError_t attention_backward(const AttentionBackwardParams& p, cudaStream_t stream) {
  if (p.S == 0 || p.H == 0) return cudaSuccess;
  if (p.T > p.S || p.H > 65535) return cudaErrorInvalidValue;
  const size_t smem_q = static_cast<size_t>(p.Dqk + p.Dv + kTile) * sizeof(float);
  const size_t smem_k = static_cast<size_t>(p.Dqk + p.Dv + 2 * kTile) * sizeof(float);
  cudaError_t e = allow_smem(attn_bwd_query_kernel, smem_q);
  if (e == cudaSuccess) e = allow_smem(attn_bwd_key_kernel, smem_k);
  if (e != cudaSuccess) return e;
  float* stats = nullptr;
  if (p.T > 0) {
    stats = static_cast<float*>(cached_allocate(static_cast<size_t>(p.T * p.H * 2) * sizeof(float)));
    if (!stats) return cudaErrorMemoryAllocation;
    attn_bwd_query_kernel<<<dim3(static_cast<unsigned>(p.T), static_cast<unsigned>(p.H)), kThreads, smem_q, stream>>>(
        p, stats);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) {
    attn_bwd_key_kernel<<<dim3(static_cast<unsigned>(p.S), static_cast<unsigned>(p.H)), kThreads, smem_k, stream>>>(
        p, stats);
    e = cudaGetLastError();
  }
  if (stats) cached_release(stats);
  return e;
}

}  // namespace dsv::ops::cuda
