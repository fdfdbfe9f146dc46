// linear through cuBLASLt: y[M, N] (+)= x[M, K] . w[N, K]^T (+ bias), row-major. cuBLASLt is
// column-major, so we compute y^T[N, M] = w[N, K] . x^T: A = w (transposed view), B = x.
// bf16 weights: up to kGemvMaxRows rows go to the GEMV kernels (linear_bf16.cu); more rows are cast
// to a bf16 scratch and multiplied on bf16 tensor cores with fp32 accumulation and output.
#include <cublasLt.h>

#include <cstdio>
#include <map>
#include <utility>

#include "backends/cuda/cuda_ops.h"

namespace dsv::ops::cuda {
namespace {

// A workspace lets cuBLASLt's heuristic pick split-K and stream-K kernels for skinny products.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

struct LtHandle {
  cublasLtHandle_t handle = nullptr;
  // One workspace per stream: products on two streams of a branch (ops::Branch) may run at once.
  std::map<cudaStream_t, void*> workspaces;
  LtHandle() { cublasLtCreate(&handle); }
  ~LtHandle() {
    if (handle) cublasLtDestroy(handle);
  }  // the workspaces live as long as the process (no cudaFree during static teardown)
};

LtHandle& lt() {  // one per thread, shared by linear and linear_weight_grad
  thread_local LtHandle h;
  return h;
}
cublasLtHandle_t lt_handle() { return lt().handle; }
void* workspace(cudaStream_t stream) {  // null when it could not be had: no split-K then
  auto [it, made] = lt().workspaces.try_emplace(stream, nullptr);
  if (made && cudaMalloc(&it->second, kWorkspaceBytes) != cudaSuccess) {
    cudaGetLastError();
    it->second = nullptr;
  }
  return it->second;
}
size_t workspace_bytes(cudaStream_t stream) { return workspace(stream) ? kWorkspaceBytes : 0; }

// True fp32 products (like the CPU op) unless the caller opted into TF32 tensor cores. (Bf16 products
// make bf16 operand copies and take the bf16 path instead.)
cublasComputeType_t compute_type() {
  return matmul_precision() == MatmulPrecision::Tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

}  // namespace

cudaError_t add_bias(const LinearParams& p, cudaStream_t stream);  // bias.cu

namespace {
// Decode-sized products read bf16 weights once in the GEMV kernels; above this, tensor cores win.
constexpr int64_t kGemvMaxRows = 8;
}  // namespace

namespace {
// x16: a bf16 copy of x (same strides) the caller already made, or null (made here when needed).
cudaError_t linear_impl(const LinearParams& p, const uint16_t* x16, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  const int64_t xs = p.x_stride ? p.x_stride : p.K, ys = p.y_stride ? p.y_stride : p.N;
  // Bf16 products with fp32 weights (train.bf16, autocast-style): a bf16 compute copy of the weights
  // (the registered one, or one made for this call), then the bf16-weight path below. (cuBLASLt's FAST_16BF compute type on fp32
  // operands ran at TF32 speed and precision here, so the rounding is ours.)
  if (!p.w_bf16 && p.K > 0 && matmul_precision() == MatmulPrecision::Bf16) {
    const int64_t span = (p.batch - 1) * p.w_batch_stride + p.N * p.K;
    LinearParams q = p;
    q.w = nullptr;
    q.w_bf16 = bf16_weight_copy(p.w, span);  // the trainer's copy of its master weights, if registered
    if (!q.w_bf16 && p.M <= kGemvMaxRows) {  // decode-sized (the fp32 router): round in registers
      bool launched = false;
      const cudaError_t e = linear_f32w_bf16_rows(p, stream, &launched);
      if (launched || e != cudaSuccess) return e;
    }
    DeviceScratch scratch;
    if (!q.w_bf16) {
      uint16_t* w16 = nullptr;
      const cudaError_t e = scratch.bf16_copy(p.w, span, stream, &w16);
      if (e != cudaSuccess) return e;
      q.w_bf16 = w16;
    }
    return linear_impl(q, x16, stream);
  }
  const bool bf16 = p.w_bf16 != nullptr;
  if (bf16 && (p.M <= kGemvMaxRows || p.K == 0)) return linear_bf16_rows(p, stream);
  if (!bf16 && p.M <= kGemvMaxRows && p.K > 0 && matmul_precision() == MatmulPrecision::Fp32) {  // exact fp32 GEMV
    bool launched = false;
    const cudaError_t e = linear_f32_rows(p, stream, &launched);
    if (launched || e != cudaSuccess) return e;
  }
  DeviceScratch scratch;
  const uint16_t* x_bf16 = x16;  // bf16(x) over the span of x the product reads, same strides
  if (bf16 && !x_bf16) {
    uint16_t* made = nullptr;
    const int64_t span = (p.batch - 1) * p.x_batch_stride + (p.M - 1) * xs + p.K;
    const cudaError_t e = scratch.bf16_copy(p.x, span, stream, &made);
    if (e != cudaSuccess) return e;
    x_bf16 = made;
  }
  const cudaDataType_t in_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t compute = bf16 ? CUBLAS_COMPUTE_32F : compute_type();
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  if (cublasLtMatmulDescCreate(&op, compute, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) return cudaErrorUnknown;
  // Row-major w[N, K] is column-major [K, N] (ld K): transpose it. Row-major w[K, N]
  // (w_transposed) is column-major [N, K] (ld N): use it as is.
  const cublasOperation_t transa = p.w_transposed ? CUBLAS_OP_N : CUBLAS_OP_T, transb = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof transa);
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof transb);
  // Column-major views: w is [K, N] with ld K (transposed -> [N, K]); x^T is [K, M] with ld xs;
  // y^T is [N, M] with ld ys.
  if (p.w_transposed) cublasLtMatrixLayoutCreate(&a, in_type, p.N, p.K, p.N);
  else cublasLtMatrixLayoutCreate(&a, in_type, p.K, p.N, p.K);
  cublasLtMatrixLayoutCreate(&b, in_type, p.K, p.M, xs);
  cublasLtMatrixLayoutCreate(&c, CUDA_R_32F, p.N, p.M, ys);
  if (p.batch > 1) {  // strided batch: one launch for all heads
    const int32_t count = static_cast<int32_t>(p.batch);
    const int64_t sa = p.w_batch_stride, sb = p.x_batch_stride, sc = p.y_batch_stride;
    for (auto [layout, stride] : {std::pair{a, sa}, std::pair{b, sb}, std::pair{c, sc}}) {
      cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count);
      cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride);
    }
  }
  const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
  const void* w = bf16 ? static_cast<const void*>(p.w_bf16) : p.w;
  const void* x = bf16 ? static_cast<const void*>(x_bf16) : p.x;
  const cublasStatus_t status =
      cublasLtMatmul(lt_handle(), op, &alpha, w, a, x, b, &beta, p.y, c, p.y, c, nullptr, workspace(stream), workspace_bytes(stream), stream);
  cublasLtMatrixLayoutDestroy(a);
  cublasLtMatrixLayoutDestroy(b);
  cublasLtMatrixLayoutDestroy(c);
  cublasLtMatmulDescDestroy(op);
  // Shapes the bf16 tensor-core kernels refuse (odd strides) take the GEMV kernels, 8 rows a pass.
  if (bf16 && status == CUBLAS_STATUS_NOT_SUPPORTED) {
    if (!p.x) return cudaErrorNotSupported;  // only a bf16 x was given (linear_backward's dy_bf16)
    static bool warned = false;  // slow for many rows: say so once
    if (!warned) std::fprintf(stderr, "warning: cuBLASLt has no bf16 kernel for a %ldx%ldx%ld product (batch %ld); "
                                      "using the GEMV kernels\n", static_cast<long>(p.M), static_cast<long>(p.N),
                              static_cast<long>(p.K), static_cast<long>(p.batch));
    warned = true;
    return linear_bf16_rows(p, stream);
  }
  if (status != CUBLAS_STATUS_SUCCESS) return cudaErrorUnknown;
  if (!p.bias) return cudaSuccess;
  for (int64_t i = 0; i < p.batch; ++i) {  // biases are rare here (attention_bias): a loop is fine
    LinearParams one = p;
    one.y = p.y + i * p.y_batch_stride;
    one.bias = p.bias + i * p.bias_batch_stride;
    const cudaError_t e = add_bias(one, stream);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}
}  // namespace

