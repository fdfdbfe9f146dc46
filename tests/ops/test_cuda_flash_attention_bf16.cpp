// The bf16 tensor-core flash attention (MatmulPrecision::Bf16) against the fp32 CPU reference,
// forward and backward, on awkward sizes (tile edges, T < S as in prefill after a cache, strided keys,
// single rows). GPU host only.
//
// Tolerance: bf16 keeps 8 significant bits (unit roundoff u = 2^-8 ~ 3.9e-3) for q, k, v, dout and
// for the probabilities P / dS entering the second product; accumulation is fp32. A dot product of
// random inputs with both operands rounded has a relative error near u, so out and dv (one rounded
// product after the softmax) are held to 1e-2 (2.5 u), dq and dk (through dS = P (dP - D), a
// difference of two sums, then a second rounding) to 2e-2. The TF32 kernels meet 2e-3 / 5e-3 on the
// same cases; the measured errors are printed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "backends/cuda/cuda_ops.h"
#include "core/dtype.h"
#include "cuda_test_util.h"
#include "flash_attention_checks.h"

namespace dsv::ops {
namespace {

using namespace test;

class CudaFlashAttentionBf16 : public CudaTest {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    static bool registered = false;  // the dispatch test goes through ops::attention
    if (!IsSkipped() && !registered) cuda::register_cuda_backend();
    registered = true;
  }
};

TEST_F(CudaFlashAttentionBf16, ForwardMatchesCpu) {
  check_flash_forward("bf16 flash", cuda::flash_attention_bf16, cuda::flash_attention_bf16_supported,
                      {FlashCase{64, 64, 1, 16, 16, 0}, FlashCase{300, 300, 3, 192, 128, 0}, FlashCase{1, 1, 2, 32, 16, 0},
                       FlashCase{100, 357, 2, 64, 48, 0} /* T < S: prefill after a cache */,
                       FlashCase{130, 130, 2, 192, 128, 40} /* strided keys */, FlashCase{1000, 1000, 2, 192, 128, 0},
                       FlashCase{17, 200, 1, 128, 128, 0},
                       FlashCase{300, 1000, 2, 192, 128, 0} /* many ring laps, offset off the tile grid */},
                      1e-2, /*must_round=*/true);
}

TEST_F(CudaFlashAttentionBf16, BackwardMatchesCpu) {
  check_flash_backward("bf16 flash", cuda::flash_attention_bf16_backward,
                       {FlashCase{64, 64, 1, 16, 16, 0}, FlashCase{300, 300, 3, 192, 128, 0}, FlashCase{1, 1, 1, 32, 16, 0},
                        FlashCase{100, 357, 2, 64, 48, 0}, FlashCase{257, 257, 4, 192, 128, 0},
                        FlashCase{70, 70, 1, 128, 128, 0}},
                       2e-2, 1e-2);
}

TEST_F(CudaFlashAttentionBf16, BackwardWithTheForwardsStatsIsTheSame) {
  check_flash_backward_given_stats(cuda::flash_attention_bf16, cuda::flash_attention_bf16_backward);
}

TEST_F(CudaFlashAttentionBf16, BackwardIsDeterministic) {
  check_flash_backward_deterministic(cuda::flash_attention_bf16_backward);
}

// The op dispatch takes the bf16 kernels only in bf16 mode: in the default fp32 mode the result is
// the reference's to fp32 accuracy, in bf16 mode it carries bf16 rounding.
TEST_F(CudaFlashAttentionBf16, DispatchFollowsThePrecision) {
  const int64_t T = 96, S = 96, H = 2, Dqk = 64, Dv = 64;
  const auto q = randn(T * H * Dqk, 5), k = randn(S * H * Dqk, 6), v = randn(S * H * Dv, 7);
  std::vector<float> want(T * H * Dv);
  AttentionParams p{.q = q.data(), .k = k.data(), .v = v.data(), .out = want.data(), .T = T, .S = S, .H = H,
                    .Dqk = Dqk, .Dv = Dv, .scale = 0.125f};
  cpu::attention(p);
  Dev<float> dq(q), dk(k), dv(v), dout(std::vector<float>(want.size(), NAN));
  p.q = dq.ptr;
  p.k = dk.ptr;
  p.v = dv.ptr;
  p.out = dout.ptr;
  const Context ctx{.backend = Backend::Cuda};
  attention(ctx, p);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const double fp32_err = rel_l2(dout.download(), want);
  set_matmul_precision(MatmulPrecision::Bf16);
  attention(ctx, p);
  set_matmul_precision(MatmulPrecision::Fp32);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const double bf16_err = rel_l2(dout.download(), want);
  EXPECT_LE(fp32_err, 1e-5);
  EXPECT_GT(bf16_err, 1e-4);
  EXPECT_LE(bf16_err, 1e-2);
}

// MLA's expanded layout (per-head strides into kv rows and a roped key shared by all heads) is packed
// by the bf16 kernels straight from where it lies: the result is the CPU's on the same layout (which
// copies dense keys first) to bf16 accuracy, across tile edges and with T < S.
TEST_F(CudaFlashAttentionBf16, ReadsTheMlaLayoutInPlace) {
  for (const auto [T, S] : {std::pair<int64_t, int64_t>{200, 200}, {70, 333}}) {
    const int64_t H = 3, Dn = 128, R = 64, Dv = 128, C = 96, width = C + R, Dqk = Dn + R;
    const auto q = randn(T * H * Dqk, 40), kv = randn(S * H * (Dn + Dv), 41), rows = randn(S * width, 42);
    AttentionParams p{.q = q.data(), .k = kv.data(), .v = kv.data() + Dn, .T = T, .S = S, .H = H, .Dqk = Dqk,
                      .Dv = Dv, .k_stride = H * (Dn + Dv), .v_stride = H * (Dn + Dv), .scale = 0.07f,
                      .bf16_operands = true, .k_head_stride = Dn + Dv, .v_head_stride = Dn + Dv,
                      .k_shared = rows.data() + C, .k_shared_stride = width, .k_shared_dims = R};
    std::vector<float> want(T * H * Dv);
    p.out = want.data();
    attention(Context{}, p);
    Dev<float> dq(q), dkv(kv), drows(rows), dout(nans(T * H * Dv));
    p.q = dq.ptr;
    p.k = dkv.ptr;
    p.v = dkv.ptr + Dn;
    p.k_shared = drows.ptr + C;
    p.out = dout.ptr;
    ASSERT_TRUE(backend_table(Backend::Cuda).attention_reads_layout(p));  // no dense copies on this path
    attention(Context{.backend = Backend::Cuda}, p);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const double err = rel_l2(dout.download(), want);
    std::printf("bf16 flash, MLA layout, T%ld S%ld: rel L2 %.2e\n", static_cast<long>(T), static_cast<long>(S), err);
    EXPECT_LE(err, 1e-2);
  }
}

// In bf16 mode the fp32-weight products round both operands to bf16 and sum in fp32: the result is the
// CPU product of the rounded operands up to summation order (1e-5), and visibly not the fp32 one.
TEST_F(CudaFlashAttentionBf16, Bf16ModeProductsRoundBothOperands) {
  const int64_t M = 300, N = 72, K = 256;
  const auto x = randn(M * K, 21), w = randn(N * K, 22), dy = randn(M * N, 23);
  auto rounded = [](std::vector<float> v) {
    for (float& f : v) f = round_to_bf16(f);
    return v;
  };
  const auto xr = rounded(x), wr = rounded(w), dyr = rounded(dy);
  std::vector<float> want_y(M * N), exact_y(M * N), want_dw(N * K);
  cpu::linear({.x = xr.data(), .w = wr.data(), .y = want_y.data(), .M = M, .N = N, .K = K});
  cpu::linear({.x = x.data(), .w = w.data(), .y = exact_y.data(), .M = M, .N = N, .K = K});
  cpu::linear_weight_grad({.dy = dyr.data(), .x = xr.data(), .dw = want_dw.data(), .M = M, .N = N, .K = K});
  Dev<float> dx(x), dw(w), ddy(dy), y(nans(M * N)), g(nans(N * K));
  const Context ctx{.backend = Backend::Cuda};
  set_matmul_precision(MatmulPrecision::Bf16);
  linear(ctx, {.x = dx.ptr, .w = dw.ptr, .y = y.ptr, .M = M, .N = N, .K = K});
  linear_weight_grad(ctx, {.dy = ddy.ptr, .x = dx.ptr, .dw = g.ptr, .M = M, .N = N, .K = K});
  set_matmul_precision(MatmulPrecision::Fp32);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto got_y = y.download();
  EXPECT_LE(rel_l2(got_y, want_y), 1e-5);
  EXPECT_GT(rel_l2(got_y, exact_y), 1e-4);
  EXPECT_LE(rel_l2(g.download(), want_dw), 1e-5);
}

// A registered bf16 copy of a weight block is what bf16-mode products read for weights inside it (the
// copy here holds 2 w, so reading it doubles y); weights outside the block are rounded per call.
TEST_F(CudaFlashAttentionBf16, RegisteredWeightCopyIsRead) {
  const int64_t M = 64, N = 32, K = 128;
  const auto x = randn(M * K, 31), w = randn(2 * N * K, 32);  // two weight matrices in one block
  std::vector<float> twice(w.size());
  for (size_t i = 0; i < w.size(); ++i) twice[i] = 2.0f * w[i];
  Dev<float> dx(x), dw(w), y(nans(M * N)), y_out(nans(M * N));
  Dev<uint16_t> copy(to_bf16(twice));
  const Context ctx{.backend = Backend::Cuda};
  set_matmul_precision(MatmulPrecision::Bf16);
  set_bf16_weight_copy(dw.ptr, copy.ptr, N * K);  // only the first matrix is covered
  linear(ctx, {.x = dx.ptr, .w = dw.ptr, .y = y.ptr, .M = M, .N = N, .K = K});
  linear(ctx, {.x = dx.ptr, .w = dw.ptr + N * K, .y = y_out.ptr, .M = M, .N = N, .K = K});
  set_bf16_weight_copy(nullptr, nullptr, 0);
  set_matmul_precision(MatmulPrecision::Fp32);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> xr(x), w0(w.begin(), w.begin() + N * K), w1(w.begin() + N * K, w.end());
  for (float& f : xr) f = round_to_bf16(f);
  for (float& f : w0) f = 2.0f * round_to_bf16(f);
  for (float& f : w1) f = round_to_bf16(f);
  std::vector<float> want0(M * N), want1(M * N);
  cpu::linear({.x = xr.data(), .w = w0.data(), .y = want0.data(), .M = M, .N = N, .K = K});
  cpu::linear({.x = xr.data(), .w = w1.data(), .y = want1.data(), .M = M, .N = N, .K = K});
  EXPECT_LE(rel_l2(y.download(), want0), 1e-5);
  EXPECT_LE(rel_l2(y_out.download(), want1), 1e-5);
}

TEST_F(CudaFlashAttentionBf16, SupportedShapes) {
  EXPECT_TRUE(cuda::flash_attention_bf16_supported(16, 16, 192, 128, 4096, 4096));
  EXPECT_TRUE(cuda::flash_attention_bf16_supported(128, 128, 192, 128, 4096, 8192));
  EXPECT_FALSE(cuda::flash_attention_bf16_supported(16, 1, 576, 512, 1, 100));  // absorbed decode
  EXPECT_FALSE(cuda::flash_attention_bf16_supported(4, 4, 24, 16, 10, 10));     // not a multiple of 16
  EXPECT_FALSE(cuda::flash_attention_bf16_supported(4, 4, 256, 128, 10, 10));   // beyond the register budget
  EXPECT_FALSE(cuda::flash_attention_bf16_supported(4, 4, 64, 64, 11, 10));     // T > S
}

}  // namespace
}  // namespace dsv::ops
