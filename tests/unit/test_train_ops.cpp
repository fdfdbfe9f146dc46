// Training ops on the CPU backend: every backward against central finite differences of a
// double-precision forward (itself checked against the fp32 forward op), the loss, the elementwise
// ops and AdamW against double references.
//
// Tolerances. The references are accurate to ~1e-10 (double forward, central differences with
// h = 1e-5: truncation ~h^2, rounding ~1e-16/h). The ops compute in fp32 (unit roundoff 6e-8) and
// sum at most a few hundred terms, so their error is ~1e-6 relative to the largest gradient entry
// (entries near zero come from cancellation and carry that absolute error, hence the comparison
// against the max norm; measured: below 1e-6 everywhere). kGradTol = 1e-5 leaves 10x room for other
// summation orders (BLAS builds), while a wrong formula, mask or stride is off by O(1e-2) or more.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "ops/counter_rng.h"
#include "ops/ops.h"
#include "test_helpers.h"

namespace dsv {
namespace {

using ops::Context;
constexpr double kGradTol = 1e-5;
constexpr double kFdStep = 1e-5;
const float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f, float mean = 0.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = mean + scale * dist(rng);
  return v;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Central differences of f with respect to x[i] for i in `which` (all of x when empty).
std::vector<double> fd_grad(std::vector<double>& x, const std::function<double()>& f,
                            const std::vector<size_t>& which = {}) {
  std::vector<double> g(x.size(), 0.0);
  auto one = [&](size_t i) {
    const double saved = x[i];
    x[i] = saved + kFdStep;
    const double up = f();
    x[i] = saved - kFdStep;
    const double down = f();
    x[i] = saved;
    g[i] = (up - down) / (2 * kFdStep);
  };
  if (which.empty())
    for (size_t i = 0; i < x.size(); ++i) one(i);
  else
    for (size_t i : which) one(i);
  return g;
}

// max_i |got_i - want_i| <= tol * max_i |want_i| (over `which`, or all), with the worst index named.
void expect_close(const std::vector<float>& got, const std::vector<double>& want, double tol, const std::string& what,
                  const std::vector<size_t>& which = {}) {
  ASSERT_EQ(got.size(), want.size()) << what;
  std::vector<size_t> idx = which;
  if (idx.empty())
    for (size_t i = 0; i < want.size(); ++i) idx.push_back(i);
  double scale = 0.0, worst = -1.0;
  size_t worst_i = 0;
  for (size_t i : idx) scale = std::max(scale, std::abs(want[i]));
  ASSERT_GT(scale, 1e-6) << what << ": the reference is all zeros, the test would be vacuous";
  for (size_t i : idx) {
    const double err = std::isfinite(got[i]) ? std::abs(got[i] - want[i]) : std::numeric_limits<double>::infinity();
    if (err > worst) {
      worst = err;
      worst_i = i;
    }
  }
  EXPECT_LE(worst, tol * scale) << what << ": worst at " << worst_i << ": got " << got[worst_i] << ", want "
                                << want[worst_i] << " (max |want| " << scale << ")";
}

// ---------------------------------------------------------------- linear_weight_grad

struct LwgCase {
  int64_t M, N, K, dy_stride, x_stride;
  bool bias, accumulate;
};

TEST(TrainOpsLinearWeightGrad, MatchesDoubleReference) {
  for (const LwgCase c : {LwgCase{37, 19, 23, 21, 29, true, false}, LwgCase{37, 19, 23, 0, 0, true, true},
                          LwgCase{1, 7, 5, 9, 6, false, false}, LwgCase{130, 3, 65, 4, 70, true, true}}) {
    SCOPED_TRACE(testing::Message() << "M=" << c.M << " N=" << c.N << " K=" << c.K << " acc=" << c.accumulate);
    const int64_t dys = c.dy_stride ? c.dy_stride : c.N, xs = c.x_stride ? c.x_stride : c.K;
    const auto dy = randn(static_cast<size_t>(c.M * dys), 1);
    const auto x = randn(static_cast<size_t>(c.M * xs), 2);
    auto dw = c.accumulate ? randn(static_cast<size_t>(c.N * c.K), 3) : std::vector<float>(c.N * c.K, kNaN);
    auto db = c.accumulate ? randn(static_cast<size_t>(c.N), 4) : std::vector<float>(c.N, kNaN);
    std::vector<double> want_w(dw.size()), want_b(db.size());
    for (int64_t n = 0; n < c.N; ++n) {
      for (int64_t k = 0; k < c.K; ++k) {
        double acc = c.accumulate ? dw[n * c.K + k] : 0.0;
        for (int64_t m = 0; m < c.M; ++m) acc += static_cast<double>(dy[m * dys + n]) * x[m * xs + k];
        want_w[n * c.K + k] = acc;
      }
      double acc = c.accumulate ? db[n] : 0.0;
      for (int64_t m = 0; m < c.M; ++m) acc += dy[m * dys + n];
      want_b[n] = acc;
    }
    ops::linear_weight_grad(Context{}, {.dy = dy.data(), .x = x.data(), .dw = dw.data(),
                                        .dbias = c.bias ? db.data() : nullptr, .M = c.M, .N = c.N, .K = c.K,
                                        .dy_stride = c.dy_stride, .x_stride = c.x_stride,
                                        .accumulate = c.accumulate});
    expect_close(dw, want_w, kGradTol, "dw");
    if (c.bias) expect_close(db, want_b, kGradTol, "dbias");
  }
}

// linear_backward is linear_weight_grad followed by the transposed product for dx, bit for bit,
// with strides, both accumulate flags, dx aliasing x (dw reads x first) and no dx at all.
TEST(TrainOpsLinearBackward, EqualsWeightGradThenTransposedProduct) {
  const int64_t M = 23, N = 11, K = 17, dys = 13, xs = 20, dxs = 19;
  const auto dy = randn(static_cast<size_t>(M * dys), 5), w = randn(static_cast<size_t>(N * K), 6);
  for (const bool acc_dx : {false, true})
    for (const bool acc_dw : {false, true}) {
      SCOPED_TRACE(testing::Message() << "accumulate dx " << acc_dx << " dw " << acc_dw);
      const auto x = randn(static_cast<size_t>(M * xs), 7);
      auto dw_want = randn(static_cast<size_t>(N * K), 8), db_want = randn(static_cast<size_t>(N), 9);
      auto dx_want = randn(static_cast<size_t>(M * dxs), 10);
      auto dw = dw_want, db = db_want, dx = dx_want;
      ops::linear_weight_grad(Context{}, {.dy = dy.data(), .x = x.data(), .dw = dw_want.data(), .dbias = db_want.data(),
                                          .M = M, .N = N, .K = K, .dy_stride = dys, .x_stride = xs,
                                          .accumulate = acc_dw});
      ops::linear(Context{}, {.x = dy.data(), .w = w.data(), .y = dx_want.data(), .M = M, .N = K, .K = N,
                              .x_stride = dys, .y_stride = dxs, .accumulate = acc_dx, .w_transposed = true});
      ops::linear_backward(Context{}, {.dy = dy.data(), .x = x.data(), .w = w.data(), .dx = dx.data(), .dw = dw.data(),
                                       .dbias = db.data(), .M = M, .N = N, .K = K, .dy_stride = dys, .x_stride = xs,
                                       .dx_stride = dxs, .accumulate_dx = acc_dx, .accumulate_dw = acc_dw});
      EXPECT_EQ(dw, dw_want);
      EXPECT_EQ(db, db_want);
      EXPECT_EQ(dx, dx_want);
      // dx over x itself (the MLP's down projection writes dh over h).
      auto x_then_dx = x, dw2 = randn(static_cast<size_t>(N * K), 8);
      ops::linear_backward(Context{}, {.dy = dy.data(), .x = x_then_dx.data(), .w = w.data(), .dx = x_then_dx.data(),
                                       .dw = dw2.data(), .M = M, .N = N, .K = K, .dy_stride = dys, .x_stride = xs,
                                       .dx_stride = xs, .accumulate_dw = acc_dw});
      auto dw3 = randn(static_cast<size_t>(N * K), 8);
      ops::linear_weight_grad(Context{}, {.dy = dy.data(), .x = x.data(), .dw = dw3.data(), .M = M, .N = N, .K = K,
                                          .dy_stride = dys, .x_stride = xs, .accumulate = acc_dw});
      EXPECT_EQ(dw2, dw3);
      auto dx_plain = x;  // the product over a copy of x: same strides, same untouched gaps
      ops::linear(Context{}, {.x = dy.data(), .w = w.data(), .y = dx_plain.data(), .M = M, .N = K, .K = N,
                              .x_stride = dys, .y_stride = xs, .w_transposed = true});
      EXPECT_EQ(x_then_dx, dx_plain);
    }
}

TEST(TrainOpsLinearBackward, WithoutDxOnlyTheWeightGradient) {
  const auto dy = randn(12, 11), x = randn(15, 12), w = randn(20, 13);
  std::vector<float> dw(20, kNaN), want(20, kNaN);
  ops::linear_backward(Context{}, {.dy = dy.data(), .x = x.data(), .w = w.data(), .dw = dw.data(), .M = 3, .N = 4,
                                   .K = 5});
  ops::linear_weight_grad(Context{}, {.dy = dy.data(), .x = x.data(), .dw = want.data(), .M = 3, .N = 4, .K = 5});
  EXPECT_EQ(dw, want);
  test::expect_error(
      [&] {
        std::vector<float> b(64);
        ops::linear_backward(Context{}, {.dy = b.data(), .x = b.data(), .w = b.data(), .dx = b.data(), .dw = b.data(),
                                         .M = 2, .N = 2, .K = 2});
      },
      {"linear_backward", "alias dy"});
}

TEST(TrainOpsLinearWeightGrad, NoRowsZeroesOrKeeps) {
  const float dummy = 1.0f;
  std::vector<float> dw(6, kNaN), db(3, kNaN);
  ops::linear_weight_grad(Context{}, {.dy = &dummy, .x = &dummy, .dw = dw.data(), .dbias = db.data(), .M = 0,
                                      .N = 3, .K = 2});
  for (float v : dw) EXPECT_EQ(v, 0.0f);
  for (float v : db) EXPECT_EQ(v, 0.0f);
  dw.assign(6, 2.0f);
  db.assign(3, 3.0f);
  ops::linear_weight_grad(Context{}, {.dy = &dummy, .x = &dummy, .dw = dw.data(), .dbias = db.data(), .M = 0,
                                      .N = 3, .K = 2, .accumulate = true});
  for (float v : dw) EXPECT_EQ(v, 2.0f);
  for (float v : db) EXPECT_EQ(v, 3.0f);
}

TEST(TrainOpsLinearWeightGrad, RejectsBadParams) {
  std::vector<float> buf(64);
  test::expect_error([&] { ops::linear_weight_grad(Context{}, {.dy = buf.data(), .x = nullptr, .dw = buf.data()}); },
                     {"linear_weight_grad", "null pointer"});
  test::expect_error(
      [&] {
        ops::linear_weight_grad(Context{}, {.dy = buf.data(), .x = buf.data(), .dw = buf.data(), .M = 2, .N = 2,
                                            .K = 5, .x_stride = 3});
      },
      {"linear_weight_grad", "x_stride 3 < K 5"});
  test::expect_error(
      [&] {
        ops::linear_weight_grad(Context{}, {.dy = buf.data(), .x = buf.data(), .dw = buf.data(), .M = 2, .N = 4,
                                            .K = 1, .dy_stride = 2});
      },
      {"linear_weight_grad", "dy_stride 2 < N 4"});
}

// ---------------------------------------------------------------- add_rmsnorm

// The fused residual add + pre-norm is exactly add, then rmsnorm (the same bits), also when y takes
// delta's place; it refuses outputs aliasing the residual.
TEST(OpsAddRmsNorm, IsAddThenRmsNorm) {
  const int64_t rows = 3, D = 37;
  const auto x0 = randn(rows * D, 20), delta = randn(rows * D, 21), w = randn(D, 22, 0.3f, 1.0f);
  std::vector<float> want_x = x0, want_y(rows * D);
  ops::add(Context{}, {.x = delta.data(), .y = want_x.data(), .n = rows * D});
  ops::rmsnorm(Context{}, {.x = want_x.data(), .weight = w.data(), .y = want_y.data(), .rows = rows, .dim = D, .eps = 1e-5f});
  std::vector<float> x = x0, y(rows * D, NAN);
  ops::add_rmsnorm(Context{}, {.x = x.data(), .delta = delta.data(), .weight = w.data(), .y = y.data(), .rows = rows,
                               .dim = D, .eps = 1e-5f});
  EXPECT_EQ(x, want_x);
  EXPECT_EQ(y, want_y);
  std::vector<float> x2 = x0, in_place = delta;
  ops::add_rmsnorm(Context{}, {.x = x2.data(), .delta = in_place.data(), .weight = w.data(), .y = in_place.data(),
                               .rows = rows, .dim = D, .eps = 1e-5f});
  EXPECT_EQ(in_place, want_y);
  test::expect_error([&] {
    ops::add_rmsnorm(Context{}, {.x = x.data(), .delta = delta.data(), .weight = w.data(), .y = x.data(), .rows = rows,
                                 .dim = D});
  }, {"add_rmsnorm", "may not alias x"});
}

// ---------------------------------------------------------------- rope into another buffer

// Out of place, rope writes exactly what in place would have left in the span, touches nothing else
// of y, and leaves x as it was; an output span past its stride is refused.
TEST(OpsRope, OutOfPlaceIsInPlaceWrittenElsewhere) {
  for (RopeLayout layout : {RopeLayout::Interleaved, RopeLayout::HalfSplit}) {
    const int64_t T = 3, H = 4, Dn = 5, R = 6, stride = Dn + R, C = 7, ystride = C + R;
    const auto x0 = randn(T * H * stride, 30), cos = randn(T * R / 2, 31), sin = randn(T * R / 2, 32);
    std::vector<float> in_place = x0;
    ops::rope(Context{}, {.x = in_place.data(), .cos = cos.data(), .sin = sin.data(), .tokens = T, .heads = H,
                          .rope_dim = R, .token_stride = H * stride, .head_stride = stride, .offset = Dn,
                          .layout = layout});
    std::vector<float> x = x0, y(T * H * ystride, 9.0f);
    ops::rope(Context{}, {.x = x.data(), .cos = cos.data(), .sin = sin.data(), .tokens = T, .heads = H, .rope_dim = R,
                          .token_stride = H * stride, .head_stride = stride, .offset = Dn, .layout = layout,
                          .y = y.data(), .y_token_stride = H * ystride, .y_head_stride = ystride, .y_offset = C});
    EXPECT_EQ(x, x0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t d = 0; d < C; ++d) EXPECT_EQ(y[(t * H + h) * ystride + d], 9.0f);
        for (int64_t d = 0; d < R; ++d)
          EXPECT_EQ(y[(t * H + h) * ystride + C + d], in_place[(t * H + h) * stride + Dn + d]) << t << h << d;
      }
    test::expect_error([&] {
      ops::rope(Context{}, {.x = x.data(), .cos = cos.data(), .sin = sin.data(), .tokens = T, .heads = H,
                            .rope_dim = R, .token_stride = H * stride, .head_stride = stride, .offset = Dn,
                            .y = y.data(), .y_token_stride = H * ystride, .y_head_stride = ystride, .y_offset = C + 1});
    }, {"rope", "output span"});
  }
}

// ---------------------------------------------------------------- gated_linear

// silu(x . gate + bg) * (x . up + bu) is exactly the two linears and the swiglu it stands for, with
// fp32 and with bf16 weights; mixed weight kinds and an output aliasing x are refused.
TEST(OpsGatedLinear, IsTwoLinearsAndSwiglu) {
  const int64_t M = 3, N = 11, K = 24;
  const auto x = randn(M * K, 40), g = randn(N * K, 41), u = randn(N * K, 42), bg = randn(N, 43), bu = randn(N, 44);
  std::vector<uint16_t> g16(g.size()), u16(u.size());
  for (size_t i = 0; i < g.size(); ++i) g16[i] = f32_to_bf16(g[i]), u16[i] = f32_to_bf16(u[i]);
  for (const bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bf16 weights" : "fp32 weights");
    std::vector<float> gate(M * N), up(M * N), want(M * N), got(M * N, NAN);
    ops::linear(Context{}, {.x = x.data(), .w = bf16 ? nullptr : g.data(), .w_bf16 = bf16 ? g16.data() : nullptr,
                            .bias = bg.data(), .y = gate.data(), .M = M, .N = N, .K = K});
    ops::linear(Context{}, {.x = x.data(), .w = bf16 ? nullptr : u.data(), .w_bf16 = bf16 ? u16.data() : nullptr,
                            .bias = bu.data(), .y = up.data(), .M = M, .N = N, .K = K});
    ops::swiglu(Context{}, {.gate = gate.data(), .up = up.data(), .out = want.data(), .n = M * N});
    ops::gated_linear(Context{}, {.x = x.data(), .gate = bf16 ? nullptr : g.data(), .up = bf16 ? nullptr : u.data(),
                                  .gate_bf16 = bf16 ? g16.data() : nullptr, .up_bf16 = bf16 ? u16.data() : nullptr,
                                  .gate_bias = bg.data(), .up_bias = bu.data(), .y = got.data(), .M = M, .N = N, .K = K});
    EXPECT_EQ(got, want);
  }
  std::vector<float> y(M * K);
  test::expect_error([&] {
    ops::gated_linear(Context{}, {.x = x.data(), .gate = g.data(), .up_bf16 = u16.data(), .y = y.data(), .M = M, .N = N,
                                  .K = K});
  }, {"gated_linear", "both fp32 or both bf16"});
  test::expect_error([&] {
    ops::gated_linear(Context{}, {.x = y.data(), .gate = g.data(), .up = u.data(), .y = y.data(), .M = M, .N = N, .K = K});
  }, {"gated_linear", "may not alias x"});
}

// ---------------------------------------------------------------- rmsnorm_backward

// y = w * x / sqrt(mean(x^2) + eps) for one row, in double.
void rmsnorm_row(const double* x, const double* w, double* y, int64_t D, double eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < D; ++i) ss += x[i] * x[i];
  const double r = 1.0 / std::sqrt(ss / D + eps);
  for (int64_t i = 0; i < D; ++i) y[i] = w[i] * x[i] * r;
}

