// bf16 inference ops on the GPU against their CPU twins: bf16-weight linear (GEMV kernels for few
// rows, bf16 tensor cores for more, batched and transposed forms), routed experts with bf16 tables,
// attention over a bf16 latent cache (decode split-key and prefill kernels), and the casts.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "backends/cuda/cuda_ops.h"
#include "core/dtype.h"
#include "cuda_test_util.h"

namespace dsv::ops {
namespace {

using namespace test;

class CudaBf16 : public CudaTest {};

TEST_F(CudaBf16, CastMatchesCpuBitForBit) {
  auto x = randn(100003, 1, 0.0f, 1e3f);
  x[0] = NAN;
  x[1] = INFINITY;
  x[2] = 3.4e38f;
  x[3] = 1.0f + 1.0f / 256;
  std::vector<uint16_t> want(x.size());
  cpu::cast({.x = x.data(), .y = want.data(), .n = static_cast<int64_t>(x.size()), .to_bf16 = true});
  Dev<float> dx(x);
  Dev<uint16_t> dh(std::vector<uint16_t>(x.size(), 0));
  Dev<float> back(nans(x.size()));
  CUDA_OK(cuda::cast({.x = dx.ptr, .y = dh.ptr, .n = static_cast<int64_t>(x.size()), .to_bf16 = true}, 0));
  CUDA_OK(cuda::cast({.x = dh.ptr, .y = back.ptr, .n = static_cast<int64_t>(x.size()), .to_bf16 = false}, 0));
  CUDA_OK(cudaDeviceSynchronize());
  const auto got = dh.download();
  for (size_t i = 1; i < x.size(); ++i) ASSERT_EQ(got[i], want[i]) << i;
  EXPECT_TRUE(std::isnan(back.download()[0]));
  EXPECT_EQ(back.download()[5], bf16_to_f32(want[5]));
  // Aligned buffers take the four-per-thread kernel (and its tail: n % 4 = 3); one element in, the
  // scalar kernel: the same bits.
  Dev<uint16_t> dh2(std::vector<uint16_t>(x.size(), 0));
  CUDA_OK(cuda::cast({.x = dx.ptr + 1, .y = dh2.ptr + 1, .n = static_cast<int64_t>(x.size()) - 1, .to_bf16 = true}, 0));
  CUDA_OK(cudaDeviceSynchronize());
  const auto got2 = dh2.download();
  for (size_t i = 1; i < x.size(); ++i) ASSERT_EQ(got2[i], want[i]) << i;
}

TEST_F(CudaBf16, LinearMatchesCpu) {
  struct Case { int64_t M, N, K, batch; bool transposed, bias, accumulate; int64_t x_pad; };
  for (const Case& c : {Case{1, 2048, 2048, 1, false, false, false, 0},  // decode GEMV
                        Case{1, 577, 1536, 1, false, true, true, 4},     // odd N, strided x
                        Case{3, 40, 13, 1, false, true, false, 1},       // K % 8 != 0: scalar lanes
                        Case{3, 50, 777, 1, false, true, true, 0},       // split K, last slice scalar
                        Case{8, 300, 264, 1, false, false, true, 0},     // a full GEMV pass
                        Case{11, 129, 96, 1, false, true, false, 0},     // tensor cores
                        Case{257, 384, 512, 1, false, false, true, 8},   // prefill-sized
                        Case{1, 512, 128, 16, true, false, false, 64},   // q . W_UK per head (decode)
                        Case{20, 512, 128, 4, true, false, false, 64},   // the same, prefill
                        Case{5, 130, 40, 2, true, true, true, 8},        // transposed, split K, bias
                        Case{2, 37, 24, 3, true, true, true, 0},         // transposed, odd N: per-column
                        Case{1, 128, 512, 16, false, false, false, 0},   // o . W_UV^T per head
                        Case{9, 24, 40, 3, false, true, true, 0},
                        // weights loaded before the wait: 2 and 4 chunks per lane, past the limit, x unaligned
                        Case{3, 65, 2056, 1, false, false, false, 0},
                        Case{1, 33, 4096, 1, false, true, false, 0},
                        Case{2, 70, 7168, 1, false, true, true, 0},
                        Case{1, 100, 17000, 1, false, false, false, 0},
                        Case{1, 96, 1024, 1, false, false, false, 1},
                        Case{2, 64, 24, 2, true, false, true, 0},    // transposed, K <= 32
                        Case{2, 40, 10944, 1, false, true, false, 0}}) {  // 8 chunks per lane
    SCOPED_TRACE(testing::Message() << c.M << "x" << c.N << "x" << c.K << " batch " << c.batch
                                    << (c.transposed ? " transposed" : ""));
    const int64_t xs = c.K + c.x_pad, xbs = c.M * xs, wbs = c.N * c.K, ybs = c.M * c.N;
    const auto x = randn(c.batch * xbs, 1 + c.M), b = randn(c.batch * c.N, 3);
    const auto w = to_bf16(randn(c.batch * wbs, 2 + c.N));
    auto want = randn(c.batch * ybs, 4);
    Dev<float> dx(x), db(b), dy(want);
    Dev<uint16_t> dw(w);
    LinearParams p{.x = x.data(), .w_bf16 = w.data(), .bias = c.bias ? b.data() : nullptr, .y = want.data(),
                   .M = c.M, .N = c.N, .K = c.K, .x_stride = xs, .accumulate = c.accumulate,
                   .w_transposed = c.transposed, .batch = c.batch, .x_batch_stride = xbs, .w_batch_stride = wbs,
                   .y_batch_stride = ybs, .bias_batch_stride = c.N};
    cpu::linear(p);
    p.x = dx.ptr;
    p.w_bf16 = dw.ptr;
    p.bias = c.bias ? db.ptr : nullptr;
    p.y = dy.ptr;
    CUDA_OK(cuda::linear(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dy.download(), want), 1e-5);  // the same rounded operands, fp32 sums in another order
  }
}

// In bf16 mode, decode-sized products of fp32 weights (the router) round the weights in registers
// instead of casting them first: the CPU product of the bf16-rounded weights, up to summation order.
// Also past the register kernel's limits (unaligned x, K too long), where the cast path serves.
TEST_F(CudaBf16, Fp32WeightsInBf16ModeAreRoundedWeights) {
  struct Case { int64_t M, N, K, batch, x_pad; };
  for (const Case& c : {Case{1, 64, 2048, 1, 0}, Case{3, 33, 7168, 1, 0}, Case{9, 20, 96, 2, 4}, Case{2, 17, 512, 1, 1},
                        Case{1, 8, 40000, 1, 0}}) {
    SCOPED_TRACE(testing::Message() << c.M << "x" << c.N << "x" << c.K << " batch " << c.batch << " pad " << c.x_pad);
    const int64_t xs = c.K + c.x_pad, xbs = c.M * xs, wbs = c.N * c.K, ybs = c.M * c.N;
    const auto x = randn(c.batch * xbs, 31), w = randn(c.batch * wbs, 32), b = randn(c.batch * c.N, 33);
    const auto w16 = to_bf16(w);
    std::vector<float> want(c.batch * ybs);
    LinearParams p{.x = x.data(), .w_bf16 = w16.data(), .bias = b.data(), .y = want.data(), .M = c.M, .N = c.N,
                   .K = c.K, .x_stride = xs, .batch = c.batch, .x_batch_stride = xbs, .w_batch_stride = wbs,
                   .y_batch_stride = ybs, .bias_batch_stride = c.N};
    cpu::linear(p);
    Dev<float> dx(x), dw(w), db(b), dy(nans(want.size()));
    p.x = dx.ptr;
    p.w = dw.ptr;
    p.w_bf16 = nullptr;
    p.bias = db.ptr;
    p.y = dy.ptr;
    set_matmul_precision(MatmulPrecision::Bf16);
    const cudaError_t e = cuda::linear(p, 0);
    set_matmul_precision(MatmulPrecision::Fp32);
    CUDA_OK(e);
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dy.download(), want), 1e-5);
  }
}

