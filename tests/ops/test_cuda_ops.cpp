// Each CUDA op against its CPU twin on random inputs, including awkward sizes. Runs on the GPU host
// only (ctest label "gpu"); CI builds it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <tuple>
#include <random>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "backends/cuda/cuda_ops.h"
#include "cuda_test_util.h"

namespace dsv::ops {
namespace {

using namespace test;
using DeviceBuffer = Dev<float>;

class CudaOps : public CudaTest {};

TEST_F(CudaOps, DeviceIsHopper) {
  cuda::DeviceInfo info;
  CUDA_OK(cuda::query_device(0, &info));
  std::printf("device: %s, %d SMs, sm_%d%d, %.1f GiB\n", info.name.c_str(), info.sm_count, info.major, info.minor,
              info.total_memory / 1073741824.0);
  EXPECT_EQ(info.major, 9) << "built for sm_90a";
}

TEST_F(CudaOps, RmsNormMatchesCpu) {
  for (auto [rows, dim] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {17, 512}, {64, 7168}, {5, 1537}}) {
    SCOPED_TRACE(testing::Message() << rows << "x" << dim);
    const auto x = randn(rows * dim, rows * 31 + dim), w = randn(dim, dim, 1.0f);
    std::vector<float> want(x.size());
    cpu::rmsnorm({.x = x.data(), .weight = w.data(), .y = want.data(), .rows = rows, .dim = dim, .eps = 1e-6f});
    DeviceBuffer dx(x), dw(w), dy(std::vector<float>(x.size(), NAN));  // poisoned output
    CUDA_OK(cuda::rmsnorm({.x = dx.ptr, .weight = dw.ptr, .y = dy.ptr, .rows = rows, .dim = dim, .eps = 1e-6f}, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dy.download(), want), 1e-6);
  }
}

TEST_F(CudaOps, AddRmsNormMatchesCpu) {
  for (auto [rows, dim] : {std::pair<int64_t, int64_t>{1, 2048}, {3, 7}, {64, 7168}, {5, 1537}}) {
    SCOPED_TRACE(testing::Message() << rows << "x" << dim);
    const auto x = randn(rows * dim, rows + dim), d = randn(rows * dim, rows + dim + 1), w = randn(dim, dim, 1.0f);
    std::vector<float> want_x = x, want_y(x.size());
    cpu::add_rmsnorm({.x = want_x.data(), .delta = d.data(), .weight = w.data(), .y = want_y.data(), .rows = rows,
                      .dim = dim, .eps = 1e-6f});
    DeviceBuffer dx(x), dd(d), dw(w), dy(std::vector<float>(x.size(), NAN));
    CUDA_OK(cuda::add_rmsnorm({.x = dx.ptr, .delta = dd.ptr, .weight = dw.ptr, .y = dy.ptr, .rows = rows, .dim = dim,
                               .eps = 1e-6f}, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(dx.download(), want_x);  // fp32 adds: the same bits
    EXPECT_LE(rel_l2(dy.download(), want_y), 1e-6);
  }
}

TEST_F(CudaOps, SwigluMatchesCpu) {
  for (int64_t n : {1, 31, 4096, 1000003}) {
    const auto g = randn(n, n), u = randn(n, n + 1);
    std::vector<float> want(n);
    cpu::swiglu({.gate = g.data(), .up = u.data(), .out = want.data(), .n = n});
    DeviceBuffer dg(g), du(u), dout(std::vector<float>(n, NAN));
    CUDA_OK(cuda::swiglu({.gate = dg.ptr, .up = du.ptr, .out = dout.ptr, .n = n}, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dout.download(), want), 1e-6) << n;  // __expf: ~2 ulp
  }
}


// cuBLASLt, and up to 8 rows with K % 8 == 0, aligned rows and K <= 8192 the exact fp32 GEMV kernels
// (the router shape 1 x 64 x 2048, bias + accumulate with padded rows, the longest K, 8 rows, and one K
// past the limit, which goes to cuBLASLt). A bf16 rounding anywhere would miss 1e-5 by far.
TEST_F(CudaOps, LinearMatchesCpu) {
  struct Case { int64_t M, N, K; bool bias, accumulate; int64_t x_pad, y_pad; };
  for (const Case& c : {Case{1, 1, 1, false, false, 0, 0}, Case{7, 33, 129, true, false, 0, 0},
                        Case{64, 576, 2048, false, true, 0, 0}, Case{3, 50, 40, true, true, 5, 9},
                        Case{129, 255, 17, false, false, 0, 3}, Case{1, 64, 2048, false, false, 0, 0},
                        Case{5, 100, 1000, true, true, 4, 3}, Case{2, 17, 8192, true, false, 0, 0},
                        Case{8, 300, 512, false, false, 0, 0}, Case{1, 40, 8200, false, false, 0, 0}}) {
    SCOPED_TRACE(testing::Message() << c.M << "x" << c.N << "x" << c.K);
    const int64_t xs = c.K + c.x_pad, ys = c.N + c.y_pad;
    const auto x = randn(c.M * xs, 1 + c.M), w = randn(c.N * c.K, 2 + c.N), b = randn(c.N, 3);
    auto want = randn(c.M * ys, 4);  // accumulate adds onto this
    DeviceBuffer dx(x), dw(w), db(b), dy(want);
    const LinearParams cpu_p{.x = x.data(), .w = w.data(), .bias = c.bias ? b.data() : nullptr, .y = want.data(),
                             .M = c.M, .N = c.N, .K = c.K, .x_stride = xs, .y_stride = ys, .accumulate = c.accumulate};
    cpu::linear(cpu_p);
    LinearParams gpu_p = cpu_p;
    gpu_p.x = dx.ptr;
    gpu_p.w = dw.ptr;
    gpu_p.bias = c.bias ? db.ptr : nullptr;
    gpu_p.y = dy.ptr;
    CUDA_OK(cuda::linear(gpu_p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dy.download(), want), 1e-5);  // fp32 products, different summation order
  }
}

TEST_F(CudaOps, BatchedLinearMatchesCpu) {
  // Absorbed-MLA shapes: H heads, per-head weights inside one kv_b_proj matrix, strided rows.
  for (bool transposed : {true, false}) {
    const int64_t H = 5, T = 3, Dn = 16, Dv = 12, C = 40, R = 8;
    const auto q = randn(T * H * (Dn + R), 31), kvb = randn(H * (Dn + Dv) * C, 32);
    const int64_t M = T, N = transposed ? C : Dv, K = transposed ? Dn : C;
    std::vector<float> want(T * H * (C + R), 0.0f);
    const auto x = transposed ? q : randn(T * H * C, 33);
    LinearParams p{.x = x.data(), .w = kvb.data() + (transposed ? 0 : Dn * C), .y = want.data(), .M = M, .N = N,
                   .K = K, .x_stride = transposed ? H * (Dn + R) : H * C, .y_stride = H * (C + R),
                   .w_transposed = transposed, .batch = H, .x_batch_stride = transposed ? Dn + R : C,
                   .w_batch_stride = (Dn + Dv) * C, .y_batch_stride = C + R};
    cpu::linear(p);
    DeviceBuffer dx(x), dw(kvb), dy(std::vector<float>(want.size(), 0.0f));
    p.x = dx.ptr;
    p.w = dw.ptr + (transposed ? 0 : Dn * C);
    p.y = dy.ptr;
    CUDA_OK(cuda::linear(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dy.download(), want), 1e-5) << (transposed ? "q . W_UK" : "o . W_UV^T");
  }
}

TEST_F(CudaOps, MoeExpertsMatchCpu) {
  struct Case { int64_t T, K, E, D, F; };
  for (const Case& c : {Case{1, 6, 64, 2048, 1408}, Case{3, 8, 16, 96, 40}, Case{1, 1, 2, 5, 3}}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " K" << c.K << " D" << c.D << " F" << c.F);
    std::vector<std::vector<float>> gate, up, down;
    for (int64_t e = 0; e < c.E; ++e) {
      gate.push_back(randn(c.F * c.D, 100 + e));
      up.push_back(randn(c.F * c.D, 200 + e));
      down.push_back(randn(c.D * c.F, 300 + e));
    }
    const auto x = randn(c.T * c.D, 7), w = randn(c.T * c.K, 8);
    std::vector<int32_t> idx(c.T * c.K);
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int32_t>((i * 7 + 3) % c.E);
    std::vector<const float*> hg, hu, hd;
    for (int64_t e = 0; e < c.E; ++e) {
      hg.push_back(gate[e].data());
      hu.push_back(up[e].data());
      hd.push_back(down[e].data());
    }
    std::vector<float> scratch(c.T * c.K * (c.F + c.D)), want(c.T * c.D);
    MoeExpertsParams p{.x = x.data(), .indices = idx.data(), .weights = w.data(), .gate = hg.data(), .up = hu.data(),
                       .down = hd.data(), .scratch = scratch.data(), .out = want.data(), .T = c.T, .K = c.K,
                       .D = c.D, .F = c.F};
    cpu::moe_experts(p);
    std::vector<std::unique_ptr<DeviceBuffer>> keep;
    std::vector<const float*> dg, du, dd;
    for (int64_t e = 0; e < c.E; ++e) {
      keep.push_back(std::make_unique<DeviceBuffer>(gate[e]));
      dg.push_back(keep.back()->ptr);
      keep.push_back(std::make_unique<DeviceBuffer>(up[e]));
      du.push_back(keep.back()->ptr);
      keep.push_back(std::make_unique<DeviceBuffer>(down[e]));
      dd.push_back(keep.back()->ptr);
    }
    const float **tg = nullptr, **tu = nullptr, **td = nullptr;
    int32_t* didx = nullptr;
    CUDA_OK(cudaMalloc(&tg, c.E * sizeof(float*)));
    CUDA_OK(cudaMalloc(&tu, c.E * sizeof(float*)));
    CUDA_OK(cudaMalloc(&td, c.E * sizeof(float*)));
    CUDA_OK(cudaMalloc(&didx, idx.size() * 4));
    CUDA_OK(cudaMemcpy(tg, dg.data(), c.E * sizeof(float*), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(tu, du.data(), c.E * sizeof(float*), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(td, dd.data(), c.E * sizeof(float*), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(didx, idx.data(), idx.size() * 4, cudaMemcpyHostToDevice));
    DeviceBuffer dx(x), dw(w), dscratch(scratch), dout(std::vector<float>(want.size(), NAN));
    p.x = dx.ptr;
    p.indices = didx;
    p.weights = dw.ptr;
    p.gate = tg;
    p.up = tu;
    p.down = td;
    p.scratch = dscratch.ptr;
    p.out = dout.ptr;
    CUDA_OK(cuda::moe_experts(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dout.download(), want), 1e-5);
    cudaFree(tg);
    cudaFree(tu);
    cudaFree(td);
    cudaFree(didx);
  }
}

TEST_F(CudaOps, RopeMatchesCpu) {
  for (RopeLayout layout : {RopeLayout::Interleaved, RopeLayout::HalfSplit})
    for (auto [T, H, R] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 2}, {5, 16, 64}, {33, 3, 8}}) {
      const int64_t Dn = 7, stride = Dn + R;
      auto x = randn(T * H * stride, T * H + R);
      const auto cos = randn(T * R / 2, 11), sin = randn(T * R / 2, 12);
      DeviceBuffer dx(x), dc(cos), ds(sin);
      RopeParams p{.x = x.data(), .cos = cos.data(), .sin = sin.data(), .tokens = T, .heads = H, .rope_dim = R,
                   .token_stride = H * stride, .head_stride = stride, .offset = Dn, .layout = layout};
      cpu::rope(p);
      p.x = dx.ptr;
      p.cos = dc.ptr;
      p.sin = ds.ptr;
      CUDA_OK(cuda::rope(p, 0));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_LE(rel_l2(dx.download(), x), 1e-6);
      // out of place (absorbed MLA's q rope dims into the latent query): same values, x untouched
      const int64_t C = 9, ystride = C + R;
      const auto x_in = dx.download();
      DeviceBuffer dy(std::vector<float>(T * H * ystride, 5.0f));
      p.x = dx.ptr;
      p.y = dy.ptr;
      p.y_token_stride = H * ystride;
      p.y_head_stride = ystride;
      p.y_offset = C;
      CUDA_OK(cuda::rope(p, 0));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_EQ(dx.download(), x_in);
      auto want_y = std::vector<float>(T * H * ystride, 5.0f);
      RopeParams q = p;
      std::vector<float> host_x = x_in;
      q.x = host_x.data();
      q.cos = cos.data();
      q.sin = sin.data();
      q.y = want_y.data();
      cpu::rope(q);
      EXPECT_LE(rel_l2(dy.download(), want_y), 1e-6);
    }
}

// Rows of 64 floats copied into 192-float head slots, as MLA assembles keys: strides that allow float4
// moves (68) and strides that do not (70); one source for all copies (MLA's rope key) or one each; and
// zero fill (null source).
// The rope tables of a long prompt (and of positions far out, where the angles are large): the device's
// sincosf against the host's cos/sin, within a few float ulps of values of magnitude <= factor.
TEST_F(CudaOps, RopeTableMatchesCpu) {
  for (auto [first, T, half, negate] : {std::tuple<int64_t, int64_t, int64_t, bool>{0, 4100, 32, false},
                                        {160000, 37, 3, true}, {5, 1, 1, false}}) {
    SCOPED_TRACE(testing::Message() << "first " << first << " T " << T << " half " << half);
    std::vector<float> inv(half);
    for (int64_t i = 0; i < half; ++i) inv[i] = std::pow(10000.0f, -static_cast<float>(i) / static_cast<float>(half));
    const float factor = 1.25f;
    std::vector<float> cos(T * half), sin(T * half);
    RopeTableParams p{.inv_freq = inv.data(), .cos = cos.data(), .sin = sin.data(), .first = first, .T = T,
                      .half = half, .factor = factor, .negate_sin = negate};
    cpu::rope_table(p);
    DeviceBuffer dinv(inv), dc(std::vector<float>(T * half, 9.0f)), ds(std::vector<float>(T * half, 9.0f));
    p.inv_freq = dinv.ptr;
    p.cos = dc.ptr;
    p.sin = ds.ptr;
    CUDA_OK(cuda::rope_table(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    const auto gc = dc.download(), gs = ds.download();
    double worst = 0;
    for (size_t i = 0; i < cos.size(); ++i)
      worst = std::max({worst, std::fabs(static_cast<double>(gc[i]) - cos[i]), std::fabs(static_cast<double>(gs[i]) - sin[i])});
    EXPECT_LE(worst, 8 * factor * 0x1p-24);  // a few float ulps at magnitude <= 1 (before the factor)
  }
}

TEST_F(CudaOps, BatchedCopy2dMatchesCpu) {
  for (const int64_t src_stride : {int64_t{70}, int64_t{68}})
    for (const int64_t src_batch : {int64_t{0}, src_stride, int64_t{-1}}) {
      const int64_t rows = 37, cols = 64, batch = 5, dst_stride = 5 * 192, dst_batch = 192;
      const auto src = randn(rows * src_stride + batch * src_stride, 3);
      auto dst = randn(rows * dst_stride, 4);
      DeviceBuffer dsrc(src), ddst(dst);
      Copy2dParams p{.src = src_batch < 0 ? nullptr : src.data(), .dst = dst.data(), .rows = rows, .cols = cols,
                     .src_stride = src_stride, .dst_stride = dst_stride, .batch = batch,
                     .src_batch_stride = src_batch < 0 ? 0 : src_batch, .dst_batch_stride = dst_batch};
      cpu::copy2d(p);
      p.src = src_batch < 0 ? nullptr : dsrc.ptr;
      p.dst = ddst.ptr;
      CUDA_OK(cuda::copy2d(p, 0));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_EQ(ddst.download(), dst) << "src stride " << src_stride << ", src batch stride " << src_batch;
    }
}

TEST_F(CudaOps, AttentionMatchesCpu) {
  struct Case { int64_t T, S, H, Hkv, Dqk, Dv; };
  // Expanded MLA (Hkv = H, 192/128 as the releases), absorbed decode over latent rows (Hkv = 1,
  // 576/512), and awkward small sizes.
  // Few query rows over more than 64 keys take the split-key decode kernels.
  for (const Case& c : {Case{9, 9, 4, 4, 192, 128}, Case{1, 300, 16, 1, 576, 512}, Case{3, 130, 5, 1, 37, 19},
                        Case{1, 1, 1, 1, 1, 1}, Case{17, 40, 2, 2, 24, 16},
                        Case{1, 4096, 16, 1, 576, 512} /* decode after a long prompt */,
                        Case{4, 1000, 3, 3, 40, 24} /* split keys, queries at different offsets */,
                        Case{2, 60000, 2, 1, 64, 32} /* split keys, many chunks */,
                        Case{16, 60000, 16, 1, 64, 32} /* beyond the shared-memory kernel: three-pass path */}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " S" << c.S << " H" << c.H << " Hkv" << c.Hkv);
    const int64_t row = c.Hkv == 1 ? c.Dqk : 0;  // absorbed: v is the first Dv values of each k row
    const auto q = randn(c.T * c.H * c.Dqk, 21), k = randn(c.S * c.Hkv * c.Dqk, 22), v = randn(c.S * c.Hkv * c.Dv, 23);
    std::vector<float> want(c.T * c.H * c.Dv);
    AttentionParams p{.q = q.data(), .k = k.data(), .v = row ? k.data() : v.data(), .out = want.data(), .T = c.T,
                      .S = c.S, .H = c.H, .Dqk = c.Dqk, .Dv = c.Dv, .Hkv = c.Hkv, .k_stride = row, .v_stride = row,
                      .scale = 1.0f / std::sqrt(static_cast<float>(c.Dqk))};
    cpu::attention(p);
    DeviceBuffer dq(q), dk(k), dv(v), dout(std::vector<float>(want.size(), NAN));
    p.q = dq.ptr;
    p.k = dk.ptr;
    p.v = row ? dk.ptr : dv.ptr;
    p.out = dout.ptr;
    CUDA_OK(cuda::attention(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dout.download(), want), 1e-5);
    // With the logsumexp requested (training): the per-row kernels, which keep it, even for shapes
    // that would take the split-key paths.
    std::vector<float> want_lse(c.T * c.H);
    AttentionParams host = p;
    host.q = q.data();
    host.k = k.data();
    host.v = row ? k.data() : v.data();
    host.out = want.data();
    host.lse = want_lse.data();
    cpu::attention(host);
    DeviceBuffer dlse(std::vector<float>(want_lse.size(), NAN)), dout2(std::vector<float>(want.size(), NAN));
    p.out = dout2.ptr;
    p.lse = dlse.ptr;
    CUDA_OK(cuda::attention(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dout2.download(), want), 1e-5) << "with lse";
    EXPECT_LE(rel_l2(dlse.download(), want_lse), 1e-6) << "lse";
  }
}

TEST_F(CudaOps, RouterMatchesCpu) {
  // ties: logits rounded to whole numbers, so many experts share a value (picked by lower index).
  struct Case { RouterKind kind; int64_t T, E, K, G, topk_group; bool norm, ties = false; };
  for (const Case& c : {Case{RouterKind::SigmoidNoauxGroups, 37, 256, 8, 8, 4, true},
                        Case{RouterKind::SigmoidNoauxGroups, 5, 64, 6, 1, 1, false},
                        Case{RouterKind::SoftmaxGreedy, 19, 64, 6, 1, 1, false},
                        Case{RouterKind::SoftmaxGroupLimited, 23, 160, 6, 8, 3, false},
                        Case{RouterKind::SoftmaxGroupLimited, 4, 6, 5, 3, 2, false},
                        Case{RouterKind::SigmoidNoauxGroups, 9, 64, 6, 1, 1, true, true},
                        Case{RouterKind::SoftmaxGreedy, 9, 33, 7, 1, 1, false, true},
                        Case{RouterKind::SigmoidNoauxGroups, 9, 96, 8, 4, 2, true, true},
                        // more experts than the block has threads (each ranks several), with ties
                        Case{RouterKind::SigmoidNoauxGroups, 3, 1024, 16, 16, 5, true, true},
                        Case{RouterKind::SoftmaxGreedy, 4, 600, 12, 1, 1, false, true}}) {
    SCOPED_TRACE(testing::Message() << "E" << c.E << " K" << c.K << " G" << c.G << " ties " << c.ties);
    auto logits = randn(c.T * c.E, c.E + c.K), bias = randn(c.E, 5);
    if (c.ties) {
      for (auto& v : logits) v = std::round(v);
      for (auto& v : bias) v = 0.0f;
    }
    std::vector<int32_t> want_idx(c.T * c.K);
    std::vector<float> want_w(c.T * c.K);
    RouterParams p{.logits = logits.data(), .correction_bias = bias.data(), .indices = want_idx.data(),
                   .weights = want_w.data(), .T = c.T, .E = c.E, .K = c.K, .n_group = c.G, .topk_group = c.topk_group,
                   .kind = c.kind, .norm_topk_prob = c.norm, .routed_scaling_factor = 2.5f};
    cpu::route(p);
    DeviceBuffer dl(logits), db(bias), dw(std::vector<float>(want_w.size(), NAN));
    int32_t* didx = nullptr;
    CUDA_OK(cudaMalloc(&didx, want_idx.size() * 4));
    p.logits = dl.ptr;
    p.correction_bias = db.ptr;
    p.indices = didx;
    p.weights = dw.ptr;
    CUDA_OK(cuda::route(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<int32_t> got_idx(want_idx.size());
    CUDA_OK(cudaMemcpy(got_idx.data(), didx, got_idx.size() * 4, cudaMemcpyDeviceToHost));
    cudaFree(didx);
    // Same experts in the same order (both select by value, ties to the lower index).
    EXPECT_EQ(got_idx, want_idx);
    EXPECT_LE(rel_l2(dw.download(), want_w), 1e-6);
  }
}
}  // namespace
}  // namespace dsv::ops