TEST(TrainOpsRmsNorm, BackwardMatchesFiniteDifferences) {
  const int64_t rows = 5, D = 13, xs = 17, dys = 15, dxs = 19;
  const float eps = 1e-5f;
  const auto x = randn(rows * xs, 10, 1.5f);
  const auto w = randn(D, 11, 0.3f, 1.0f);
  const auto dy = randn(rows * dys, 12);

  // The double forward is the fp32 op's function.
  {
    std::vector<float> y(rows * D);
    ops::rmsnorm(Context{}, {.x = x.data(), .weight = w.data(), .y = y.data(), .rows = rows, .dim = D,
                             .x_stride = xs, .y_stride = D, .eps = eps});
    std::vector<double> yd(D);
    for (int64_t r = 0; r < rows; ++r) {
      const auto xr = to_double({x.begin() + r * xs, x.begin() + r * xs + D});
      rmsnorm_row(xr.data(), to_double(w).data(), yd.data(), D, eps);
      expect_close({y.begin() + r * D, y.begin() + (r + 1) * D}, yd, 1e-6, "forward row " + std::to_string(r));
    }
  }

  // L = sum_r dy[r] . y[r]; references for dx (dense [rows, D]) and dweight.
  std::vector<double> xd(rows * D), wd = to_double(w);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < D; ++i) xd[r * D + i] = x[r * xs + i];
  auto loss = [&] {
    double L = 0.0;
    std::vector<double> y(D);
    for (int64_t r = 0; r < rows; ++r) {
      rmsnorm_row(xd.data() + r * D, wd.data(), y.data(), D, eps);
      for (int64_t i = 0; i < D; ++i) L += dy[r * dys + i] * y[i];
    }
    return L;
  };
  const auto want_dx = fd_grad(xd, loss), want_dw = fd_grad(wd, loss);

  for (const bool accumulate : {false, true}) {
    SCOPED_TRACE(accumulate ? "accumulate_dx" : "overwrite dx");
    // Padding between rows holds a sentinel that must survive; overwritten entries start as NaN.
    std::vector<float> dx(rows * dxs, 7.0f), dweight(D, 0.25f);
    const auto prior = randn(rows * D, 13);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < D; ++i) dx[r * dxs + i] = accumulate ? prior[r * D + i] : kNaN;
    ops::rmsnorm_backward(Context{}, {.x = x.data(), .weight = w.data(), .dy = dy.data(), .dx = dx.data(),
                                      .dweight = dweight.data(), .rows = rows, .dim = D, .x_stride = xs,
                                      .dy_stride = dys, .dx_stride = dxs, .eps = eps, .accumulate_dx = accumulate});
    std::vector<float> got(rows * D);
    std::vector<double> want(rows * D);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < D; ++i) {
        got[r * D + i] = dx[r * dxs + i];
        want[r * D + i] = want_dx[r * D + i] + (accumulate ? prior[r * D + i] : 0.0);
      }
    expect_close(got, want, kGradTol, "dx");
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = D; i < dxs; ++i) EXPECT_EQ(dx[r * dxs + i], 7.0f) << "padding row " << r << " col " << i;
    std::vector<double> want_w(D);
    for (int64_t i = 0; i < D; ++i) want_w[i] = 0.25 + want_dw[i];  // dweight always accumulates
    expect_close(dweight, want_w, kGradTol, "dweight");
  }

  // dx may alias dy (same stride); no dweight.
  std::vector<float> inplace = dy;
  ops::rmsnorm_backward(Context{}, {.x = x.data(), .weight = w.data(), .dy = inplace.data(), .dx = inplace.data(),
                                    .rows = rows, .dim = D, .x_stride = xs, .dy_stride = dys, .dx_stride = dys,
                                    .eps = eps});
  std::vector<float> got(rows * D);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < D; ++i) got[r * D + i] = inplace[r * dys + i];
  expect_close(got, want_dx, kGradTol, "dx aliasing dy");
}

