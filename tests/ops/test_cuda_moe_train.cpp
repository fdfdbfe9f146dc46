// Training experts on bf16 tensor cores (moe_train_experts.cu) against their CPU spec (cpu::moe_train_*,
// itself checked against a per-pair double reference in tests/unit/test_moe_train.cpp). Cases cover
// uneven loads (unused experts, one expert over several 128-row tiles), D and F that are not multiples of
// the 128 x 256 x 64 tiles (row, column and K tails in every product, including the weight-gradient
// products whose K is an expert's rows), more k-tiles than pipeline stages, and V3-like E = 64, K = 6.
// The backward runs twice: the same bits both times (no atomics). GPU host only.
//
// Tolerance 2e-4 relative L2, as for the inference grouped experts (test_cuda_moe_grouped_gemm.cpp):
// both sides round the same values to bf16 and sum in fp32 in different orders, so a rounded
// intermediate (h, dgu) sometimes lands one bf16 step away; a wrong row, expert or transpose is O(1).
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "backends/cuda/cuda_ops.h"
#include "cuda_test_util.h"

namespace dsv::ops {
namespace {

using namespace test;

class CudaMoeTrain : public CudaTest {};

struct Case {
  int64_t T, K, E, D, F;
  bool skewed;  // expert 0 takes the first slot of every token
};

std::vector<float> minus(std::vector<float> v, const std::vector<float>& base) {
  for (size_t i = 0; i < v.size(); ++i) v[i] -= base[i];
  return v;
}

TEST_F(CudaMoeTrain, MatchesCpu) {
  for (const Case& c : {Case{37, 2, 5, 72, 40, false}, Case{300, 6, 64, 256, 176, false},
                        Case{400, 2, 3, 64, 64, true}, Case{1000, 2, 4, 520, 200, false},
                        Case{700, 4, 16, 328, 456, true}}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " K" << c.K << " E" << c.E << " D" << c.D << " F" << c.F);
    const int64_t T = c.T, K = c.K, E = c.E, D = c.D, F = c.F, P = T * K;
    std::vector<std::vector<uint16_t>> mats;  // gate, up, down of each expert
    for (int64_t e = 0; e < E; ++e) {
      mats.push_back(to_bf16(randn(F * D, 100 + e, 0.0f, 0.05f)));
      mats.push_back(to_bf16(randn(F * D, 200 + e, 0.0f, 0.05f)));
      mats.push_back(to_bf16(randn(D * F, 300 + e, 0.0f, 0.05f)));
    }
    const auto x = randn(T * D, 7), w = randn(P, 8), dout = randn(T * D, 9);
    std::vector<int32_t> idx(P);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t first = c.skewed ? 0 : (t * 7 + (t % 5 == 0 ? 0 : 3)) % E;
        idx[t * K + k] = static_cast<int32_t>((first + k) % E);
      }
    const MoeTrainRows plan = plan_moe_train_rows(idx, E);
    const int64_t rows = plan.rows();

    // CPU spec.
    std::vector<const uint16_t*> host_tables(3 * E);
    std::vector<std::unique_ptr<Dev<uint16_t>>> keep;
    std::vector<const uint16_t*> dev_tables(3 * E);
    for (int64_t e = 0; e < E; ++e)
      for (int j = 0; j < 3; ++j) {
        host_tables[j * E + e] = mats[3 * e + j].data();
        keep.push_back(std::make_unique<Dev<uint16_t>>(mats[3 * e + j]));
        dev_tables[j * E + e] = keep.back()->ptr;
      }
    std::vector<uint16_t> xs(rows * D), h(rows * F);
    std::vector<float> gu(rows * 2 * F), y(rows * D), out(T * D);
    MoeTrainParams p{.x = x.data(), .weights = w.data(), .offsets = plan.offsets.data(),
                     .row_pair = plan.row_pair.data(), .slot_of_pair = plan.slot_of_pair.data(),
                     .gate = host_tables.data(), .up = host_tables.data() + E, .down = host_tables.data() + 2 * E,
                     .xs = xs.data(), .gu = gu.data(), .h = h.data(), .y = y.data(), .out = out.data(), .T = T,
                     .K = K, .D = D, .F = F, .E = E, .rows = rows};
    cpu::moe_train_forward(p);
    const auto dx0 = randn(T * D, 10), g0 = randn(3 * E * F * D, 11);  // gradients accumulate onto these
    std::vector<float> dx = dx0, dweights(P), grads = g0;
    std::vector<float*> grad_tables(3 * E);
    for (int64_t i = 0; i < 3 * E; ++i) grad_tables[i] = grads.data() + i * F * D;
    cpu::moe_train_backward({.fwd = p, .dout = dout.data(), .dx = dx.data(), .dweights = dweights.data(),
                             .dgate = grad_tables.data(), .dup = grad_tables.data() + E,
                             .ddown = grad_tables.data() + 2 * E});