// The gate and up products and the SwiGLU of an MLP: one GEMV kernel for up to 8 rows with aligned
// bf16 weights, the warp-specialized tensor-core kernel from kGatedTmaMinRows rows (bf16, no biases;
// tails of M, N and K past its 128 x 128 x 64 tiles), the unfused ops otherwise (more rows with
// biases, K % 8 != 0, fp32 weights); all against the CPU.
TEST_F(CudaBf16, GatedLinearMatchesCpu) {
  struct Case { int64_t M, N, K; bool bias, bf16; };
  for (const Case& c : {Case{1, 1408, 2048, false, true}, Case{3, 37, 1024, true, true}, Case{8, 10944, 2048, false, true},
                        Case{2, 65, 7168, true, true}, Case{2, 9, 36, true, true}, Case{20, 64, 256, true, true},
                        Case{1, 33, 512, true, false}, Case{cuda::kGatedTmaMinRows, 8, 8, false, true},
                        Case{600, 200, 136, false, true}, Case{1030, 2816, 2048, false, true},
                        Case{700, 72, 64, true, true}, Case{520, 40, 60, false, true}}) {
    SCOPED_TRACE(testing::Message() << c.M << "x" << c.N << "x" << c.K << (c.bf16 ? " bf16" : " fp32"));
    const auto x = randn(c.M * c.K, 51), g = randn(c.N * c.K, 52, 0.0f, 0.1f), u = randn(c.N * c.K, 53),
               bg = randn(c.N, 54), bu = randn(c.N, 55);
    const auto g16 = to_bf16(g), u16 = to_bf16(u);
    std::vector<float> want(c.M * c.N);
    GatedLinearParams p{.x = x.data(), .gate = c.bf16 ? nullptr : g.data(), .up = c.bf16 ? nullptr : u.data(),
                        .gate_bf16 = c.bf16 ? g16.data() : nullptr, .up_bf16 = c.bf16 ? u16.data() : nullptr,
                        .gate_bias = c.bias ? bg.data() : nullptr, .up_bias = c.bias ? bu.data() : nullptr,
                        .y = want.data(), .M = c.M, .N = c.N, .K = c.K};
    cpu::gated_linear(p);
    Dev<float> dx(x), dg(g), du(u), dbg(bg), dbu(bu), dy(nans(want.size()));
    Dev<uint16_t> dg16(g16), du16(u16);
    p.x = dx.ptr;
    p.gate = c.bf16 ? nullptr : dg.ptr;
    p.up = c.bf16 ? nullptr : du.ptr;
    p.gate_bf16 = c.bf16 ? dg16.ptr : nullptr;
    p.up_bf16 = c.bf16 ? du16.ptr : nullptr;
    p.gate_bias = c.bias ? dbg.ptr : nullptr;
    p.up_bias = c.bias ? dbu.ptr : nullptr;
    p.y = dy.ptr;
    CUDA_OK(cuda::gated_linear(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dy.download(), want), 1e-5);  // the same rounded operands, sums in another order
  }
}