TEST(TrainOpsRmsNorm, RejectsBadParams) {
  std::vector<float> b(32);
  test::expect_error(
      [&] {
        ops::rmsnorm_backward(Context{}, {.x = b.data(), .weight = b.data(), .dy = b.data(), .dx = b.data(),
                                          .rows = 1, .dim = 4});
      },
      {"rmsnorm_backward", "alias x"});
  test::expect_error(
      [&] {
        ops::rmsnorm_backward(Context{}, {.x = b.data(), .weight = b.data(), .dy = b.data(), .dx = b.data() + 8,
                                          .rows = 2, .dim = 4, .dy_stride = 3});
      },
      {"rmsnorm_backward", "dy_stride 3 < dim 4"});
  test::expect_error([&] { ops::rmsnorm_backward(Context{}, {.x = b.data(), .rows = 1, .dim = 4}); },
                     {"rmsnorm_backward", "null pointer"});
}

// ---------------------------------------------------------------- attention_backward

struct AttnShape {
  int64_t T, S, H, Dqk, Dv;
};

// out[T, H, Dv] of causal attention (queries = last T of S keys), dense, in double.
std::vector<double> attention_d(const AttnShape& a, const std::vector<double>& q, const std::vector<double>& k,
                                const std::vector<double>& v, double scale) {
  std::vector<double> out(a.T * a.H * a.Dv, 0.0), sc(a.S);
  for (int64_t t = 0; t < a.T; ++t)
    for (int64_t h = 0; h < a.H; ++h) {
      const int64_t visible = a.S - a.T + t + 1;
      double mx = -1e300, z = 0.0;
      for (int64_t s = 0; s < visible; ++s) {
        double d = 0.0;
        for (int64_t i = 0; i < a.Dqk; ++i) d += q[(t * a.H + h) * a.Dqk + i] * k[(s * a.H + h) * a.Dqk + i];
        mx = std::max(mx, sc[s] = d * scale);
      }
      for (int64_t s = 0; s < visible; ++s) z += (sc[s] = std::exp(sc[s] - mx));
      for (int64_t s = 0; s < visible; ++s)
        for (int64_t i = 0; i < a.Dv; ++i) out[(t * a.H + h) * a.Dv + i] += sc[s] / z * v[(s * a.H + h) * a.Dv + i];
    }
  return out;
}

