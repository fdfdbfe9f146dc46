// CUDA training ops (backward passes, loss, optimizer) against their CPU twins on random inputs,
// including awkward sizes, strides, aliasing and accumulation. Runs on the GPU host only (ctest
// label "gpu"); CI builds it.
#include <gtest/gtest.h>

#include <algorithm>
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

class CudaTrainOps : public CudaTest {};

TEST_F(CudaTrainOps, RegisteredInBackendTable) {
  cuda::register_cuda_backend();
  const BackendTable& t = backend_table(Backend::Cuda);
  EXPECT_NE(t.linear_weight_grad, nullptr);
  EXPECT_NE(t.rmsnorm_backward, nullptr);
  EXPECT_NE(t.attention_backward, nullptr);
  EXPECT_NE(t.swiglu_backward, nullptr);
  EXPECT_NE(t.embed_backward, nullptr);
  EXPECT_NE(t.route_backward, nullptr);
  EXPECT_NE(t.row_dots, nullptr);
  EXPECT_NE(t.cross_entropy, nullptr);
  EXPECT_NE(t.axpby, nullptr);
  EXPECT_NE(t.sum_squares, nullptr);
  EXPECT_NE(t.adamw, nullptr);
  // One op end to end through the dispatcher (validation + table entry).
  const auto x = randn(1000, 1);
  Dev<float> dx(x), dout(nans(1));
  sum_squares(Context{Backend::Cuda}, {.x = dx.ptr, .out = dout.ptr, .n = 1000});
  double want = 0;
  for (float v : x) want += static_cast<double>(v) * v;
  EXPECT_NEAR(dout.download()[0], want, 1e-5 * want);
}