TEST_F(CudaBf16, MoeExpertsMatchCpu) {
  struct Case { int64_t T, K, E, D, F; };
  for (const Case& c : {Case{1, 6, 64, 2048, 1408}, Case{3, 8, 16, 96, 40}, Case{2, 2, 3, 13, 7}}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " K" << c.K << " D" << c.D << " F" << c.F);
    std::vector<std::vector<uint16_t>> mats;  // gate, up, down per expert
    for (int64_t e = 0; e < c.E; ++e) {
      mats.push_back(to_bf16(randn(c.F * c.D, 100 + e, 0.0f, 0.05f)));
      mats.push_back(to_bf16(randn(c.F * c.D, 200 + e, 0.0f, 0.05f)));
      mats.push_back(to_bf16(randn(c.D * c.F, 300 + e, 0.0f, 0.05f)));
    }
    const auto x = randn(c.T * c.D, 7), w = randn(c.T * c.K, 8);
    std::vector<int32_t> idx(c.T * c.K);
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int32_t>((i * 7 + 3) % c.E);
    std::vector<const uint16_t*> hg, hu, hd, dg, du, dd;
    std::vector<std::unique_ptr<Dev<uint16_t>>> keep;
    for (int64_t e = 0; e < c.E; ++e) {
      hg.push_back(mats[3 * e].data());
      hu.push_back(mats[3 * e + 1].data());
      hd.push_back(mats[3 * e + 2].data());
      for (int j = 0; j < 3; ++j) keep.push_back(std::make_unique<Dev<uint16_t>>(mats[3 * e + j]));
      dg.push_back(keep[3 * e]->ptr);
      du.push_back(keep[3 * e + 1]->ptr);
      dd.push_back(keep[3 * e + 2]->ptr);
    }
    std::vector<float> scratch(c.T * c.K * (c.F + c.D)), want(c.T * c.D);
    MoeExpertsParams p{.x = x.data(), .indices = idx.data(), .weights = w.data(), .gate_bf16 = hg.data(),
                       .up_bf16 = hu.data(), .down_bf16 = hd.data(), .scratch = scratch.data(), .out = want.data(),
                       .T = c.T, .K = c.K, .D = c.D, .F = c.F};
    cpu::moe_experts(p);
    Dev<const uint16_t*> tg(dg), tu(du), td(dd);
    Dev<int32_t> didx(idx);
    Dev<float> dx(x), dw(w), dscratch(scratch), dout(nans(want.size()));
    p.x = dx.ptr;
    p.indices = didx.ptr;
    p.weights = dw.ptr;
    p.gate_bf16 = tg.ptr;
    p.up_bf16 = tu.ptr;
    p.down_bf16 = td.ptr;
    p.scratch = dscratch.ptr;
    p.out = dout.ptr;
    CUDA_OK(cuda::moe_experts(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dout.download(), want), 1e-5);
  }
}