// Picks up to n indices of [0, size) (all when size <= n), spread at random.
std::vector<size_t> sample_indices(size_t size, size_t n, uint64_t seed) {
  std::vector<size_t> all(size);
  for (size_t i = 0; i < size; ++i) all[i] = i;
  if (size <= n) return all;
  std::mt19937_64 rng(seed);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(n);
  return all;
}

void check_attention_backward(const AttnShape& a, size_t fd_per_tensor) {
  SCOPED_TRACE(testing::Message() << "T=" << a.T << " S=" << a.S << " H=" << a.H << " Dqk=" << a.Dqk
                                  << " Dv=" << a.Dv);
  const float scale = 1.3f / std::sqrt(static_cast<float>(a.Dqk));
  const auto q = randn(a.T * a.H * a.Dqk, 20), k = randn(a.S * a.H * a.Dqk, 21), v = randn(a.S * a.H * a.Dv, 22);
  const auto dout = randn(a.T * a.H * a.Dv, 23);
  std::vector<double> qd = to_double(q), kd = to_double(k), vd = to_double(v);

  // The double forward is the fp32 op's function.
  std::vector<float> out(a.T * a.H * a.Dv);
  ops::attention(Context{}, {.q = q.data(), .k = k.data(), .v = v.data(), .out = out.data(), .T = a.T, .S = a.S,
                             .H = a.H, .Dqk = a.Dqk, .Dv = a.Dv, .scale = scale});
  expect_close(out, attention_d(a, qd, kd, vd, scale), 1e-5, "forward");

  // Outputs start as NaN: all three are overwritten.
  std::vector<float> dq(q.size(), kNaN), dk(k.size(), kNaN), dv(v.size(), kNaN);
  ops::attention_backward(Context{}, {.q = q.data(), .k = k.data(), .v = v.data(), .dout = dout.data(),
                                      .dq = dq.data(), .dk = dk.data(), .dv = dv.data(), .T = a.T, .S = a.S,
                                      .H = a.H, .Dqk = a.Dqk, .Dv = a.Dv, .scale = scale});
  auto loss = [&] {
    const auto o = attention_d(a, qd, kd, vd, scale);
    double L = 0.0;
    for (size_t i = 0; i < o.size(); ++i) L += dout[i] * o[i];
    return L;
  };
  const auto iq = sample_indices(q.size(), fd_per_tensor, 1), ik = sample_indices(k.size(), fd_per_tensor, 2),
             iv = sample_indices(v.size(), fd_per_tensor, 3);
  expect_close(dq, fd_grad(qd, loss, iq), kGradTol, "dq", iq);
  expect_close(dk, fd_grad(kd, loss, ik), kGradTol, "dk", ik);
  expect_close(dv, fd_grad(vd, loss, iv), kGradTol, "dv", iv);
  for (float x : dk) ASSERT_TRUE(std::isfinite(x));  // keys no query sees still get a (zero) gradient
  for (float x : dv) ASSERT_TRUE(std::isfinite(x));
}

// MLA's expanded layout, read in place: rows kv[S, H, Dn + Dv] (each head's key part, then its value
// part) and one roped key per row, shared by all heads, at an offset inside wider cache rows.
TEST(OpsAttention, HeadStridesAndASharedKeyTailReadTheMlaLayout) {
  const int64_t T = 4, S = 7, H = 3, Dn = 5, R = 3, Dv = 4, C = 8, width = C + R, Dqk = Dn + R;
  const float scale = 0.4f;
  const auto q = randn(T * H * Dqk, 30), kv = randn(S * H * (Dn + Dv), 31), rows = randn(S * width, 32);
  std::vector<double> kd(S * H * Dqk), vd(S * H * Dv);  // the dense keys and values this stands for
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < Dn; ++i) kd[(s * H + h) * Dqk + i] = kv[(s * H + h) * (Dn + Dv) + i];
      for (int64_t i = 0; i < R; ++i) kd[(s * H + h) * Dqk + Dn + i] = rows[s * width + C + i];
      for (int64_t i = 0; i < Dv; ++i) vd[(s * H + h) * Dv + i] = kv[(s * H + h) * (Dn + Dv) + Dn + i];
    }
  ops::AttentionParams p{.q = q.data(), .k = kv.data(), .v = kv.data() + Dn, .T = T, .S = S, .H = H, .Dqk = Dqk,
                         .Dv = Dv, .k_stride = H * (Dn + Dv), .v_stride = H * (Dn + Dv), .scale = scale,
                         .k_head_stride = Dn + Dv, .v_head_stride = Dn + Dv, .k_shared = rows.data() + C,
                         .k_shared_stride = width, .k_shared_dims = R};
  std::vector<float> out(T * H * Dv, kNaN);
  p.out = out.data();
  ops::attention(Context{}, p);
  expect_close(out, attention_d({T, S, H, Dqk, Dv}, to_double(q), kd, vd, scale), 1e-5, "MLA layout");

  // A tail wider than the key, or than its own rows, is refused.
  ops::AttentionParams bad = p;
  bad.k_shared_dims = Dqk + 1;
  test::expect_error([&] { ops::attention(Context{}, bad); }, {"shared key tail of 9 dims", "keys of 8 dims"});
  bad = p;
  bad.k_shared_stride = R - 1;
  test::expect_error([&] { ops::attention(Context{}, bad); }, {"row stride 2"});
}

TEST(TrainOpsAttention, BackwardMatchesFiniteDifferences) {
  check_attention_backward({5, 9, 3, 7, 5}, 1000);   // T < S: past keys, odd sizes
  check_attention_backward({6, 6, 2, 11, 4}, 1000);  // T == S
  check_attention_backward({1, 4, 1, 3, 2}, 1000);   // one query sees every key
  check_attention_backward({3, 3, 2, 16, 9}, 1000);  // one query sees only the first key
}

TEST(TrainOpsAttention, BackwardMatchesFiniteDifferencesLarger) {
  // Longer rows (unrolled dot products plus their tails); a sample of entries per tensor.
  check_attention_backward({40, 48, 3, 19, 8}, 80);
}

