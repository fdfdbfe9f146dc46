// Micro-benchmark of ops::cuda::linear on prefill- and decode-sized products, fp32 vs bf16 weights,
// then the training products of one expert (forward, input gradient, weight gradient) in TF32 and bf16
// mode (a development aid for docs/PERFORMANCE.md's kernel notes; not a test). Build on the GPU host:
//   nvcc -std=c++17 -O2 -Isrc bench/linear_micro.cpp build/cuda/src/libdsv_cuda.a build/cuda/src/libdsv_lib.a \
//        -lcublasLt -lfmt -o /tmp/linear_micro
#include <cuda_runtime.h>

#include <cstdio>
#include <functional>
#include <vector>

#include "backends/cuda/cuda_ops.h"

using namespace dsv::ops;

int main() {
  cuda::register_cuda_backend();
  struct Shape { int64_t M, N, K; };
  const Shape shapes[] = {{1, 2048, 2048}, {1, 102400, 2048}, {8, 1408, 2048}, {48, 1408, 2048},
                          {512, 1408, 2048}, {512, 4096, 512}, {4096, 2048, 2048}};
  for (const Shape& s : shapes) {
    float *x, *y, *w;
    uint16_t* w16;
    cudaMalloc(&x, s.M * s.K * 4);
    cudaMalloc(&y, s.M * s.N * 4);
    cudaMalloc(&w, s.N * s.K * 4);
    cudaMalloc(&w16, s.N * s.K * 2);
    cudaMemset(x, 0, s.M * s.K * 4);
    cudaMemset(w, 0, s.N * s.K * 4);
    cudaMemset(w16, 0, s.N * s.K * 2);
    for (int bf16 = 0; bf16 < 2; ++bf16) {
      LinearParams p{.x = x, .w = bf16 ? nullptr : w, .w_bf16 = bf16 ? w16 : nullptr, .y = y, .M = s.M, .N = s.N,
                     .K = s.K};
      for (int i = 0; i < 3; ++i) cuda::linear(p, 0);
      cudaEvent_t a, b;
      cudaEventCreate(&a);
      cudaEventCreate(&b);
      const int reps = 20;
      cudaEventRecord(a);
      for (int i = 0; i < reps; ++i) cuda::linear(p, 0);
      cudaEventRecord(b);
      cudaEventSynchronize(b);
      float ms = 0;
      cudaEventElapsedTime(&ms, a, b);
      const double t = ms / reps * 1e-3;
      std::printf("%5ld x %6ld x %5ld %s: %8.1f us  %7.1f TFLOP/s  %7.0f GB/s weights\n", (long)s.M, (long)s.N,
                  (long)s.K, bf16 ? "bf16" : "fp32", t * 1e6, 2.0 * s.M * s.N * s.K / t / 1e12,
                  (bf16 ? 2.0 : 4.0) * s.N * s.K / t / 1e9);
    }
    cudaFree(x);
    cudaFree(y);
    cudaFree(w);
    cudaFree(w16);
  }

  // Training products of an expert of bench-16b-l4 (768 tokens, 1408 x 2048 matrices), fp32 storage.
  auto time_us = [](const std::function<void()>& f) {
    for (int i = 0; i < 3; ++i) f();
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    const int reps = 20;
    cudaEventRecord(a);
    for (int i = 0; i < reps; ++i) f();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    return ms / reps * 1e3;
  };
  const int64_t M = 768;
  for (const Shape s : {Shape{M, 1408, 2048}, Shape{M, 2048, 1408}}) {
    float *x, *y, *w, *dy, *dx, *dw;
    uint16_t* w16;
    cudaMalloc(&x, s.M * s.K * 4);
    cudaMalloc(&dx, s.M * s.K * 4);
    cudaMalloc(&y, s.M * s.N * 4);
    cudaMalloc(&dy, s.M * s.N * 4);
    cudaMalloc(&w, s.N * s.K * 4);
    cudaMalloc(&dw, s.N * s.K * 4);
    cudaMalloc(&w16, s.N * s.K * 2);
    for (float* p : {x, dx, y, dy, w, dw}) cudaMemset(p, 0, 4);
    const double flops = 2.0 * s.M * s.N * s.K;
    for (MatmulPrecision mp : {MatmulPrecision::Tf32, MatmulPrecision::Bf16}) {
      for (int copy = 0; copy < (mp == MatmulPrecision::Bf16 ? 2 : 1); ++copy) {
        set_matmul_precision(mp);
        set_bf16_weight_copy(copy ? w : nullptr, copy ? w16 : nullptr, copy ? s.N * s.K : 0);
        const double fwd = time_us([&] { cuda::linear({.x = x, .w = w, .y = y, .M = s.M, .N = s.N, .K = s.K}, 0); });
        const double dgrad = time_us([&] {
          cuda::linear({.x = dy, .w = w, .y = dx, .M = s.M, .N = s.K, .K = s.N, .accumulate = true,
                        .w_transposed = true}, 0);
        });
        const double wgrad = time_us([&] {
          cuda::linear_weight_grad({.dy = dy, .x = x, .dw = dw, .M = s.M, .N = s.N, .K = s.K, .accumulate = true}, 0);
        });
        std::printf("train %ld x %ld x %ld %s%s: forward %.1f us (%.0f TFLOP/s), dx %.1f us (%.0f), dw %.1f us (%.0f)\n",
                    (long)s.M, (long)s.N, (long)s.K, mp == MatmulPrecision::Tf32 ? "tf32" : "bf16",
                    copy ? " (registered weight copy)" : "", fwd, flops / fwd / 1e6, dgrad, flops / dgrad / 1e6, wgrad,
                    flops / wgrad / 1e6);
      }
    }
    set_bf16_weight_copy(nullptr, nullptr, 0);
    for (void* p : {(void*)x, (void*)dx, (void*)y, (void*)dy, (void*)w, (void*)dw, (void*)w16}) cudaFree(p);
  }
}