TEST_F(CudaBf16, AbsorbedAttentionOverBf16CacheMatchesCpu) {
  // q_lat [T, H, C + R] over latent rows [S, C + R] (k) whose first C values are v, as MLA decodes.
  // Shapes outside latent_decode_bf16 (several queries per problem, Dv not a multiple of 16) take the
  // fp32-arithmetic kernels: the CPU's sums in another order.
  struct Case { int64_t T, S, H, C, R; };
  for (const Case& c : {Case{5, 300, 3, 24, 8}, Case{64, 64, 2, 16, 8}, Case{1, 40, 4, 24, 8}}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " S" << c.S << " H" << c.H);
    const int64_t W = c.C + c.R;
    const auto q = randn(c.T * c.H * W, 11, 0.0f, 0.1f);
    const auto rows = to_bf16(randn(c.S * W, 12));
    std::vector<float> want(c.T * c.H * c.C);
    AttentionParams p{.q = q.data(), .k_bf16 = rows.data(), .v_bf16 = rows.data(), .out = want.data(), .T = c.T,
                      .S = c.S, .H = c.H, .Dqk = W, .Dv = c.C, .Hkv = 1, .k_stride = W, .v_stride = W,
                      .scale = 0.07f};
    cpu::attention(p);
    Dev<float> dq(q), dout(nans(want.size()));
    Dev<uint16_t> drows(rows);
    p.q = dq.ptr;
    p.k_bf16 = drows.ptr;
    p.v_bf16 = drows.ptr;
    p.out = dout.ptr;
    ASSERT_FALSE(cuda::latent_decode_bf16_applies(p, p.k_bf16, p.v_bf16, 1, W, W));
    CUDA_OK(cuda::attention(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dout.download(), want), 1e-5);
  }
}