    // CUDA.
    Dev<const uint16_t*> d_tables(dev_tables);
    Dev<int32_t> d_off(plan.offsets), d_rp(plan.row_pair), d_sp(plan.slot_of_pair);
    Dev<float> d_x(x), d_w(w), d_dout(dout), d_gu(nans(rows * 2 * F)), d_y(nans(rows * D)), d_out(nans(T * D));
    Dev<uint16_t> d_xs(std::vector<uint16_t>(rows * D, 0x7fc0)), d_h(std::vector<uint16_t>(rows * F, 0x7fc0));
    MoeTrainParams q = p;
    q.x = d_x.ptr, q.weights = d_w.ptr, q.offsets = d_off.ptr, q.row_pair = d_rp.ptr, q.slot_of_pair = d_sp.ptr;
    q.gate = d_tables.ptr, q.up = d_tables.ptr + E, q.down = d_tables.ptr + 2 * E;
    q.xs = d_xs.ptr, q.gu = d_gu.ptr, q.h = d_h.ptr, q.y = d_y.ptr, q.out = d_out.ptr;
    ASSERT_TRUE(cuda::moe_train_supported(q));
    CUDA_OK(cuda::moe_train_forward(q, 0));
    CUDA_OK(cudaDeviceSynchronize());
    const double e_out = rel_l2(d_out.download(), out), e_y = rel_l2(d_y.download(), y);
    const double e_gu = rel_l2(d_gu.download(), gu);
    EXPECT_LE(e_out, 2e-4);
    EXPECT_LE(e_y, 2e-4);
    EXPECT_LE(e_gu, 2e-4);
    EXPECT_EQ(d_xs.download(), xs);  // a gather and a rounding: exact
    {  // accumulate: the combine summed onto what out holds (the shared experts' output in training)
      const auto base = randn(T * D, 12);
      std::vector<float> want = base;
      MoeTrainParams pa = p;
      pa.out = want.data();
      pa.accumulate = true;
      cpu::moe_train_forward(pa);
      Dev<float> d_acc(base);
      MoeTrainParams qa = q;
      qa.out = d_acc.ptr;
      qa.accumulate = true;
      CUDA_OK(cuda::moe_train_forward(qa, 0));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_LE(rel_l2(d_acc.download(), want), 2e-4);
      EXPECT_GT(rel_l2(want, out), 0.1);  // the base is really there
    }

    // One backward from dx0 and the weight gradients `start`: dx, dweights and the weight gradients.
    struct Grads {
      std::vector<float> dx, dw, weights;
    };
    const auto backward = [&](const std::vector<float>& start, bool overwrite) {
      Dev<float> d_dx(dx0), d_dw(nans(P)), d_grads(start);
      std::vector<float*> dev_grads(3 * E);
      for (int64_t i = 0; i < 3 * E; ++i) dev_grads[i] = d_grads.ptr + i * F * D;
      Dev<float*> d_grad_tables(dev_grads);
      EXPECT_EQ(cuda::moe_train_backward({.fwd = q, .dout = d_dout.ptr, .dx = d_dx.ptr, .dweights = d_dw.ptr,
                                          .dgate = d_grad_tables.ptr, .dup = d_grad_tables.ptr + E,
                                          .ddown = d_grad_tables.ptr + 2 * E, .overwrite_dw = overwrite}, 0),
                cudaSuccess);
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      return Grads{d_dx.download(), d_dw.download(), d_grads.download()};
    };
    const Grads first = backward(g0, false), again = backward(g0, false);
    EXPECT_TRUE(same_bits(again.dx, first.dx));
    EXPECT_TRUE(same_bits(again.dw, first.dw));
    EXPECT_TRUE(same_bits(again.weights, first.weights));
    const std::vector<float>& first_dx = first.dx, &first_dw = first.dw, &first_grads = first.weights;
    const double e_dx = rel_l2(minus(first_dx, dx0), minus(dx, dx0)), e_dw = rel_l2(first_dw, dweights);
    const auto sub = [&](const std::vector<float>& v, int j) {
      return std::vector<float>(v.begin() + j * E * F * D, v.begin() + (j + 1) * E * F * D);
    };
    const double e_gate = rel_l2(sub(minus(first_grads, g0), 0), sub(minus(grads, g0), 0));
    const double e_up = rel_l2(sub(minus(first_grads, g0), 1), sub(minus(grads, g0), 1));
    const double e_down = rel_l2(sub(minus(first_grads, g0), 2), sub(minus(grads, g0), 2));
    std::printf("moe_train cuda T%ld K%ld E%ld D%ld F%ld: out %.1e y %.1e gu %.1e | dx %.1e dweights %.1e dgate %.1e "
                "dup %.1e ddown %.1e\n",
                static_cast<long>(T), static_cast<long>(K), static_cast<long>(E), static_cast<long>(D),
                static_cast<long>(F), e_out, e_y, e_gu, e_dx, e_dw, e_gate, e_up, e_down);
    EXPECT_LE(e_dx, 2e-4);
    EXPECT_LE(e_dw, 2e-4);
    EXPECT_LE(e_gate, 2e-4);
    EXPECT_LE(e_up, 2e-4);
    EXPECT_LE(e_down, 2e-4);

    // overwrite_dw: the old gradients (NaN here) are never read and every expert's are written, zeros
    // for an expert without rows (the skewed cases have some): equal to accumulating onto zeros.
    EXPECT_EQ(backward(nans(g0.size()), true).weights, backward(std::vector<float>(g0.size(), 0.0f), false).weights);
  }
}

}  // namespace
}  // namespace dsv::ops