TEST_F(CudaTrainOps, LinearWeightGradMatchesCpu) {
  struct Case { int64_t M, N, K; bool bias, accumulate; int64_t dy_pad, x_pad; };
  for (const Case& c : {Case{1, 1, 1, true, false, 0, 0}, Case{7, 33, 129, true, false, 0, 0},
                        Case{300, 64, 96, true, true, 3, 5}, Case{0, 5, 3, true, false, 0, 0},
                        Case{0, 4, 6, true, true, 0, 0}, Case{4096, 17, 40, true, false, 0, 0},
                        Case{513, 2050, 7, true, true, 1, 0}, Case{2048, 576, 256, false, false, 0, 0},
                        Case{70000, 3, 2, true, false, 0, 1} /* many row chunks in the bias sum */}) {
    SCOPED_TRACE(testing::Message() << "M" << c.M << " N" << c.N << " K" << c.K << " bias" << c.bias << " acc"
                                    << c.accumulate);
    const int64_t dys = c.N + c.dy_pad, xs = c.K + c.x_pad;
    const auto dy = randn(c.M * dys, 10 + c.M), x = randn(c.M * xs, 20 + c.K);
    auto want_w = randn(c.N * c.K, 30), want_b = randn(c.N, 31);  // accumulate adds onto these
    Dev<float> ddy(dy), dx(x), dw(c.accumulate ? want_w : nans(want_w.size())),
        db(c.accumulate ? want_b : nans(want_b.size()));
    LinearWeightGradParams p{.dy = dy.data(), .x = x.data(), .dw = want_w.data(),
                             .dbias = c.bias ? want_b.data() : nullptr, .M = c.M, .N = c.N, .K = c.K,
                             .dy_stride = dys, .x_stride = xs, .accumulate = c.accumulate};
    cpu::linear_weight_grad(p);
    p.dy = ddy.ptr;
    p.x = dx.ptr;
    p.dw = dw.ptr;
    p.dbias = c.bias ? db.ptr : nullptr;
    CUDA_OK(cuda::linear_weight_grad(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    // The CPU's portable loop sums M products in fp32 in order: error grows like sqrt(M) ulps.
    const double tol = std::max(1e-5, 3 * 6e-8 * std::sqrt(static_cast<double>(c.M)));
    EXPECT_LE(rel_l2(dw.download(), want_w), tol) << "dw";
    if (c.bias) EXPECT_LE(rel_l2(db.download(), want_b), 1e-5) << "dbias";
  }
}

// linear_backward rounds dy to bf16 once for both products: the same bits as the two separate calls,
// in fp32 and in bf16 products, with strides, accumulation and dx over x.
TEST_F(CudaTrainOps, LinearBackwardEqualsTheTwoCalls) {
  for (const MatmulPrecision mp : {MatmulPrecision::Fp32, MatmulPrecision::Bf16}) {
    set_matmul_precision(mp);
    for (const bool alias : {false, true}) {
      SCOPED_TRACE(testing::Message() << "bf16 " << (mp == MatmulPrecision::Bf16) << " alias " << alias);
      const int64_t M = 300, N = 96, K = 64, dys = 100, xs = 72;
      const auto dy = randn(M * dys, 41), x = randn(M * xs, 42), w = randn(N * K, 43), dw0 = randn(N * K, 44),
                 db0 = randn(N, 45), dx0 = randn(M * xs, 46);
      Dev<float> ddy(dy), dw_(w), x1(x), x2(x), dw1(dw0), dw2(dw0), db1(db0), db2(db0), dx1(dx0), dx2(dx0);
      float* out1 = alias ? x1.ptr : dx1.ptr;
      float* out2 = alias ? x2.ptr : dx2.ptr;
      CUDA_OK(cuda::linear_weight_grad({.dy = ddy.ptr, .x = x1.ptr, .dw = dw1.ptr, .dbias = db1.ptr, .M = M, .N = N,
                                        .K = K, .dy_stride = dys, .x_stride = xs, .accumulate = true}, 0));
      CUDA_OK(cuda::linear({.x = ddy.ptr, .w = dw_.ptr, .y = out1, .M = M, .N = K, .K = N, .x_stride = dys,
                            .y_stride = xs, .accumulate = !alias, .w_transposed = true}, 0));
      CUDA_OK(cuda::linear_backward({.dy = ddy.ptr, .x = x2.ptr, .w = dw_.ptr, .dx = out2, .dw = dw2.ptr,
                                     .dbias = db2.ptr, .M = M, .N = N, .K = K, .dy_stride = dys, .x_stride = xs,
                                     .dx_stride = xs, .accumulate_dx = !alias, .accumulate_dw = true}, 0));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_EQ(dw1.download(), dw2.download());
      EXPECT_EQ(db1.download(), db2.download());
      EXPECT_EQ(alias ? x1.download() : dx1.download(), alias ? x2.download() : dx2.download());
    }
  }
  set_matmul_precision(MatmulPrecision::Fp32);
}

TEST_F(CudaTrainOps, RmsNormBackwardMatchesCpu) {
  struct Case { int64_t rows, dim, pad; bool accumulate_dx, dweight, alias; };
  // (dim 1 is left out: dx is then a total cancellation, 1 - x^2 / (x^2 + eps), in any precision.)
  for (const Case& c : {Case{2, 3, 0, false, true, false}, Case{3, 7, 0, false, true, false},
                        Case{17, 512, 0, true, true, false}, Case{600, 2048, 0, false, true, true},
                        Case{1000, 129, 3, true, true, true}, Case{5, 7168, 0, false, false, false},
                        Case{2500, 33, 0, false, true, false} /* several row chunks for dweight */}) {
    SCOPED_TRACE(testing::Message() << c.rows << "x" << c.dim << " pad" << c.pad << " acc" << c.accumulate_dx
                                    << " alias" << c.alias);
    const int64_t s = c.dim + c.pad;
    const auto x = randn(c.rows * s, c.rows + 7), w = randn(c.dim, c.dim, 1.0f, 0.5f), dy = randn(c.rows * s, 8);
    // With dx aliasing dy, the accumulate case adds onto dy itself.
    auto want_dx = c.alias ? dy : randn(c.rows * s, 9);
    auto want_dw = randn(c.dim, 10);  // dweight always accumulates
    std::vector<float> cpu_dy = dy;
    RmsNormBackwardParams p{.x = x.data(), .weight = w.data(), .dy = c.alias ? want_dx.data() : cpu_dy.data(),
                            .dx = want_dx.data(), .dweight = c.dweight ? want_dw.data() : nullptr, .rows = c.rows,
                            .dim = c.dim, .x_stride = s, .dy_stride = s, .dx_stride = s, .eps = 1e-6f,
                            .accumulate_dx = c.accumulate_dx};
    cpu::rmsnorm_backward(p);
    Dev<float> dx_(x), dw_(w), ddy(dy), ddx(c.alias ? dy : (c.accumulate_dx ? randn(c.rows * s, 9) : nans(want_dx.size()))),
        ddw(randn(c.dim, 10));
    p.x = dx_.ptr;
    p.weight = dw_.ptr;
    p.dy = c.alias ? ddx.ptr : ddy.ptr;
    p.dx = ddx.ptr;
    p.dweight = c.dweight ? ddw.ptr : nullptr;
    CUDA_OK(cuda::rmsnorm_backward(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    auto got_dx = ddx.download();
    if (c.pad) {  // padding columns are never written: compare only the rows' first dim values
      for (int64_t r = 0; r < c.rows; ++r)
        for (int64_t i = c.dim; i < s; ++i) got_dx[r * s + i] = want_dx[r * s + i];
    }
    EXPECT_LE(rel_l2(got_dx, want_dx), 1e-5) << "dx";
    if (c.dweight) EXPECT_LE(rel_l2(ddw.download(), want_dw), 1e-5) << "dweight";
  }
}

TEST_F(CudaTrainOps, RmsNormBackwardIsDeterministic) {
  const int64_t rows = 3000, dim = 1024;
  const auto x = randn(rows * dim, 1), w = randn(dim, 2), dy = randn(rows * dim, 3);
  Dev<float> dx_(x), dw_(w), ddy(dy), ddx(nans(rows * dim));
  std::vector<float> first;
  for (int rep = 0; rep < 2; ++rep) {
    Dev<float> ddw(std::vector<float>(dim, 0.0f));
    CUDA_OK(cuda::rmsnorm_backward({.x = dx_.ptr, .weight = dw_.ptr, .dy = ddy.ptr, .dx = ddx.ptr, .dweight = ddw.ptr,
                                    .rows = rows, .dim = dim},
                                   0));
    CUDA_OK(cudaDeviceSynchronize());
    if (rep == 0) first = ddw.download();
    else EXPECT_TRUE(same_bits(first, ddw.download()));
  }
}

struct AttnCase { int64_t T, S, H, Dqk, Dv; };

void attention_backward_case(const AttnCase& c, double tol_qk, double tol_v) {
  SCOPED_TRACE(testing::Message() << "T" << c.T << " S" << c.S << " H" << c.H << " Dqk" << c.Dqk << " Dv" << c.Dv);
  const auto q = randn(c.T * c.H * c.Dqk, 41), k = randn(c.S * c.H * c.Dqk, 42), v = randn(c.S * c.H * c.Dv, 43),
             dout = randn(c.T * c.H * c.Dv, 44);
  std::vector<float> want_dq(q.size()), want_dk(k.size()), want_dv(v.size());
  AttentionBackwardParams p{.q = q.data(), .k = k.data(), .v = v.data(), .dout = dout.data(), .dq = want_dq.data(),
                            .dk = want_dk.data(), .dv = want_dv.data(), .T = c.T, .S = c.S, .H = c.H, .Dqk = c.Dqk,
                            .Dv = c.Dv, .scale = 1.0f / std::sqrt(static_cast<float>(c.Dqk))};
  cpu::attention_backward(p);
  Dev<float> dq_(q), dk_(k), dv_(v), ddout(dout), ddq(nans(q.size())), ddk(nans(k.size())), ddv(nans(v.size()));
  p.q = dq_.ptr;
  p.k = dk_.ptr;
  p.v = dv_.ptr;
  p.dout = ddout.ptr;
  p.dq = ddq.ptr;
  p.dk = ddk.ptr;
  p.dv = ddv.ptr;
  CUDA_OK(cuda::attention_backward(p, 0));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_LE(rel_l2(ddq.download(), want_dq), tol_qk) << "dq";
  EXPECT_LE(rel_l2(ddk.download(), want_dk), tol_qk) << "dk";
  EXPECT_LE(rel_l2(ddv.download(), want_dv), tol_v) << "dv";
}

TEST_F(CudaTrainOps, AttentionBackwardMatchesCpu) {
  // dq and dk go through dS = P (dP - D), a difference of fp32 sums: a looser bound than dv.
  for (const AttnCase& c : {AttnCase{9, 9, 4, 192, 128}, AttnCase{1, 1, 1, 1, 1}, AttnCase{17, 40, 2, 24, 16},
                            AttnCase{3, 130, 5, 37, 19}, AttnCase{200, 300, 3, 64, 48} /* several tiles */,
                            AttnCase{0, 5, 2, 8, 8} /* no queries: zero dk, dv */,
                            AttnCase{257, 257, 16, 192, 128} /* training shape, tile edges */,
                            AttnCase{5, 5, 2, 600, 700} /* head dims wider than the block */})
    attention_backward_case(c, 1e-4, 2e-5);
}

TEST_F(CudaTrainOps, AttentionBackwardIsDeterministic) {
  const int64_t T = 300, S = 300, H = 2, Dqk = 64, Dv = 32;
  const auto q = randn(T * H * Dqk, 1), k = randn(S * H * Dqk, 2), v = randn(S * H * Dv, 3), dout = randn(T * H * Dv, 4);
  Dev<float> dq_(q), dk_(k), dv_(v), ddout(dout), ddq(nans(q.size())), ddk(nans(k.size())), ddv(nans(v.size()));
  const AttentionBackwardParams p{.q = dq_.ptr, .k = dk_.ptr, .v = dv_.ptr, .dout = ddout.ptr, .dq = ddq.ptr,
                                  .dk = ddk.ptr, .dv = ddv.ptr, .T = T, .S = S, .H = H, .Dqk = Dqk, .Dv = Dv,
                                  .scale = 0.125f};
  CUDA_OK(cuda::attention_backward(p, 0));
  CUDA_OK(cudaDeviceSynchronize());
  const auto a = ddq.download(), b = ddk.download(), c = ddv.download();
  CUDA_OK(cuda::attention_backward(p, 0));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_TRUE(same_bits(a, ddq.download()));
  EXPECT_TRUE(same_bits(b, ddk.download()));
  EXPECT_TRUE(same_bits(c, ddv.download()));
}

TEST_F(CudaTrainOps, SwigluBackwardMatchesCpu) {
  for (int64_t n : {1, 31, 4096, 1000003}) {
    for (bool alias : {false, true}) {
      SCOPED_TRACE(testing::Message() << n << (alias ? " aliased" : ""));
      const auto g = randn(n, n, 0.0f, 3.0f), u = randn(n, n + 1), d = randn(n, n + 2);
      std::vector<float> want_g = g, want_u = u;
      std::vector<float> out_g(n), out_u(n);
      SwigluBackwardParams p{.gate = want_g.data(), .up = want_u.data(), .dout = d.data(),
                             .dgate = alias ? want_g.data() : out_g.data(), .dup = alias ? want_u.data() : out_u.data(),
                             .n = n};
      cpu::swiglu_backward(p);
      if (!alias) {
        want_g = out_g;
        want_u = out_u;
      }
      Dev<float> dg(g), du(u), dd(d), dgo(nans(n)), duo(nans(n));
      p.gate = dg.ptr;
      p.up = du.ptr;
      p.dout = dd.ptr;
      p.dgate = alias ? dg.ptr : dgo.ptr;
      p.dup = alias ? du.ptr : duo.ptr;
      CUDA_OK(cuda::swiglu_backward(p, 0));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_LE(rel_l2((alias ? dg : dgo).download(), want_g), 2e-6) << "dgate";  // expf: ~2 ulp
      EXPECT_LE(rel_l2((alias ? du : duo).download(), want_u), 2e-6) << "dup";
    }
  }
}

TEST_F(CudaTrainOps, EmbedBackwardMatchesCpu) {
  struct Case { int64_t T, V, D; };
  for (const Case& c : {Case{1, 1, 1}, Case{1000, 50, 67} /* many repeats */, Case{4097, 102400, 16},
                        Case{64, 3, 2048}}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " V" << c.V << " D" << c.D);
    std::vector<int32_t> ids(c.T);
    std::mt19937 rng(static_cast<unsigned>(c.T + c.V));
    for (auto& id : ids) id = static_cast<int32_t>(rng() % c.V);
    const auto dout = randn(c.T * c.D, 51);
    const auto initial = randn(c.V * c.D, 52);
    auto want = initial;  // accumulates
    Dev<int32_t> dids(ids);
    Dev<float> ddout(dout), dtable(want);
    EmbedBackwardParams p{.ids = ids.data(), .dout = dout.data(), .dtable = want.data(), .T = c.T, .D = c.D};
    cpu::embed_backward(p);
    p.ids = dids.ptr;
    p.dout = ddout.ptr;
    p.dtable = dtable.ptr;
    CUDA_OK(cuda::embed_backward(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> scanned = dtable.download();
    EXPECT_LE(rel_l2(scanned, want), 1e-6);
    // With the tokens grouped by id: the same additions in the same order, so the same bits.
    const EmbedGroups groups = embed_backward_groups(ids.data(), c.T);
    Dev<int32_t> dtokens(groups.tokens), dstart(groups.start);
    Dev<float> dgrouped(initial);
    p.dtable = dgrouped.ptr;
    p.grouped_tokens = dtokens.ptr;
    p.group_start = dstart.ptr;
    p.groups = groups.groups();
    CUDA_OK(cuda::embed_backward(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(dgrouped.download(), scanned);
  }
}

TEST_F(CudaTrainOps, RouteBackwardMatchesCpu) {
  struct Case { RouterKind kind; int64_t T, E, K, G, topk_group; bool norm, accumulate; };
  for (const Case& c : {Case{RouterKind::SigmoidNoauxGroups, 37, 256, 8, 8, 4, true, false},
                        Case{RouterKind::SigmoidNoauxGroups, 37, 256, 8, 8, 4, true, true},
                        Case{RouterKind::SigmoidNoauxGroups, 5, 64, 6, 1, 1, false, false},
                        Case{RouterKind::SoftmaxGreedy, 19, 64, 6, 1, 1, false, false},
                        Case{RouterKind::SoftmaxGreedy, 300, 1500, 6, 1, 1, false, true} /* E > threads */,
                        Case{RouterKind::SoftmaxGroupLimited, 23, 160, 6, 8, 3, false, true},
                        Case{RouterKind::SoftmaxGroupLimited, 4, 6, 5, 3, 2, false, false}}) {
    SCOPED_TRACE(testing::Message() << "kind" << static_cast<int>(c.kind) << " E" << c.E << " K" << c.K << " norm"
                                    << c.norm << " acc" << c.accumulate);
    const auto logits = randn(c.T * c.E, c.E + c.K), bias = randn(c.E, 5), dweights = randn(c.T * c.K, 6);
    // Indices as route() picks them.
    std::vector<int32_t> idx(c.T * c.K);
    std::vector<float> w(c.T * c.K);
    cpu::route({.logits = logits.data(), .correction_bias = bias.data(), .indices = idx.data(), .weights = w.data(),
                .T = c.T, .E = c.E, .K = c.K, .n_group = c.G, .topk_group = c.topk_group, .kind = c.kind,
                .norm_topk_prob = c.norm, .routed_scaling_factor = 2.5f});
    auto want = randn(c.T * c.E, 7);
    RouteBackwardParams p{.logits = logits.data(), .indices = idx.data(), .dweights = dweights.data(),
                          .dlogits = want.data(), .T = c.T, .E = c.E, .K = c.K, .kind = c.kind,
                          .norm_topk_prob = c.norm, .routed_scaling_factor = 2.5f, .accumulate = c.accumulate};
    cpu::route_backward(p);
    Dev<float> dl(logits), ddw(dweights), dout(c.accumulate ? randn(c.T * c.E, 7) : nans(c.T * c.E));
    Dev<int32_t> didx(idx);
    p.logits = dl.ptr;
    p.indices = didx.ptr;
    p.dweights = ddw.ptr;
    p.dlogits = dout.ptr;
    CUDA_OK(cuda::route_backward(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dout.download(), want), 1e-5);
  }
}

TEST_F(CudaTrainOps, RouteBackwardRepeatedIndicesAddUp) {
  for (RouterKind kind : {RouterKind::SigmoidNoauxGroups, RouterKind::SoftmaxGreedy}) {
    const int64_t T = 3, E = 10, K = 4;
    const auto logits = randn(T * E, 1), dweights = randn(T * K, 2);
    const std::vector<int32_t> idx = {1, 1, 5, 9, 0, 0, 0, 0, 9, 8, 9, 2};
    std::vector<float> want(T * E);
    RouteBackwardParams p{.logits = logits.data(), .indices = idx.data(), .dweights = dweights.data(),
                          .dlogits = want.data(), .T = T, .E = E, .K = K, .kind = kind, .norm_topk_prob = true,
                          .routed_scaling_factor = 1.5f};
    cpu::route_backward(p);
    Dev<float> dl(logits), ddw(dweights), dout(nans(T * E));
    Dev<int32_t> didx(idx);
    p.logits = dl.ptr;
    p.indices = didx.ptr;
    p.dweights = ddw.ptr;
    p.dlogits = dout.ptr;
    CUDA_OK(cuda::route_backward(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dout.download(), want), 1e-5) << static_cast<int>(kind);
  }
}

TEST_F(CudaTrainOps, RowDotsMatchCpu) {
  struct Case { int64_t n, A, D; };
  for (const Case& c : {Case{1, 1, 1}, Case{37, 50, 100}, Case{5000, 900, 33}, Case{64, 64, 7168}}) {
    SCOPED_TRACE(testing::Message() << "n" << c.n << " D" << c.D);
    const auto a = randn(c.A * c.D, 61), b = randn(c.n * c.D, 62);
    std::vector<int32_t> rows(c.n);
    for (int64_t r = 0; r < c.n; ++r) rows[r] = static_cast<int32_t>((r * 17 + 3) % c.A);
    std::vector<float> want(c.n);
    RowDotsParams p{.rows = rows.data(), .a = a.data(), .b = b.data(), .out = want.data(), .n = c.n, .D = c.D};
    cpu::row_dots(p);
    Dev<int32_t> drows(rows);
    Dev<float> da(a), db(b), dout(nans(c.n));
    p.rows = drows.ptr;
    p.a = da.ptr;
    p.b = db.ptr;
    p.out = dout.ptr;
    CUDA_OK(cuda::row_dots(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dout.download(), want), 1e-5);  // fp32 lanes vs the CPU's double sum
  }
}

TEST_F(CudaTrainOps, CrossEntropyMatchesCpu) {
  struct Case { int64_t T, V; };
  for (const Case& c : {Case{1, 1}, Case{5, 10}, Case{7, 1537}, Case{8, 102400}, Case{300, 129}}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " V" << c.V);
    auto logits = randn(c.T * c.V, c.V, 0.0f, 4.0f);
    std::vector<int32_t> targets(c.T);
    std::mt19937 rng(static_cast<unsigned>(c.T * 7 + c.V));
    for (int64_t t = 0; t < c.T; ++t) targets[t] = t % 3 == 1 ? -1 : static_cast<int32_t>(rng() % c.V);  // some ignored
    Dev<float> dlogits(logits), dloss(nans(c.T));
    Dev<int32_t> dtargets(targets);
    std::vector<float> want_loss(c.T);
    const float grad_scale = 1.0f / static_cast<float>(c.T);
    CrossEntropyParams p{.logits = logits.data(), .targets = targets.data(), .loss = want_loss.data(), .T = c.T,
                         .V = c.V, .grad_scale = grad_scale};
    cpu::cross_entropy(p);
    p.logits = dlogits.ptr;
    p.targets = dtargets.ptr;
    p.loss = dloss.ptr;
    CUDA_OK(cuda::cross_entropy(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dlogits.download(), logits), 1e-5) << "gradient";
    EXPECT_LE(rel_l2(dloss.download(), want_loss), 1e-5) << "loss";
    // The bf16 gradient: the device's fp32 gradient rounded (bit for bit), logits untouched, same loss.
    const std::vector<float> device_grad = dlogits.download(), device_loss = dloss.download();
    Dev<float> fresh(randn(c.T * c.V, c.V, 0.0f, 4.0f));  // the same logits as above (same seed)
    Dev<uint16_t> dgrad16(std::vector<uint16_t>(c.T * c.V, 0xffff));
    const std::vector<float> before = fresh.download();
    p.logits = fresh.ptr;
    p.dlogits_bf16 = dgrad16.ptr;
    CUDA_OK(cuda::cross_entropy(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(fresh.download(), before) << "logits must stay";
    EXPECT_EQ(dloss.download(), device_loss);
    EXPECT_EQ(dgrad16.download(), to_bf16(device_grad));
  }
}

// dy_bf16 (cross_entropy's bf16 gradient) against dy = the same values widened, bit for bit: used
// directly in bf16 mode, widened on the other paths (fp32 mode, a bias gradient, few rows).
TEST_F(CudaTrainOps, LinearBackwardFromABf16Gradient) {
  for (const MatmulPrecision mp : {MatmulPrecision::Fp32, MatmulPrecision::Bf16}) {
    set_matmul_precision(mp);
    for (const auto [M, bias] : {std::pair<int64_t, bool>{300, false}, {300, true}, {5, false}}) {
      SCOPED_TRACE(testing::Message() << "bf16 " << (mp == MatmulPrecision::Bf16) << " M " << M << " bias " << bias);
      const int64_t N = 96, K = 64, dys = 104;
      const auto x = randn(M * K, 52), w = randn(N * K, 53), dw0 = randn(N * K, 54);
      const std::vector<uint16_t> dy16 = to_bf16(randn(M * dys, 51));
      std::vector<float> widened(dy16.size());
      for (size_t i = 0; i < dy16.size(); ++i) widened[i] = bf16_to_f32(dy16[i]);
      Dev<float> ddy(widened), dx_(x), dw_(w), dw1(dw0), dw2(dw0), db1(std::vector<float>(N, 0.0f)),
          db2(std::vector<float>(N, 0.0f)), dx1(nans(M * K)), dx2(nans(M * K));
      Dev<uint16_t> ddy16(dy16);
      CUDA_OK(cuda::linear_backward({.dy = ddy.ptr, .x = dx_.ptr, .w = dw_.ptr, .dx = dx1.ptr, .dw = dw1.ptr,
                                     .dbias = bias ? db1.ptr : nullptr, .M = M, .N = N, .K = K, .dy_stride = dys,
                                     .accumulate_dw = true}, 0));
      CUDA_OK(cuda::linear_backward({.x = dx_.ptr, .w = dw_.ptr, .dx = dx2.ptr, .dw = dw2.ptr,
                                     .dbias = bias ? db2.ptr : nullptr, .M = M, .N = N, .K = K, .dy_stride = dys,
                                     .accumulate_dw = true, .dy_bf16 = ddy16.ptr}, 0));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_EQ(dx1.download(), dx2.download());
      EXPECT_EQ(dw1.download(), dw2.download());
      EXPECT_EQ(db1.download(), db2.download());
    }
  }
  set_matmul_precision(MatmulPrecision::Fp32);
}

TEST_F(CudaTrainOps, AxpbyMatchesCpu) {
  for (int64_t n : {1, 1000, 1000003}) {
    for (float beta : {0.0f, 0.5f, 1.0f}) {
      SCOPED_TRACE(testing::Message() << n << " beta " << beta);
      const auto x = randn(n, 71);
      auto want = beta == 0.0f ? nans(n) : randn(n, 72);  // beta = 0 must not read y
      Dev<float> dx(x), dy(want);
      AxpbyParams p{.x = x.data(), .y = want.data(), .n = n, .alpha = -0.75f, .beta = beta};
      cpu::axpby(p);
      p.x = dx.ptr;
      p.y = dy.ptr;
      CUDA_OK(cuda::axpby(p, 0));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_LE(rel_l2(dy.download(), want), 1e-6);  // fused multiply-add: 1 ulp
    }
  }
}

TEST_F(CudaTrainOps, SumSquaresMatchesCpu) {
  for (int64_t n : {0, 1, 1000, 262145, 10000019}) {
    for (bool accumulate : {false, true}) {
      SCOPED_TRACE(testing::Message() << n << (accumulate ? " accumulate" : ""));
      const auto x = randn(n, 81, 0.1f);
      std::vector<float> want = {accumulate ? 12.5f : NAN};  // NaN: must be overwritten
      Dev<float> dx(x), dout(want);
      SumSquaresParams p{.x = x.data(), .out = want.data(), .n = n, .accumulate = accumulate};
      cpu::sum_squares(p);
      p.x = dx.ptr;
      p.out = dout.ptr;
      CUDA_OK(cuda::sum_squares(p, 0));
      CUDA_OK(cudaDeviceSynchronize());
      const float got = dout.download()[0];
      EXPECT_NEAR(got, want[0], 1e-6 * std::max(1.0f, std::fabs(want[0])));
      CUDA_OK(cuda::sum_squares(p, 0));  // deterministic: the same bits again (from the same start)
      CUDA_OK(cudaDeviceSynchronize());
      if (!accumulate) EXPECT_EQ(dout.download()[0], got);
    }
  }
}

TEST_F(CudaTrainOps, AdamWMatchesCpu) {
  struct Case { int64_t n, step; float lr, wd, grad_scale; };
  for (const Case& c : {Case{1, 1, 1e-3f, 0.0f, 1.0f}, Case{1000003, 1, 3e-4f, 0.1f, 0.5f},
                        Case{4099, 10, 1e-2f, 0.01f, 1.0f}, Case{777, 100000, 1e-3f, 0.1f, 2.0f}}) {
    SCOPED_TRACE(testing::Message() << "n" << c.n << " step" << c.step);
    auto param = randn(c.n, 91), m = randn(c.n, 92, 0.0f, 0.01f), v = randn(c.n, 93, 0.0f, 0.01f);
    for (auto& x : v) x = x * x;  // second moments are non-negative
    if (c.step == 1) {
      std::fill(m.begin(), m.end(), 0.0f);
      std::fill(v.begin(), v.end(), 0.0f);
    }
    const auto grad = randn(c.n, 94, 0.0f, 0.1f);
    Dev<float> dparam(param), dgrad(grad), dm(m), dv(v);
    AdamWParams p{.param = param.data(), .grad = grad.data(), .m = m.data(), .v = v.data(), .n = c.n,
                  .step = c.step, .lr = c.lr, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = c.wd,
                  .grad_scale = c.grad_scale};
    cpu::adamw(p);
    p.param = dparam.ptr;
    p.grad = dgrad.ptr;
    p.m = dm.ptr;
    p.v = dv.ptr;
    CUDA_OK(cuda::adamw(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dparam.download(), param), 1e-6) << "param";
    EXPECT_LE(rel_l2(dm.download(), m), 1e-6) << "m";
    EXPECT_LE(rel_l2(dv.download(), v), 1e-6) << "v";
    // The optional bf16 copy is the rounding of the updated parameter, exactly (as ops::cast makes it).
    Dev<uint16_t> dcopy(std::vector<uint16_t>(c.n, 0));
    Dev<float> dparam2(param);
    p.param = dparam2.ptr;
    p.param_bf16 = dcopy.ptr;
    CUDA_OK(cuda::adamw(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(dcopy.download(), to_bf16(dparam2.download()));
  }
}

// bf16 moments: the same stochastic rounding noise (a hash of step and index) on both backends, so the
// stored moments agree bit for bit except where the fp32 moment itself differs (the device fuses
// multiply-adds) and the noise falls between the two values: rare, and then the stored values differ
// by at most that fp32 difference plus one bf16 step. The fp32 difference is a few ulps of the terms
// summed, |b1 m| + |(1 - b1) g|, which can be many bf16 steps of m itself where the two cancel.
// shift 1 starts the update one element into the buffers: misaligned for the kernel's vector loads,
// so the one-element path runs; shift 0 runs the vectorized kernel and its tail (n % 4 = 3 or 1).
TEST_F(CudaTrainOps, AdamWBf16MomentsMatchCpu) {
  for (const auto [n, shift] : {std::pair<int64_t, int64_t>{5, 0}, {1000003, 0}, {1000003, 1}, {9, 1}}) {
    SCOPED_TRACE(testing::Message() << "n " << n << " shift " << shift);
    auto param = randn(n, 81);
    const auto grad = randn(n, 82, 0.0f, 0.1f);
    std::vector<uint16_t> m = to_bf16(randn(n, 83, 0.0f, 0.01f)), v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = f32_to_bf16(float(1e-4 * (1 + i % 7)));
    const std::vector<uint16_t> m_before = m, v_before = v;
    Dev<float> dparam(param), dgrad(grad);
    Dev<uint16_t> dm(m), dv(v);
    AdamWParams p{.param = param.data() + shift, .grad = grad.data() + shift, .n = n - shift, .step = 7,
                  .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f,
                  .m_bf16 = m.data() + shift, .v_bf16 = v.data() + shift, .offset = 12345 + shift};
    cpu::adamw(p);
    p.param = dparam.ptr + shift;
    p.grad = dgrad.ptr + shift;
    p.m_bf16 = dm.ptr + shift;
    p.v_bf16 = dv.ptr + shift;
    CUDA_OK(cuda::adamw(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dparam.download(), param), 1e-6) << "param";
    const auto bf16_step = [](float x) { return std::ldexp(1.0f, std::ilogb(x) - 7); };  // at |x|'s exponent
    for (const auto& [got, want, name, beta] :
         {std::tuple{dm.download(), m, "m", 0.9f}, std::tuple{dv.download(), v, "v", 0.999f}}) {
      const std::vector<uint16_t>& old = name[0] == 'm' ? m_before : v_before;
      int64_t differ = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (got[i] == want[i]) continue;
        ++differ;
        const float g = grad[i] * (name[0] == 'm' ? 1.0f : grad[i]);
        const float terms = std::abs(beta * bf16_to_f32(old[i])) + std::abs((1.0f - beta) * g);
        const float a = bf16_to_f32(got[i]), b = bf16_to_f32(want[i]);
        const float bound = bf16_step(std::max(std::abs(a), std::abs(b))) + 4.0f * std::ldexp(terms, -23);
        EXPECT_LE(std::abs(a - b), bound) << name << " element " << i << ": " << a << " vs " << b;
      }
      EXPECT_LE(differ, 1 + n / 10000) << name;
    }
  }
}

}  // namespace
}  // namespace dsv::ops