// The tensor-core latent decode (latent_decode_bf16.cu) carries q and the softmax weights P as bf16
// pairs (hi + lo, 16 significant bits) and accumulates in fp32: the same bound as the fp32 kernels.
// A problem with one key has the weight 1 exactly: its output is that row bit for bit. Shapes: the
// releases' 16 heads x (512 + 64), head groups with absent heads (3, 17, 40), key counts that leave
// blocks of a cluster empty or need several clusters (1 .. 9000), batches of different lengths, a
// peaked softmax (large scale), the smallest rows (16 + 16), and 40 problems whose single blocks walk
// up to 47 tiles through the ring of key tiles in shared memory.
TEST_F(CudaBf16, LatentDecodeOnTensorCoresMatchesCpu) {
  struct Case { int64_t S, H, C, R; float scale; std::vector<int32_t> lengths; };
  // A batch-64-like case: one block per problem walks dozens of tiles through the ring of key tiles.
  std::vector<int32_t> many(40);
  for (size_t i = 0; i < many.size(); ++i) many[i] = static_cast<int32_t>(1 + (i * 397) % 1500);
  many[0] = 1500;
  const std::vector<Case> cases = {
      {1500, 16, 512, 64, 0.07f, many},
      {700, 16, 512, 64, 0.07f, {}},         {577, 16, 512, 64, 0.07f, {1, 577, 64, 65, 300, 33}},
      {40, 3, 32, 8, 0.07f, {}},             {33, 17, 64, 16, 0.3f, {33, 1, 32, 2}},
      {9000, 2, 16, 8, 0.07f, {9000, 4000}}, {2000, 40, 128, 32, 0.07f, {2000, 31}},
      {300, 16, 512, 64, 2.0f, {300, 299}},  {1, 5, 16, 16, 0.07f, {}}};
  for (const Case& c : cases) {
    const int64_t B = c.lengths.empty() ? 1 : static_cast<int64_t>(c.lengths.size()), W = c.C + c.R;
    SCOPED_TRACE(testing::Message() << "B" << B << " S" << c.S << " H" << c.H << " C" << c.C << " R" << c.R);
    const auto q = randn(B * c.H * W, 13, 0.0f, 0.1f);
    const auto rows = to_bf16(randn(B * c.S * W, 14));
    std::vector<float> want(B * c.H * c.C);
    AttentionParams p{.q = q.data(), .k_bf16 = rows.data(), .v_bf16 = rows.data(), .out = want.data(), .T = 1,
                      .S = c.S, .H = c.H, .Dqk = W, .Dv = c.C, .Hkv = 1, .k_stride = W, .v_stride = W,
                      .scale = c.scale, .batch = B, .k_batch_stride = c.S * W, .v_batch_stride = c.S * W,
                      .kv_lengths = c.lengths.empty() ? nullptr : c.lengths.data()};
    cpu::attention(p);
    Dev<float> dq(q), dout(nans(want.size()));
    Dev<uint16_t> drows(rows);
    Dev<int32_t> dlen(c.lengths.empty() ? std::vector<int32_t>{0} : c.lengths);
    p.q = dq.ptr;
    p.k_bf16 = p.v_bf16 = drows.ptr;
    p.out = dout.ptr;
    if (!c.lengths.empty()) p.kv_lengths = dlen.ptr;
    ASSERT_TRUE(cuda::latent_decode_bf16_applies(p, p.k_bf16, p.v_bf16, 1, W, W));
    CUDA_OK(cuda::attention(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    const auto got = dout.download();
    const double err = rel_l2(got, want);
    std::printf("latent decode bf16 B%lld S%lld H%lld C%lld: rel L2 %.2e\n", static_cast<long long>(B),
                static_cast<long long>(c.S), static_cast<long long>(c.H), static_cast<long long>(c.C), err);
    EXPECT_LE(err, 1e-5);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t keys = c.lengths.empty() ? c.S : c.lengths[b];
      if (keys != 1) continue;
      for (int64_t h = 0; h < c.H; ++h)
        for (int64_t d = 0; d < c.C; ++d)
          ASSERT_EQ(got[(b * c.H + h) * c.C + d], bf16_to_f32(rows[b * c.S * W + d])) << b << " " << h << " " << d;
    }
  }
}

}  // namespace
}  // namespace dsv::ops