TEST(TrainOpsAttention, RejectsBadParams) {
  std::vector<float> b(64);
  float* p = b.data();
  test::expect_error(
      [&] {
        ops::attention_backward(Context{}, {.q = p, .k = p, .v = p, .dout = p, .dq = p, .dk = p, .dv = p, .T = 5,
                                            .S = 4, .H = 1, .Dqk = 2, .Dv = 2});
      },
      {"attention_backward", "5 queries over 4 keys"});
  test::expect_error(
      [&] {
        ops::attention_backward(Context{}, {.q = p, .k = p, .v = p, .dout = p, .dq = p, .dk = nullptr, .dv = p,
                                            .T = 1, .S = 1, .H = 1, .Dqk = 2, .Dv = 2});
      },
      {"attention_backward", "null pointer"});
  test::expect_error(
      [&] {
        ops::attention_backward(Context{}, {.q = p, .k = p, .v = p, .dout = p, .dq = p, .dk = p, .dv = p, .T = 1,
                                            .S = 1, .H = 1, .Dqk = 2, .Dv = 2, .lse = p});
      },
      {"attention_backward", "out and lse go together"});
  std::vector<uint16_t> cache(64);
  test::expect_error(
      [&] {
        ops::attention(Context{}, {.q = p, .k_bf16 = cache.data(), .v_bf16 = cache.data(), .out = p, .T = 1, .S = 1,
                                   .H = 1, .Dqk = 2, .Dv = 2, .lse = p});
      },
      {"attention", "lse output needs fp32 k / v"});
}

// The forward's optional logsumexp: log sum_s exp(scale q.k_s) over each row's visible keys, per
// problem of a batched call (computed here in double from the definition).
TEST(TrainOpsAttention, ForwardLogsumexp) {
  const int64_t batch = 2, T = 3, S = 7, H = 2, D = 5;
  const auto q = randn(batch * T * H * D, 41), k = randn(batch * S * H * D, 42), v = randn(batch * S * H * D, 43);
  std::vector<float> out(batch * T * H * D), lse(batch * T * H, NAN);
  const float scale = 0.4f;
  ops::attention(Context{}, {.q = q.data(), .k = k.data(), .v = v.data(), .out = out.data(), .T = T, .S = S, .H = H,
                             .Dqk = D, .Dv = D, .scale = scale, .batch = batch, .k_batch_stride = S * H * D,
                             .v_batch_stride = S * H * D, .lse = lse.data()});
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        double sum = 0.0;
        for (int64_t s = 0; s <= S - T + t; ++s) {
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d)
            dot += double(q[((b * T + t) * H + h) * D + d]) * k[((b * S + s) * H + h) * D + d];
          sum += std::exp(scale * dot);
        }
        EXPECT_NEAR(lse[(b * T + t) * H + h], std::log(sum), 1e-5) << "problem " << b << " query " << t << " head " << h;
      }
}

// ---------------------------------------------------------------- swiglu_backward

TEST(TrainOpsSwiglu, BackwardMatchesFiniteDifferences) {
  auto gate = randn(37, 30, 2.0f);
  gate[0] = -30.0f, gate[1] = 30.0f, gate[2] = 0.0f, gate[3] = -100.0f;  // saturated and zero
  const auto up = randn(37, 31), dout = randn(37, 32);
  auto silu = [](double g) { return g / (1.0 + std::exp(-g)); };
  std::vector<double> want_g(gate.size()), want_u(gate.size());
  for (size_t i = 0; i < gate.size(); ++i) {
    const double g = gate[i];
    want_g[i] = dout[i] * up[i] * (silu(g + kFdStep) - silu(g - kFdStep)) / (2 * kFdStep);
    want_u[i] = dout[i] * silu(g);
  }
  std::vector<float> dgate(gate.size(), kNaN), dup(gate.size(), kNaN);
  ops::swiglu_backward(Context{}, {.gate = gate.data(), .up = up.data(), .dout = dout.data(), .dgate = dgate.data(),
                                   .dup = dup.data(), .n = 37});
  // Elementwise: each entry to fp32 precision of its own size (no sums, so no cancellation).
  for (size_t i = 0; i < gate.size(); ++i) {
    EXPECT_NEAR(dgate[i], want_g[i], 1e-5 * std::abs(want_g[i]) + 1e-12) << "dgate " << i;
    EXPECT_NEAR(dup[i], want_u[i], 1e-5 * std::abs(want_u[i]) + 1e-12) << "dup " << i;
  }
  // In place: dgate over gate, dup over up.
  auto g2 = gate, u2 = up;
  ops::swiglu_backward(Context{}, {.gate = g2.data(), .up = u2.data(), .dout = dout.data(), .dgate = g2.data(),
                                   .dup = u2.data(), .n = 37});
  EXPECT_EQ(g2, dgate);
  EXPECT_EQ(u2, dup);
}

// ---------------------------------------------------------------- embed_backward, row_dots

TEST(TrainOpsEmbed, BackwardAddsRepeatedIds) {
  const int64_t V = 5, D = 7;
  const std::vector<int32_t> ids = {3, 0, 3, 4, 3, 0, 1, 3, 4, 0, 3};  // 2 never appears
  const int64_t T = static_cast<int64_t>(ids.size());
  const auto dout = randn(T * D, 40);
  auto table = randn(V * D, 41);
  std::vector<double> want = to_double(table);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) want[ids[t] * D + d] += dout[t * D + d];
  ops::embed_backward(Context{}, {.ids = ids.data(), .dout = dout.data(), .dtable = table.data(), .T = T, .D = D});
  for (int64_t i = 0; i < V * D; ++i) EXPECT_NEAR(table[i], want[i], 1e-5 * (1.0 + std::abs(want[i]))) << i;

  const std::vector<int32_t> bad = {1, -2};
  test::expect_error(
      [&] {
        ops::embed_backward(Context{}, {.ids = bad.data(), .dout = dout.data(), .dtable = table.data(), .T = 2, .D = D});
      },
      {"embed_backward", "token 1", "-2"});
}

TEST(TrainOpsEmbed, GroupsAreByIdThenPosition) {
  const std::vector<int32_t> ids = {3, 0, 3, 4, 3, 0, 1, 3, 4, 0, 3};
  const ops::EmbedGroups g = ops::embed_backward_groups(ids.data(), static_cast<int64_t>(ids.size()));
  EXPECT_EQ(g.tokens, (std::vector<int32_t>{1, 5, 9, 6, 0, 2, 4, 7, 10, 3, 8}));
  EXPECT_EQ(g.start, (std::vector<int32_t>{0, 3, 4, 9, 11}));  // ids 0, 1, 3, 4
  EXPECT_EQ(g.groups(), 4);
  EXPECT_EQ(ops::embed_backward_groups(ids.data(), 0).groups(), 0);
}

TEST(TrainOpsRowDots, MatchesDoubleReference) {
  const int64_t D = 13, n = 6;
  const std::vector<int32_t> rows = {4, 0, 4, 2, 7, 1};
  const auto a = randn(8 * D, 50), b = randn(n * D, 51);
  std::vector<float> out(n, kNaN);
  ops::row_dots(Context{}, {.rows = rows.data(), .a = a.data(), .b = b.data(), .out = out.data(), .n = n, .D = D});
  for (int64_t r = 0; r < n; ++r) {
    double want = 0.0, mag = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      want += static_cast<double>(a[rows[r] * D + d]) * b[r * D + d];
      mag += std::abs(static_cast<double>(a[rows[r] * D + d]) * b[r * D + d]);
    }
    EXPECT_NEAR(out[r], want, 1e-6 * mag) << "row " << r;  // one fp32 rounding of a double sum
  }
}

// ---------------------------------------------------------------- route_backward

