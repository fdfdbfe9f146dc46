// ops::moe_train_forward / _backward on the CPU (the spec of the grouped CUDA kernels) against a
// double-precision reference written per (token, slot) pair, without the padded expert-ordered rows,
// rounding the same values to bf16 (x, h, the scaled output gradient and the SwiGLU input gradients).
//
// Tolerance 1e-4 relative L2. The reference sums in double, the op in fp32, so a bf16-rounded
// intermediate (h, dgu) can land one bf16 step (2^-8 relative) away where the two sums straddle a
// rounding boundary; with a share q of such values the error is about 2^-8 sqrt(q). Measured: 6e-8 ..
// 9.2e-6 on these cases. A wrong row, expert, padding or transpose gives O(1).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "ops/ops.h"

namespace dsv {
namespace {

using ops::Context;

std::vector<float> randn(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = scale * dist(rng);
  return v;
}

double rel_l2(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / (den > 0.0 ? den : 1.0));
}

double bf(double v) { return round_to_bf16(static_cast<float>(v)); }

TEST(MoeTrainRows, PlanIsPaddedOrderedAndComplete) {
  const std::vector<int32_t> idx = {2, 0, 2, 1, 2, 0, 0, 2, 2, 2, 2, 2, 2, 2};  // expert 3 unused
  const ops::MoeTrainRows plan = ops::plan_moe_train_rows(idx, 4);
  ASSERT_EQ(plan.offsets.size(), 5u);
  EXPECT_EQ(plan.offsets, (std::vector<int32_t>{0, 8, 16, 32, 32}));  // 3, 1, 10, 0 pairs padded to 8s
  EXPECT_EQ(plan.rows(), 32);
  std::vector<int> seen(idx.size(), 0);
  for (int64_t e = 0; e < 4; ++e) {
    int32_t last = -1;
    for (int32_t r = plan.offsets[e]; r < plan.offsets[e + 1]; ++r) {
      const int32_t q = plan.row_pair[r];
      if (q < 0) continue;
      EXPECT_EQ(idx[q], e);
      EXPECT_GT(q, last) << "pairs ascend within an expert";
      last = q;
      EXPECT_EQ(plan.slot_of_pair[q], r);
      ++seen[q];
    }
  }
  for (int s : seen) EXPECT_EQ(s, 1);
  EXPECT_THROW(ops::plan_moe_train_rows({0, 4}, 4), std::exception);
}

struct Case {
  int64_t T, K, E, D, F;
};

TEST(MoeTrain, ForwardAndBackwardMatchPerPairDoubleReference) {
  for (const Case& c : {Case{37, 2, 5, 24, 16}, Case{50, 3, 8, 16, 40}, Case{9, 1, 3, 8, 8}}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " K" << c.K << " E" << c.E << " D" << c.D << " F" << c.F);
    const int64_t T = c.T, K = c.K, E = c.E, D = c.D, F = c.F, P = T * K;
    std::vector<std::vector<uint16_t>> mats(3 * E);  // gate, up, down of expert e at 3e, 3e+1, 3e+2
    for (int64_t e = 0; e < E; ++e)
      for (int j = 0; j < 3; ++j) {
        const std::vector<float> m = randn(F * D, 100 * e + j, 0.3f);
        for (float v : m) mats[3 * e + j].push_back(f32_to_bf16(v));
      }
    auto W = [&](int64_t e, int j, int64_t i) { return static_cast<double>(bf16_to_f32(mats[3 * e + j][i])); };
    const std::vector<float> x = randn(T * D, 1, 1.0f), w = randn(P, 2, 0.5f), dout = randn(T * D, 3, 1.0f);
    std::vector<int32_t> idx(P);
    for (int64_t t = 0; t < T; ++t)  // distinct experts per token; uneven loads, expert E-1 rarely used
      for (int64_t k = 0; k < K; ++k) idx[t * K + k] = static_cast<int32_t>((t * t % (E - 1 > 0 ? E - 1 : 1) + k) % E);

    // Reference, per pair q = t K + k with expert e = idx[q].
    std::vector<double> out(T * D, 0.0), dx(T * D, 0.0), dweights(P), dgate(E * F * D, 0.0), dup(E * F * D, 0.0),
        ddown(E * D * F, 0.0);
    for (int64_t q = 0; q < P; ++q) {
      const int64_t t = q / K, e = idx[q];
      std::vector<double> xs(D), g(F), u(F), h(F), y(D), dys(D), dg(F), du(F);
      for (int64_t d = 0; d < D; ++d) xs[d] = bf(x[t * D + d]);
      for (int64_t f = 0; f < F; ++f) {
        g[f] = u[f] = 0.0;
        for (int64_t d = 0; d < D; ++d) g[f] += xs[d] * W(e, 0, f * D + d), u[f] += xs[d] * W(e, 1, f * D + d);
        h[f] = bf(g[f] / (1.0 + std::exp(-g[f])) * u[f]);
      }
      for (int64_t d = 0; d < D; ++d) {
        y[d] = 0.0;
        for (int64_t f = 0; f < F; ++f) y[d] += h[f] * W(e, 2, d * F + f);
        out[t * D + d] += w[q] * y[d];
      }
      dweights[q] = 0.0;
      for (int64_t d = 0; d < D; ++d) dweights[q] += dout[t * D + d] * y[d];
      for (int64_t d = 0; d < D; ++d) dys[d] = bf(static_cast<double>(w[q]) * dout[t * D + d]);
      for (int64_t f = 0; f < F; ++f) {
        double dh = 0.0;
        for (int64_t d = 0; d < D; ++d) dh += dys[d] * W(e, 2, d * F + f);
        const double sig = 1.0 / (1.0 + std::exp(-g[f]));
        dg[f] = bf(dh * u[f] * sig * (1.0 + g[f] * (1.0 - sig)));
        du[f] = bf(dh * g[f] * sig);
      }
      for (int64_t d = 0; d < D; ++d)
        for (int64_t f = 0; f < F; ++f) {
          dx[t * D + d] += dg[f] * W(e, 0, f * D + d) + du[f] * W(e, 1, f * D + d);
          dgate[(e * F + f) * D + d] += dg[f] * xs[d];
          dup[(e * F + f) * D + d] += du[f] * xs[d];
          ddown[(e * D + d) * F + f] += dys[d] * h[f];
        }
    }

    const ops::MoeTrainRows plan = ops::plan_moe_train_rows(idx, E);
    const int64_t rows = plan.rows();
    std::vector<const uint16_t*> tables(3 * E);
    for (int64_t e = 0; e < E; ++e)
      for (int j = 0; j < 3; ++j) tables[j * E + e] = mats[3 * e + j].data();
    std::vector<uint16_t> xs(rows * D), h(rows * F);
    std::vector<float> gu(rows * 2 * F), y(rows * D), got_out(T * D, NAN);
    const ops::MoeTrainParams p{.x = x.data(), .weights = w.data(), .offsets = plan.offsets.data(),
                                .row_pair = plan.row_pair.data(), .slot_of_pair = plan.slot_of_pair.data(),
                                .gate = tables.data(), .up = tables.data() + E, .down = tables.data() + 2 * E,
                                .xs = xs.data(), .gu = gu.data(), .h = h.data(), .y = y.data(),
                                .out = got_out.data(), .T = T, .K = K, .D = D, .F = F, .E = E, .rows = rows};
    const Context cpu;
    ops::moe_train_forward(cpu, p);
    EXPECT_LE(rel_l2(got_out, out), 1e-4);
    {  // accumulate: summed onto what out holds
      std::vector<float> onto(T * D, 0.5f);
      ops::MoeTrainParams pa = p;
      pa.out = onto.data();
      pa.accumulate = true;
      ops::moe_train_forward(cpu, pa);
      for (float& v : onto) v -= 0.5f;
      EXPECT_LE(rel_l2(onto, out), 1e-4);
    }

    // Gradients accumulate into what is there: start from a known offset and subtract it.
    std::vector<float> got_dx(T * D, 1.0f), got_dw(P, NAN), gg(E * F * D, 2.0f), gu_w(E * F * D, 3.0f),
        gd(E * D * F, 4.0f);
    std::vector<float*> grads(3 * E);
    for (int64_t e = 0; e < E; ++e) {
      grads[e] = gg.data() + e * F * D;
      grads[E + e] = gu_w.data() + e * F * D;
      grads[2 * E + e] = gd.data() + e * D * F;
    }
    ops::moe_train_backward(cpu, {.fwd = p, .dout = dout.data(), .dx = got_dx.data(), .dweights = got_dw.data(),
                                  .dgate = grads.data(), .dup = grads.data() + E, .ddown = grads.data() + 2 * E});
    auto minus = [](std::vector<float> v, float c) {
      for (float& x : v) x -= c;
      return v;
    };
    const double e_dx = rel_l2(minus(got_dx, 1.0f), dx), e_dw = rel_l2(got_dw, dweights);
    const double e_gate = rel_l2(minus(gg, 2.0f), dgate), e_up = rel_l2(minus(gu_w, 3.0f), dup);
    const double e_down = rel_l2(minus(gd, 4.0f), ddown);
    std::printf("moe_train cpu T%ld: dx %.1e dweights %.1e dgate %.1e dup %.1e ddown %.1e\n", static_cast<long>(T), e_dx,
                e_dw, e_gate, e_up, e_down);
    EXPECT_LE(e_dx, 1e-4);
    EXPECT_LE(e_dw, 1e-4);
    EXPECT_LE(e_gate, 1e-4);
    EXPECT_LE(e_up, 1e-4);
    EXPECT_LE(e_down, 1e-4);

    // overwrite_dw: the weight gradients are written, the old values (NaN here) never read.
    std::vector<float> ow_gate(E * F * D, NAN), ow_up(E * F * D, NAN), ow_down(E * D * F, NAN);
    for (int64_t e = 0; e < E; ++e) {
      grads[e] = ow_gate.data() + e * F * D;
      grads[E + e] = ow_up.data() + e * F * D;
      grads[2 * E + e] = ow_down.data() + e * D * F;
    }
    ops::moe_train_backward(cpu, {.fwd = p, .dout = dout.data(), .dx = got_dx.data(), .dweights = got_dw.data(),
                                  .dgate = grads.data(), .dup = grads.data() + E, .ddown = grads.data() + 2 * E,
                                  .overwrite_dw = true});
    EXPECT_LE(rel_l2(ow_gate, dgate), 1e-4);
    EXPECT_LE(rel_l2(ow_up, dup), 1e-4);
    EXPECT_LE(rel_l2(ow_down, ddown), 1e-4);
  }
}

TEST(MoeTrain, RejectsRowsThatDoNotCoverThePairs) {
  std::vector<float> f(64, 0.0f);
  std::vector<int32_t> i(64, 0);
  std::vector<uint16_t> b(64, 0);
  const uint16_t* t[1] = {b.data()};
  ops::MoeTrainParams p{.x = f.data(), .weights = f.data(), .offsets = i.data(), .row_pair = i.data(),
                        .slot_of_pair = i.data(), .gate = t, .up = t, .down = t, .xs = b.data(), .gu = f.data(),
                        .h = b.data(), .y = f.data(), .out = f.data(), .T = 4, .K = 1, .D = 8, .F = 8, .E = 1,
                        .rows = 3};
  EXPECT_THROW(ops::moe_train_forward(Context{}, p), std::exception);
  p.rows = 8;
  p.gate = nullptr;
  EXPECT_THROW(ops::moe_train_forward(Context{}, p), std::exception);
}

}  // namespace
}  // namespace dsv