cudaError_t linear(const LinearParams& p, cudaStream_t stream) { return linear_impl(p, nullptr, stream); }

// dw[N, K] (+)= dy[M, N]^T . x[M, K], row-major. Column-major, dw is dw^T[K, N] (ld K) = x^T[K, M] .
// dy[M, N]: A = x as stored ([K, M], ld x_stride), B = dy transposed (stored [N, M], ld dy_stride).
// The bias gradient is a deterministic column sum of dy.
namespace {
// dy16: a bf16 copy of dy (same strides) the caller already made, or null (made here when needed).
cudaError_t weight_grad_impl(const LinearWeightGradParams& p, const uint16_t* dy16_given, cudaStream_t stream) {
  const int64_t xs = p.x_stride ? p.x_stride : p.K, dys = p.dy_stride ? p.dy_stride : p.N;
  if (p.N > 0 && p.K > 0) {
    if (p.M == 0) {  // an empty sum: zeros (cuBLASLt is not asked about k = 0)
      if (!p.accumulate) {
        const cudaError_t e =
            cudaMemsetAsync(p.dw, 0, static_cast<size_t>(p.N) * static_cast<size_t>(p.K) * sizeof(float), stream);
        if (e != cudaSuccess) return e;
      }
    } else {
      // Bf16 products: bf16 copies of x and dy (same strides), fp32 sums into the fp32 dw.
      const bool bf16 = matmul_precision() == MatmulPrecision::Bf16;
      DeviceScratch scratch;
      uint16_t* x16 = nullptr;
      const uint16_t* dy16 = dy16_given;
      if (bf16) {
        cudaError_t e = scratch.bf16_copy(p.x, (p.M - 1) * xs + p.K, stream, &x16);
        if (e == cudaSuccess && !dy16) {
          uint16_t* made = nullptr;
          e = scratch.bf16_copy(p.dy, (p.M - 1) * dys + p.N, stream, &made);
          dy16 = made;
        }
        if (e != cudaSuccess) return e;
      }
      const cudaDataType_t in_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
      cublasLtMatmulDesc_t op = nullptr;
      cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
      if (cublasLtMatmulDescCreate(&op, bf16 ? CUBLAS_COMPUTE_32F : compute_type(), CUDA_R_32F) !=
          CUBLAS_STATUS_SUCCESS)
        return cudaErrorUnknown;
      const cublasOperation_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_T;
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof transa);
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof transb);
      cublasLtMatrixLayoutCreate(&a, in_type, p.K, p.M, xs);
      cublasLtMatrixLayoutCreate(&b, in_type, p.N, p.M, dys);
      cublasLtMatrixLayoutCreate(&c, CUDA_R_32F, p.K, p.N, p.K);
      const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
      const void* x = bf16 ? static_cast<const void*>(x16) : p.x;
      const void* dy = bf16 ? static_cast<const void*>(dy16) : p.dy;
      const cublasStatus_t status =
          cublasLtMatmul(lt_handle(), op, &alpha, x, a, dy, b, &beta, p.dw, c, p.dw, c, nullptr, workspace(stream),
                         workspace_bytes(stream), stream);
      cublasLtMatrixLayoutDestroy(a);
      cublasLtMatrixLayoutDestroy(b);
      cublasLtMatrixLayoutDestroy(c);
      cublasLtMatmulDescDestroy(op);
      if (status != CUBLAS_STATUS_SUCCESS) return cudaErrorUnknown;
    }
  }
  if (!p.dbias) return cudaSuccess;
  return column_sum(p.dy, dys, nullptr, 0, nullptr, p.dbias, p.M, p.N, p.accumulate, stream);
}
}  // namespace