// w_k for the given experts, as route() defines them, in double.
std::vector<double> route_weights_d(const double* logits, const int32_t* idx, int64_t E, int64_t K, RouterKind kind,
                                    bool norm, double scale) {
  std::vector<double> w(K);
  if (kind == RouterKind::SigmoidNoauxGroups) {
    double sum = 0.0;
    for (int64_t k = 0; k < K; ++k) sum += (w[k] = 1.0 / (1.0 + std::exp(-logits[idx[k]])));
    for (int64_t k = 0; k < K; ++k) w[k] = scale * w[k] / (norm ? sum + 1e-20 : 1.0);
    return w;
  }
  double mx = -1e300, z = 0.0;
  for (int64_t e = 0; e < E; ++e) mx = std::max(mx, logits[e]);
  for (int64_t e = 0; e < E; ++e) z += std::exp(logits[e] - mx);
  for (int64_t k = 0; k < K; ++k) w[k] = scale * std::exp(logits[idx[k]] - mx) / z;  // never renormalized
  return w;
}

TEST(TrainOpsRoute, BackwardMatchesFiniteDifferences) {
  const int64_t T = 6, E = 16, K = 4, n_group = 4, topk_group = 2;
  const auto logits = randn(T * E, 60, 1.5f);
  const auto bias = randn(E, 61, 0.1f);
  const auto dweights = randn(T * K, 62);
  for (const RouterKind kind :
       {RouterKind::SoftmaxGreedy, RouterKind::SoftmaxGroupLimited, RouterKind::SigmoidNoauxGroups})
    for (const bool norm : {false, true})
      for (const float scale : {1.0f, 2.5f})
        for (const bool accumulate : {false, true}) {
          SCOPED_TRACE(testing::Message() << "kind " << static_cast<int>(kind) << " norm " << norm << " scale "
                                          << scale << " accumulate " << accumulate);
          std::vector<int32_t> idx(T * K);
          std::vector<float> w(T * K);
          ops::route(Context{}, {.logits = logits.data(), .correction_bias = bias.data(), .indices = idx.data(),
                                 .weights = w.data(), .T = T, .E = E, .K = K, .n_group = n_group,
                                 .topk_group = topk_group, .kind = kind, .norm_topk_prob = norm,
                                 .routed_scaling_factor = scale});
          auto prior = randn(T * E, 63);
          std::vector<float> dl = accumulate ? prior : std::vector<float>(T * E, kNaN);
          ops::route_backward(Context{}, {.logits = logits.data(), .indices = idx.data(),
                                          .dweights = dweights.data(), .dlogits = dl.data(), .T = T, .E = E, .K = K,
                                          .kind = kind, .norm_topk_prob = norm, .routed_scaling_factor = scale,
                                          .accumulate = accumulate});
          for (int64_t t = 0; t < T; ++t) {
            std::vector<double> row(logits.begin() + t * E, logits.begin() + (t + 1) * E);
            // The double forward reproduces route()'s weights for the chosen experts.
            const auto wd = route_weights_d(row.data(), idx.data() + t * K, E, K, kind, norm, scale);
            expect_close({w.begin() + t * K, w.begin() + (t + 1) * K}, wd, 1e-5, "weights token " + std::to_string(t));
            // L = dweights . w(logits) with the selection held fixed (it is piecewise constant).
            auto loss = [&] {
              const auto ww = route_weights_d(row.data(), idx.data() + t * K, E, K, kind, norm, scale);
              double L = 0.0;
              for (int64_t k = 0; k < K; ++k) L += dweights[t * K + k] * ww[k];
              return L;
            };
            auto want = fd_grad(row, loss);
            if (accumulate)
              for (int64_t e = 0; e < E; ++e) want[e] += prior[t * E + e];
            expect_close({dl.begin() + t * E, dl.begin() + (t + 1) * E}, want, kGradTol,
                         "dlogits token " + std::to_string(t));
            if (kind == RouterKind::SigmoidNoauxGroups && !accumulate)  // unselected experts: exactly zero
              for (int64_t e = 0; e < E; ++e) {
                if (std::find(idx.begin() + t * K, idx.begin() + (t + 1) * K, e) == idx.begin() + (t + 1) * K) {
                  EXPECT_EQ(dl[t * E + e], 0.0f) << "token " << t << " expert " << e;
                }
              }
          }
        }
}

TEST(TrainOpsRoute, RejectsBadIndices) {
  const std::vector<float> logits(8), dw(4);
  const std::vector<int32_t> idx = {0, 1, 3, 4};
  std::vector<float> dl(8);
  test::expect_error(
      [&] {
        ops::route_backward(Context{}, {.logits = logits.data(), .indices = idx.data(), .dweights = dw.data(),
                                        .dlogits = dl.data(), .T = 2, .E = 4, .K = 2});
      },
      {"route_backward", "token 1 slot 1", "expert 4"});
  test::expect_error(
      [&] {
        ops::route_backward(Context{}, {.logits = logits.data(), .indices = idx.data(), .dweights = dw.data(),
                                        .dlogits = dl.data(), .T = 1, .E = 4, .K = 5});
      },
      {"route_backward", "K=5"});
}

// ---------------------------------------------------------------- cross_entropy

TEST(TrainOpsCrossEntropy, LossAndGradientMatchDouble) {
  const int64_t T = 7, V = 37;
  const std::vector<int32_t> targets = {3, -1, 0, 36, -100, 17, 36};
  const float grad_scale = 0.37f;
  auto logits = randn(T * V, 70, 2.0f);
  for (int64_t v = 0; v < V; ++v) logits[5 * V + v] += 3000.0f;  // exp without max-subtraction overflows
  const auto original = logits;
  std::vector<float> loss(T, kNaN);
  ops::cross_entropy(Context{}, {.logits = logits.data(), .targets = targets.data(), .loss = loss.data(), .T = T,
                                 .V = V, .grad_scale = grad_scale});
  for (int64_t t = 0; t < T; ++t) {
    SCOPED_TRACE(testing::Message() << "row " << t << " target " << targets[t]);
    const std::vector<float> got(logits.begin() + t * V, logits.begin() + (t + 1) * V);
    if (targets[t] < 0) {
      EXPECT_EQ(loss[t], 0.0f);
      for (float g : got) EXPECT_EQ(g, 0.0f);
      continue;
    }
    std::vector<double> row(original.begin() + t * V, original.begin() + (t + 1) * V);
    auto row_loss = [&] {
      double mx = -1e300, z = 0.0;
      for (double x : row) mx = std::max(mx, x);
      for (double x : row) z += std::exp(x - mx);
      return mx + std::log(z) - row[targets[t]];
    };
    EXPECT_NEAR(loss[t], row_loss(), 1e-6 * (1.0 + row_loss()));
    auto want = fd_grad(row, row_loss);
    for (auto& g : want) g *= grad_scale;
    expect_close(got, want, kGradTol, "grad");
    double sum = 0.0;  // softmax - onehot sums to zero
    for (float g : got) sum += g;
    EXPECT_NEAR(sum, 0.0, 2e-6);
  }
}

// dlogits_bf16: the same gradient rounded to bf16, the logits left as they were, the same loss.
TEST(TrainOpsCrossEntropy, Bf16GradientIsTheRoundedGradient) {
  const int64_t T = 4, V = 53;
  const std::vector<int32_t> targets = {0, -1, 52, 7};
  const auto original = randn(T * V, 72, 2.0f);
  auto in_place = original, kept = original;
  std::vector<float> loss1(T), loss2(T);
  std::vector<uint16_t> grad16(T * V, 0xffff);
  ops::cross_entropy(Context{}, {.logits = in_place.data(), .targets = targets.data(), .loss = loss1.data(), .T = T,
                                 .V = V, .grad_scale = 0.5f});
  ops::cross_entropy(Context{}, {.logits = kept.data(), .targets = targets.data(), .loss = loss2.data(), .T = T,
                                 .V = V, .grad_scale = 0.5f, .dlogits_bf16 = grad16.data()});
  EXPECT_EQ(loss1, loss2);
  EXPECT_EQ(kept, original);
  for (int64_t i = 0; i < T * V; ++i) ASSERT_EQ(grad16[i], f32_to_bf16(in_place[i])) << i;
}

