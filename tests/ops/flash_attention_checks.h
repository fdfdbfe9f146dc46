// Shared checks of the tensor-core flash attention kernels (TF32: flash_attention.cu, bf16:
// flash_attention_bf16.cu) against the fp32 CPU reference: forward and backward over a list of shapes
// with the kernel's bounds (relative L2; measured errors are printed), and bitwise reruns.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <utility>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "backends/cuda/cuda_ops.h"
#include "cuda_test_util.h"

namespace dsv::ops::test {
namespace {  // as cuda_test_util.h: one copy per test file

struct FlashCase {
  int64_t T, S, H, Dqk, Dv, k_pad;  // k_pad: extra floats per key row (a strided k)
};
using FlashForward = cudaError_t (*)(const AttentionParams&, cudaStream_t);
using FlashBackward = cudaError_t (*)(const AttentionBackwardParams&, cudaStream_t);
using FlashSupported = bool (*)(int64_t H, int64_t Hkv, int64_t Dqk, int64_t Dv, int64_t T, int64_t S);

// must_round: the kernel rounds its operands, so an exact match would mean another path ran.
void check_flash_forward(const char* label, FlashForward forward, FlashSupported supported,
                                std::initializer_list<FlashCase> cases, double bound, bool must_round) {
  for (const FlashCase& c : cases) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " S" << c.S << " H" << c.H << " Dqk" << c.Dqk << " Dv" << c.Dv
                                    << " k_pad" << c.k_pad);
    ASSERT_TRUE(supported(c.H, c.H, c.Dqk, c.Dv, c.T, c.S));
    const int64_t ks = c.H * c.Dqk + c.k_pad;
    const auto q = randn(c.T * c.H * c.Dqk, 1), k = randn(c.S * ks, 2), v = randn(c.S * c.H * c.Dv, 3);
    std::vector<float> want(c.T * c.H * c.Dv);
    AttentionParams p{.q = q.data(), .k = k.data(), .v = v.data(), .out = want.data(), .T = c.T, .S = c.S, .H = c.H,
                      .Dqk = c.Dqk, .Dv = c.Dv, .k_stride = c.k_pad ? ks : 0,
                      .scale = 1.0f / std::sqrt(static_cast<float>(c.Dqk))};
    std::vector<float> want_lse(c.T * c.H);
    p.lse = want_lse.data();
    cpu::attention(p);
    Dev<float> dq(q), dk(k), dv(v), dout(std::vector<float>(want.size(), NAN)),
        dlse(std::vector<float>(want_lse.size(), NAN));
    p.q = dq.ptr;
    p.k = dk.ptr;
    p.v = dv.ptr;
    p.out = dout.ptr;
    p.lse = dlse.ptr;
    ASSERT_EQ(forward(p, 0), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const double err = rel_l2(dout.download(), want), err_lse = rel_l2(dlse.download(), want_lse);
    std::printf("%s forward T%ld S%ld H%ld Dqk%ld Dv%ld: rel L2 %.2e, lse %.2e\n", label, static_cast<long>(c.T),
                static_cast<long>(c.S), static_cast<long>(c.H), static_cast<long>(c.Dqk), static_cast<long>(c.Dv), err,
                err_lse);
    EXPECT_LE(err, bound);
    EXPECT_LE(err_lse, bound) << "lse";  // logsumexp of scores made from the same rounded operands
    if (must_round) EXPECT_GT(err, 0.0);
  }
}

void check_flash_backward(const char* label, FlashBackward backward, std::initializer_list<FlashCase> cases,
                                 double bound_dq_dk, double bound_dv) {
  for (const FlashCase& c : cases) {
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
    ASSERT_EQ(backward(p, 0), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const double eq = rel_l2(ddq.download(), want_dq), ek = rel_l2(ddk.download(), want_dk),
                 ev = rel_l2(ddv.download(), want_dv);
    std::printf("%s backward T%ld S%ld H%ld Dqk%ld Dv%ld: rel L2 dq %.2e dk %.2e dv %.2e\n", label,
                static_cast<long>(c.T), static_cast<long>(c.S), static_cast<long>(c.H), static_cast<long>(c.Dqk),
                static_cast<long>(c.Dv), eq, ek, ev);
    EXPECT_LE(eq, bound_dq_dk) << "dq";
    EXPECT_LE(ek, bound_dq_dk) << "dk";
    EXPECT_LE(ev, bound_dv) << "dv";
  }
}

// The forward's out and lse handed to the backward replace its own rerun of the forward: the same
// bits as without them (T == S and T < S).
void check_flash_backward_given_stats(FlashForward forward, FlashBackward backward) {
  for (const auto [T, S] : {std::pair<int64_t, int64_t>{200, 200}, {77, 300}}) {
    SCOPED_TRACE(testing::Message() << "T" << T << " S" << S);
    const int64_t H = 2, Dqk = 192, Dv = 128;
    const auto q = randn(T * H * Dqk, 1), k = randn(S * H * Dqk, 2), v = randn(S * H * Dv, 3), g = randn(T * H * Dv, 4);
    Dev<float> dq(q), dk(k), dv(v), dg(g), ddq(q), ddk(k), ddv(v), out(std::vector<float>(T * H * Dv, NAN)),
        lse(std::vector<float>(T * H, NAN));
    const AttentionParams fp{.q = dq.ptr, .k = dk.ptr, .v = dv.ptr, .out = out.ptr, .T = T, .S = S, .H = H,
                             .Dqk = Dqk, .Dv = Dv, .scale = 0.07f, .lse = lse.ptr};
    ASSERT_EQ(forward(fp, 0), cudaSuccess);
    AttentionBackwardParams p{.q = dq.ptr, .k = dk.ptr, .v = dv.ptr, .dout = dg.ptr, .dq = ddq.ptr, .dk = ddk.ptr,
                              .dv = ddv.ptr, .T = T, .S = S, .H = H, .Dqk = Dqk, .Dv = Dv, .scale = 0.07f};
    ASSERT_EQ(backward(p, 0), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const auto a = ddq.download(), b = ddk.download(), c = ddv.download();
    for (auto [ptr, n] : {std::pair{ddq.ptr, q.size()}, std::pair{ddk.ptr, k.size()}, std::pair{ddv.ptr, v.size()}}) {
      const std::vector<float> poison(n, NAN);  // the second run must write every gradient again
      ASSERT_EQ(cudaMemcpy(ptr, poison.data(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    }
    p.out = out.ptr;
    p.lse = lse.ptr;
    ASSERT_EQ(backward(p, 0), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(std::memcmp(a.data(), ddq.download().data(), a.size() * sizeof(float)), 0) << "dq";
    EXPECT_EQ(std::memcmp(b.data(), ddk.download().data(), b.size() * sizeof(float)), 0) << "dk";
    EXPECT_EQ(std::memcmp(c.data(), ddv.download().data(), c.size() * sizeof(float)), 0) << "dv";
  }
}

void check_flash_backward_deterministic(FlashBackward backward) {
  const int64_t T = 200, S = 200, H = 2, Dqk = 64, Dv = 32;
  const auto q = randn(T * H * Dqk, 1), k = randn(S * H * Dqk, 2), v = randn(S * H * Dv, 3), g = randn(T * H * Dv, 4);
  Dev<float> dq(q), dk(k), dv(v), dg(g), ddq(q), ddk(k), ddv(v);
  const AttentionBackwardParams p{.q = dq.ptr, .k = dk.ptr, .v = dv.ptr, .dout = dg.ptr, .dq = ddq.ptr, .dk = ddk.ptr,
                                  .dv = ddv.ptr, .T = T, .S = S, .H = H, .Dqk = Dqk, .Dv = Dv, .scale = 0.125f};
  ASSERT_EQ(backward(p, 0), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto a = ddq.download(), b = ddk.download(), c = ddv.download();
  ASSERT_EQ(backward(p, 0), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(std::memcmp(a.data(), ddq.download().data(), a.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(b.data(), ddk.download().data(), b.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(c.data(), ddv.download().data(), c.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace dsv::ops::test
