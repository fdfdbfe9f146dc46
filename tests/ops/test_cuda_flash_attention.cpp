// The tensor-core (TF32) flash attention against the fp32 CPU reference, forward and backward, on
// awkward sizes (tile edges, T < S as in prefill after a cache, strided keys). GPU host only.
//
// Tolerance: TF32 keeps 10 mantissa bits (unit roundoff 2^-11 ~ 4.9e-4) for the operands of every
// product; with fp32 accumulation the relative L2 error of a dot product of random inputs stays
// near that unit. The bounds below are 4x-10x that unit: out and dv (one product after the
// softmax) 2e-3; dq and dk (through dS = P (dP - D), a difference of two sums) 5e-3. The measured
// errors are printed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "backends/cuda/cuda_ops.h"
#include "cuda_test_util.h"

namespace dsv::ops {
namespace {

using namespace test;

class CudaFlashAttention : public CudaTest {};

struct Case {
  int64_t T, S, H, Dqk, Dv, k_pad;  // k_pad: extra floats per key row (a strided k)
};

TEST_F(CudaFlashAttention, ForwardMatchesCpu) {
  for (const Case& c : {Case{64, 64, 1, 16, 16, 0}, Case{300, 300, 3, 192, 128, 0}, Case{1, 1, 2, 32, 16, 0},
                        Case{100, 357, 2, 64, 48, 0} /* T < S: prefill after a cache */,
                        Case{130, 130, 2, 192, 128, 40} /* strided keys */, Case{77, 77, 1, 256, 256, 0}}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " S" << c.S << " H" << c.H << " Dqk" << c.Dqk << " Dv" << c.Dv
                                    << " k_pad" << c.k_pad);
    ASSERT_TRUE(cuda::flash_attention_supported(c.H, c.H, c.Dqk, c.Dv, c.T, c.S));
    const int64_t ks = c.H * c.Dqk + c.k_pad;
    const auto q = randn(c.T * c.H * c.Dqk, 1), k = randn(c.S * ks, 2), v = randn(c.S * c.H * c.Dv, 3);
    std::vector<float> want(c.T * c.H * c.Dv);
    AttentionParams p{.q = q.data(), .k = k.data(), .v = v.data(), .out = want.data(), .T = c.T, .S = c.S, .H = c.H,
                      .Dqk = c.Dqk, .Dv = c.Dv, .k_stride = c.k_pad ? ks : 0,
                      .scale = 1.0f / std::sqrt(static_cast<float>(c.Dqk))};
    cpu::attention(p);
    Dev<float> dq(q), dk(k), dv(v), dout(std::vector<float>(want.size(), NAN));
    p.q = dq.ptr;
    p.k = dk.ptr;
    p.v = dv.ptr;
    p.out = dout.ptr;
    ASSERT_EQ(cuda::flash_attention(p, 0), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const double err = rel_l2(dout.download(), want);
    std::printf("flash forward T%ld S%ld H%ld Dqk%ld Dv%ld: rel L2 %.2e\n", static_cast<long>(c.T),
                static_cast<long>(c.S), static_cast<long>(c.H), static_cast<long>(c.Dqk), static_cast<long>(c.Dv), err);
    EXPECT_LE(err, 2e-3);
  }
}

TEST_F(CudaFlashAttention, BackwardMatchesCpu) {
  for (const Case& c : {Case{64, 64, 1, 16, 16, 0}, Case{300, 300, 3, 192, 128, 0}, Case{1, 1, 1, 32, 16, 0},
                        Case{100, 357, 2, 64, 48, 0}, Case{257, 257, 4, 192, 128, 0}, Case{70, 70, 1, 256, 256, 0}}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " S" << c.S << " H" << c.H << " Dqk" << c.Dqk << " Dv" << c.Dv);
    const auto q = randn(c.T * c.H * c.Dqk, 11), k = randn(c.S * c.H * c.Dqk, 12), v = randn(c.S * c.H * c.Dv, 13),
               g = randn(c.T * c.H * c.Dv, 14);
    std::vector<float> want_dq(q.size()), want_dk(k.size()), want_dv(v.size());
    AttentionBackwardParams p{.q = q.data(), .k = k.data(), .v = v.data(), .dout = g.data(), .dq = want_dq.data(),
                              .dk = want_dk.data(), .dv = want_dv.data(), .T = c.T, .S = c.S, .H = c.H,
                              .Dqk = c.Dqk, .Dv = c.Dv, .scale = 1.0f / std::sqrt(static_cast<float>(c.Dqk))};
    cpu::attention_backward(p);
    Dev<float> dq(q), dk(k), dv(v), dg(g), ddq(std::vector<float>(q.size(), NAN)),
        ddk(std::vector<float>(k.size(), NAN)), ddv(std::vector<float>(v.size(), NAN));
    p.q = dq.ptr;
    p.k = dk.ptr;
    p.v = dv.ptr;
    p.dout = dg.ptr;
    p.dq = ddq.ptr;
    p.dk = ddk.ptr;
    p.dv = ddv.ptr;
    ASSERT_EQ(cuda::flash_attention_backward(p, 0), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const double eq = rel_l2(ddq.download(), want_dq), ek = rel_l2(ddk.download(), want_dk),
                 ev = rel_l2(ddv.download(), want_dv);
    std::printf("flash backward T%ld S%ld H%ld Dqk%ld Dv%ld: rel L2 dq %.2e dk %.2e dv %.2e\n",
                static_cast<long>(c.T), static_cast<long>(c.S), static_cast<long>(c.H), static_cast<long>(c.Dqk),
                static_cast<long>(c.Dv), eq, ek, ev);
    EXPECT_LE(eq, 5e-3) << "dq";
    EXPECT_LE(ek, 5e-3) << "dk";
    EXPECT_LE(ev, 2e-3) << "dv";
  }
}

TEST_F(CudaFlashAttention, BackwardIsDeterministic) {
  const int64_t T = 200, S = 200, H = 2, Dqk = 64, Dv = 32;
  const auto q = randn(T * H * Dqk, 1), k = randn(S * H * Dqk, 2), v = randn(S * H * Dv, 3), g = randn(T * H * Dv, 4);
  Dev<float> dq(q), dk(k), dv(v), dg(g), ddq(q), ddk(k), ddv(v);
  const AttentionBackwardParams p{.q = dq.ptr, .k = dk.ptr, .v = dv.ptr, .dout = dg.ptr, .dq = ddq.ptr, .dk = ddk.ptr,
                                  .dv = ddv.ptr, .T = T, .S = S, .H = H, .Dqk = Dqk, .Dv = Dv, .scale = 0.125f};
  ASSERT_EQ(cuda::flash_attention_backward(p, 0), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto a = ddq.download(), b = ddk.download(), c = ddv.download();
  ASSERT_EQ(cuda::flash_attention_backward(p, 0), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(std::memcmp(a.data(), ddq.download().data(), a.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(b.data(), ddk.download().data(), b.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(c.data(), ddv.download().data(), c.size() * sizeof(float)), 0);
}

TEST_F(CudaFlashAttention, SupportedShapes) {
  EXPECT_TRUE(cuda::flash_attention_supported(16, 16, 192, 128, 4096, 4096));
  EXPECT_FALSE(cuda::flash_attention_supported(16, 1, 576, 512, 1, 100));  // absorbed decode: shared K/V head
  EXPECT_TRUE(cuda::flash_attention_supported(4, 4, 24, 16, 10, 10));      // multiples of 8: the mma kernels
  EXPECT_FALSE(cuda::flash_attention_supported(4, 4, 20, 16, 10, 10));     // head dim not a multiple of 8
  EXPECT_FALSE(cuda::flash_attention_supported(4, 4, 512, 128, 10, 10));   // beyond the register budget
}

}  // namespace
}  // namespace dsv::ops