// linear_backward with dy_bf16 is linear_backward with that gradient widened to fp32 (strided rows).
TEST(TrainOpsLinear, BackwardFromABf16GradientIsTheWidenedOne) {
  const int64_t M = 9, N = 6, K = 5, dys = 8;
  const auto dy = randn(M * dys, 73), x = randn(M * K, 74), w = randn(N * K, 75);
  std::vector<uint16_t> dy16(dy.size());
  std::vector<float> widened(dy.size());
  for (size_t i = 0; i < dy.size(); ++i) widened[i] = bf16_to_f32(dy16[i] = f32_to_bf16(dy[i]));
  std::vector<float> dx1(M * K), dx2(M * K), dw1(N * K, 1.0f), dw2(N * K, 1.0f), db1(N), db2(N);
  ops::linear_backward(Context{}, {.dy = widened.data(), .x = x.data(), .w = w.data(), .dx = dx1.data(),
                                   .dw = dw1.data(), .dbias = db1.data(), .M = M, .N = N, .K = K, .dy_stride = dys,
                                   .accumulate_dw = true});
  ops::linear_backward(Context{}, {.x = x.data(), .w = w.data(), .dx = dx2.data(), .dw = dw2.data(),
                                   .dbias = db2.data(), .M = M, .N = N, .K = K, .dy_stride = dys,
                                   .accumulate_dw = true, .dy_bf16 = dy16.data()});
  EXPECT_EQ(dx1, dx2);
  EXPECT_EQ(dw1, dw2);
  EXPECT_EQ(db1, db2);
  test::expect_error(
      [&] {
        ops::linear_backward(Context{}, {.dy = widened.data(), .x = x.data(), .w = w.data(), .dw = dw2.data(), .M = M,
                                         .N = N, .K = K, .dy_stride = dys, .dy_bf16 = dy16.data()});
      },
      {"linear_backward", "exactly one of dy and dy_bf16"});
}

TEST(TrainOpsCrossEntropy, TargetOutsideVocabularyIsAnError) {
  auto logits = randn(3 * 5, 71);
  const auto original = logits;
  const std::vector<int32_t> targets = {1, 4, 5};
  std::vector<float> loss(3);
  test::expect_error(
      [&] {
        ops::cross_entropy(Context{}, {.logits = logits.data(), .targets = targets.data(), .loss = loss.data(),
                                       .T = 3, .V = 5});
      },
      {"cross_entropy", "row 2", "target id 5", "5 entries"});
  EXPECT_EQ(logits, original);  // checked before anything is written
}

// ---------------------------------------------------------------- axpby, sum_squares

TEST(TrainOpsElementwise, AxpbyIncludingBetaZero) {
  const auto x = randn(17, 80);
  auto y = randn(17, 81);
  const auto y0 = y;
  ops::axpby(Context{}, {.x = x.data(), .y = y.data(), .n = 17, .alpha = 0.5f, .beta = -1.5f});
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], 0.5 * x[i] - 1.5 * y0[i], 1e-6 * (1 + std::abs(y0[i])));
  std::vector<float> garbage(17, kNaN);
  ops::axpby(Context{}, {.x = x.data(), .y = garbage.data(), .n = 17, .alpha = 2.0f, .beta = 0.0f});
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(garbage[i], 2.0f * x[i]);  // NaN in y not read
}

TEST(TrainOpsElementwise, SumSquaresInDouble) {
  // A million unit terms plus one large one: an fp32 running sum is off by ~1e-3 relative here.
  auto x = randn(1000003, 82);
  x[17] = 3000.0f;
  double want = 0.0;
  for (float v : x) want += static_cast<double>(v) * v;
  float out = kNaN;
  ops::sum_squares(Context{}, {.x = x.data(), .out = &out, .n = static_cast<int64_t>(x.size())});
  EXPECT_NEAR(out, want, 1e-7 * want);  // one fp32 rounding of the double sum
  out = 2.5f;
  ops::sum_squares(Context{}, {.x = x.data(), .out = &out, .n = 3, .accumulate = true});
  EXPECT_NEAR(out, 2.5 + double(x[0]) * x[0] + double(x[1]) * x[1] + double(x[2]) * x[2], 1e-6);
}

// ---------------------------------------------------------------- adamw

TEST(TrainOpsAdamW, MatchesTorchFormulaOverSteps) {
  const int64_t n = 11;
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
  auto param = randn(n, 90);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  std::vector<double> pd = to_double(param), md(n, 0.0), vd(n, 0.0);
  for (int64_t step = 1; step <= 6; ++step) {
    auto grad = randn(n, 100 + step);
    grad[0] = 0.0f;                   // only the decay moves it
    grad[1] = 1e-7f * grad[1];        // sqrt(v) comparable to eps
    grad[2] = 1e3f * grad[2];         // large
    if (step % 2) grad[3] = 0.0f;     // intermittent
    ops::adamw(Context{}, {.param = param.data(), .grad = grad.data(), .m = m.data(), .v = v.data(), .n = n,
                           .step = step, .lr = lr, .beta1 = b1, .beta2 = b2, .eps = eps, .weight_decay = wd,
                           .grad_scale = gs});
    // torch.optim.AdamW, single-tensor path, in double.
    const double bc1 = 1.0 - std::pow(double(b1), step), bc2 = 1.0 - std::pow(double(b2), step);
    for (int64_t i = 0; i < n; ++i) {
      const double g = double(grad[i]) * gs;
      pd[i] *= 1.0 - double(lr) * wd;
      md[i] = b1 * md[i] + (1.0 - b1) * g;
      vd[i] = b2 * vd[i] + (1.0 - b2) * g * g;
      pd[i] -= lr / bc1 * md[i] / (std::sqrt(vd[i]) / std::sqrt(bc2) + eps);
    }
    // Elementwise fp32 arithmetic, a few roundings per step: 1e-5 relative, per element.
    for (int64_t i = 0; i < n; ++i) {
      SCOPED_TRACE(testing::Message() << "step " << step << " element " << i);
      EXPECT_NEAR(param[i], pd[i], 1e-5 * std::abs(pd[i]) + 1e-7);
      EXPECT_NEAR(m[i], md[i], 1e-5 * std::abs(md[i]) + 1e-30);
      EXPECT_NEAR(v[i], vd[i], 1e-5 * std::abs(vd[i]) + 1e-30);
    }
  }
}

TEST(TrainOpsAdamW, WritesTheBf16CopyOfTheUpdatedParams) {
  std::vector<float> param = randn(9, 95), grad = randn(9, 96), m(9, 0.0f), v(9, 0.0f);
  std::vector<uint16_t> copy(9, 0);
  ops::adamw(Context{}, {.param = param.data(), .grad = grad.data(), .m = m.data(), .v = v.data(), .n = 9,
                         .step = 1, .lr = 0.1f, .weight_decay = 0.1f, .param_bf16 = copy.data()});
  for (size_t i = 0; i < param.size(); ++i) EXPECT_EQ(copy[i], f32_to_bf16(param[i])) << i;
}

TEST(TrainOpsAdamW, FirstStepMovesEachParamByLr) {
  // Bias correction makes step 1 an update of lr * g / (|g| + eps'), i.e. lr * sign(g).
  std::vector<float> param = {1.0f, -2.0f, 0.5f}, grad = {3.0f, -0.01f, 1e-3f}, m(3, 0.0f), v(3, 0.0f);
  ops::adamw(Context{}, {.param = param.data(), .grad = grad.data(), .m = m.data(), .v = v.data(), .n = 3,
                         .step = 1, .lr = 0.1f});
  EXPECT_NEAR(param[0], 0.9f, 1e-6);
  EXPECT_NEAR(param[1], -1.9f, 1e-5);
  EXPECT_NEAR(param[2], 0.4f, 1e-5);
}