cudaError_t linear_weight_grad(const LinearWeightGradParams& p, cudaStream_t stream) {
  return weight_grad_impl(p, nullptr, stream);
}

// Bf16 products: dy rounded to bf16 once, read by both products (each used to round it itself). A
// given dy_bf16 is that copy already; where it cannot serve as one (other precisions, a bias gradient,
// few rows, unaligned rows), it is widened to fp32 and the call goes on as with dy.
cudaError_t linear_backward(const LinearBackwardParams& p, cudaStream_t stream) {
  const int64_t dys = p.dy_stride ? p.dy_stride : p.N;
  if (p.dy_bf16) {
    const bool direct = matmul_precision() == MatmulPrecision::Bf16 && !p.dbias && p.M > kGemvMaxRows && p.K > 0 &&
                        p.N > 0 && dys % 8 == 0 && reinterpret_cast<uintptr_t>(p.dy_bf16) % 16 == 0;
    if (!direct) {
      DeviceScratch scratch;
      const int64_t span = p.M > 0 ? (p.M - 1) * dys + p.N : 0;
      float* dy = scratch.get<float>(span);
      if (!dy) return cudaErrorMemoryAllocation;
      if (span > 0) {
        const cudaError_t e = cast({.x = p.dy_bf16, .y = dy, .n = span, .to_bf16 = false}, stream);
        if (e != cudaSuccess) return e;
      }
      LinearBackwardParams q = p;
      q.dy = dy;
      q.dy_bf16 = nullptr;
      return linear_backward(q, stream);
    }
  }
  const LinearWeightGradParams wg{.dy = p.dy, .x = p.x, .dw = p.dw, .dbias = p.dbias, .M = p.M, .N = p.N,
                                  .K = p.K, .dy_stride = p.dy_stride, .x_stride = p.x_stride,
                                  .accumulate = p.accumulate_dw};
  const LinearParams dx{.x = p.dy, .w = p.w, .y = p.dx, .M = p.M, .N = p.K, .K = p.N, .x_stride = p.dy_stride,
                        .y_stride = p.dx_stride, .accumulate = p.accumulate_dx, .w_transposed = true};
  DeviceScratch scratch;
  const uint16_t* dy16 = p.dy_bf16;
  if (!dy16 && matmul_precision() == MatmulPrecision::Bf16 && p.M > 0 && p.N > 0 && p.K > 0) {
    uint16_t* made = nullptr;
    const cudaError_t e = scratch.bf16_copy(p.dy, (p.M - 1) * dys + p.N, stream, &made);
    if (e != cudaSuccess) return e;
    dy16 = made;
  }
  cudaError_t e = weight_grad_impl(wg, dy16, stream);
  if (e == cudaSuccess && p.dx) e = linear_impl(dx, dy16, stream);
  return e;
}

}  // namespace dsv::ops::cuda