// Stochastic rounding is unbiased: the mean over many noise draws is the fp32 value, where
// round-to-nearest is off by up to half a bf16 step. It keeps NaN, infinities and finite maxima.
TEST(TrainOpsAdamW, StochasticBf16RoundingIsUnbiased) {
  for (float x : {1.0f + 0.3f / 128.0f, -3.7e-5f, 0.001f * 0.999f, 12345.678f}) {
    SCOPED_TRACE(x);
    const float lo = bf16_to_f32(static_cast<uint16_t>(std::bit_cast<uint32_t>(x) >> 16));
    const float step = bf16_to_f32(static_cast<uint16_t>((std::bit_cast<uint32_t>(x) >> 16) + 1)) - lo;
    double sum = 0.0;
    const int draws = 1 << 16;
    for (int k = 0; k < draws; ++k) {
      const float r = bf16_to_f32(ops::stochastic_round_bf16(x, ops::moment_noise(k + 1, 0)));
      ASSERT_TRUE(r == lo || r == lo + step) << r;  // one of the two neighbours
      sum += r;
    }
    EXPECT_NEAR(sum / draws, x, 0.01 * std::abs(step));
  }
  EXPECT_TRUE(std::isnan(bf16_to_f32(ops::stochastic_round_bf16(std::nanf(""), 0xffff))));
  EXPECT_EQ(bf16_to_f32(ops::stochastic_round_bf16(INFINITY, 0xffff)), INFINITY);
  EXPECT_TRUE(std::isfinite(bf16_to_f32(ops::stochastic_round_bf16(3.4e38f, 0xffff))));
}

// bf16 moments at beta2 = 0.999 follow the fp32 optimizer: with round-to-nearest, v * 0.999 rounds
// back to v once v is about a third of g^2, and after 3000 steps v is 43% off its fp32 value (a
// numpy emulation of this loop). Stochastic rounding is unbiased but noisy: each rounding adds
// ~0.16% of v, which v keeps for ~1/(1 - beta2^2) = 500 steps, so ~3.7% rms is expected here.
TEST(TrainOpsAdamW, Bf16MomentsTrackFp32Moments) {
  const int64_t n = 64, steps = 3000;
  const std::vector<float> p0 = randn(n, 97);
  std::vector<float> p32 = p0, p16 = p0, m(n, 0.0f), v(n, 0.0f);
  std::vector<uint16_t> m16(n, 0), v16(n, 0);
  std::vector<float> grad(n);
  for (int64_t step = 1; step <= steps; ++step) {
    for (int64_t i = 0; i < n; ++i) grad[i] = 0.01f * (1.0f + 0.5f * std::sin(0.37f * i + 0.01f * step));
    const ops::AdamWParams common{.grad = grad.data(), .n = n, .step = step, .lr = 1e-4f, .beta1 = 0.9f,
                                  .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f};
    ops::AdamWParams a = common, b = common;
    a.param = p32.data(), a.m = m.data(), a.v = v.data();
    b.param = p16.data(), b.m_bf16 = m16.data(), b.v_bf16 = v16.data(), b.offset = 1000;
    ops::adamw(Context{}, a);
    ops::adamw(Context{}, b);
  }
  double dv = 0.0, vn = 0.0, dm = 0.0, mn = 0.0, dp = 0.0, pn = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    dv += std::pow(bf16_to_f32(v16[i]) - v[i], 2.0), vn += double(v[i]) * v[i];
    dm += std::pow(bf16_to_f32(m16[i]) - m[i], 2.0), mn += double(m[i]) * m[i];
    dp += std::pow(p16[i] - p32[i], 2.0), pn += std::pow(p32[i] - p0[i], 2.0);  // against the total update
  }
  EXPECT_LE(std::sqrt(dv / vn), 0.08) << "second moment";
  EXPECT_LE(std::sqrt(dm / mn), 0.02) << "first moment";
  EXPECT_LE(std::sqrt(dp / pn), 0.02) << "parameter updates";
}

TEST(TrainOpsAdamW, Bf16MomentsAreReproducibleAndWriteTheCopy) {
  std::vector<float> grad = randn(33, 98), p1 = randn(33, 99), p2 = p1;
  std::vector<uint16_t> m1(33, 0), v1(33, 0), m2(33, 0), v2(33, 0), copy(33, 0);
  for (int64_t step = 1; step <= 3; ++step) {
    ops::adamw(Context{}, {.param = p1.data(), .grad = grad.data(), .n = 33, .step = step, .lr = 0.01f,
                           .m_bf16 = m1.data(), .v_bf16 = v1.data()});
    ops::adamw(Context{}, {.param = p2.data(), .grad = grad.data(), .n = 33, .step = step, .lr = 0.01f,
                           .param_bf16 = copy.data(), .m_bf16 = m2.data(), .v_bf16 = v2.data()});
  }
  EXPECT_EQ(p1, p2);
  EXPECT_EQ(m1, m2);
  EXPECT_EQ(v1, v2);
  for (size_t i = 0; i < p2.size(); ++i) EXPECT_EQ(copy[i], f32_to_bf16(p2[i])) << i;
}

TEST(TrainOpsAdamW, RejectsBadParams) {
  std::vector<float> b(4);
  test::expect_error(
      [&] {
        ops::adamw(Context{}, {.param = b.data(), .grad = b.data(), .m = b.data(), .v = b.data(), .n = 1, .step = 0});
      },
      {"adamw", "1-based", "0"});
  test::expect_error(
      [&] {
        ops::adamw(Context{}, {.param = b.data(), .grad = b.data(), .m = b.data(), .v = b.data(), .n = 1,
                               .beta2 = 1.0f});
      },
      {"adamw", "beta2=1"});
  test::expect_error([&] { ops::adamw(Context{}, {.param = b.data(), .n = 1}); }, {"adamw", "null pointer"});
  std::vector<uint16_t> h(4);
  test::expect_error(
      [&] {
        ops::adamw(Context{}, {.param = b.data(), .grad = b.data(), .m = b.data(), .v = b.data(), .n = 1,
                               .m_bf16 = h.data(), .v_bf16 = h.data()});
      },
      {"adamw", "fp32 moments", "bf16 moments"});
  test::expect_error(
      [&] {
        ops::adamw(Context{}, {.param = b.data(), .grad = b.data(), .m = b.data(), .n = 1, .v_bf16 = h.data()});
      },
      {"adamw", "expected fp32 moments"});
}

// Batched copy2d: the MLA layers copy the one shared rope key into every head's key with a source
// batch stride of 0. Every element is checked by index, and the gaps between copies stay untouched.
TEST(Copy2d, BatchedCopiesBroadcastAndKeepGaps) {
  const int64_t rows = 3, cols = 2, batch = 4, src_stride = 5, dst_stride = 11, dst_batch = 3;
  std::vector<float> src(rows * src_stride * 2);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i);
  for (const int64_t src_batch : {int64_t{0}, int64_t{1}}) {  // broadcast, then distinct sources
    std::vector<float> dst(rows * dst_stride, -1.0f);
    ops::copy2d(Context{}, {.src = src.data(), .dst = dst.data(), .rows = rows, .cols = cols, .src_stride = src_stride,
                            .dst_stride = dst_stride, .batch = batch, .src_batch_stride = src_batch,
                            .dst_batch_stride = dst_batch});
    std::vector<float> want(dst.size(), -1.0f);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          want[b * dst_batch + r * dst_stride + c] = src[b * src_batch + r * src_stride + c];
    EXPECT_EQ(dst, want) << "source batch stride " << src_batch;
  }
  std::vector<float> dst(4);
  test::expect_error(
      [&] {
        ops::copy2d(Context{}, {.src = src.data(), .dst = dst.data(), .rows = 1, .cols = 2, .src_stride = 2,
                                .dst_stride = 2, .batch = 0});
      },
      {"copy2d", "batch 0"});
}

}  // namespace
}  // namespace dsv
