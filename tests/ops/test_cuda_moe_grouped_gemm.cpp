// Routed experts for prefill-sized T on bf16 tensor cores (moe_grouped_gemm.cu) against the CPU spec
// (cpu::moe_experts with bf16 tables: x and h rounded to bf16, fp32 sums). Cases cover uneven expert
// loads (unused experts, one expert with several tiles), dims that are not multiples of the
// 128 x 256 x 64 tiles (N and K tails, more k-tiles than pipeline stages), E = 256 with K = 8 as in V3, and the dispatch from
// cuda::moe_experts past decode sizes. GPU host only.
//
// Tolerance 2e-4 relative L2. Both sides round the same operands to bf16 and sum in fp32, but in
// different orders (and tensor cores add with truncation), so gate / up differ by ~1e-6 relative; where
// that straddles a bf16 rounding boundary, h = bf16(silu(gate) up) lands one bf16 step (2^-8) away.
// With a share q of such h the output error is about 2^-8 sqrt(q): 1.2e-6 .. 7.8e-5 measured here
// (more for larger D, whose sums differ more), where a wrong row, column or tail gives O(1).
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "backends/cuda/cuda_ops.h"
#include "cuda_test_util.h"

namespace dsv::ops {
namespace {

using namespace test;

class CudaMoeGroupedGemm : public CudaTest {};

struct Case {
  int64_t T, K, E, D, F;
  bool skewed;  // expert 0 takes the first slot of every token
};

TEST_F(CudaMoeGroupedGemm, MatchesCpu) {
  for (const Case& c : {Case{300, 6, 64, 256, 176, false}, Case{1000, 8, 256, 72, 40, false},
                        Case{400, 2, 3, 64, 64, true}, Case{512, 6, 64, 512, 352, true}, Case{129, 1, 1, 8, 8, false},
                        Case{1200, 2, 4, 136, 96, true},
                        Case{1100, 2, 4, 520, 200, false} /* N and K tails past 256 / 64 */,
                        Case{700, 4, 16, 328, 456, false}}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " K" << c.K << " E" << c.E << " D" << c.D << " F" << c.F);
    std::vector<std::vector<uint16_t>> mats;  // gate, up, down per expert
    for (int64_t e = 0; e < c.E; ++e) {
      mats.push_back(to_bf16(randn(c.F * c.D, 100 + e, 0.0f, 0.05f)));
      mats.push_back(to_bf16(randn(c.F * c.D, 200 + e, 0.0f, 0.05f)));
      mats.push_back(to_bf16(randn(c.D * c.F, 300 + e, 0.0f, 0.05f)));
    }
    const auto x = randn(c.T * c.D, 7), w = randn(c.T * c.K, 8);
    std::vector<int32_t> idx(c.T * c.K);
    for (int64_t t = 0; t < c.T; ++t)  // distinct experts per token, as routing gives
      for (int64_t k = 0; k < c.K; ++k) {
        const int64_t first = c.skewed ? 0 : (t * 7 + (t % 5 == 0 ? 0 : 3)) % c.E;
        idx[t * c.K + k] = static_cast<int32_t>((first + k) % c.E);
      }
    std::vector<const uint16_t*> host[3], dev[3];
    std::vector<std::unique_ptr<Dev<uint16_t>>> keep;
    for (int64_t e = 0; e < c.E; ++e)
      for (int j = 0; j < 3; ++j) {
        host[j].push_back(mats[3 * e + j].data());
        keep.push_back(std::make_unique<Dev<uint16_t>>(mats[3 * e + j]));
        dev[j].push_back(keep.back()->ptr);
      }
    std::vector<float> scratch(c.T * c.K * (c.F + c.D)), want(c.T * c.D);
    MoeExpertsParams p{.x = x.data(), .indices = idx.data(), .weights = w.data(), .gate_bf16 = host[0].data(),
                       .up_bf16 = host[1].data(), .down_bf16 = host[2].data(), .scratch = scratch.data(),
                       .out = want.data(), .T = c.T, .K = c.K, .D = c.D, .F = c.F, .E = c.E};
    cpu::moe_experts(p);
    Dev<const uint16_t*> tg(dev[0]), tu(dev[1]), td(dev[2]);
    Dev<int32_t> didx(idx);
    Dev<float> dx(x), dw(w), dscratch(scratch), dout(nans(want.size()));
    p.x = dx.ptr, p.indices = didx.ptr, p.weights = dw.ptr, p.scratch = dscratch.ptr, p.out = dout.ptr;
    p.gate_bf16 = tg.ptr, p.up_bf16 = tu.ptr, p.down_bf16 = td.ptr;
    ASSERT_TRUE(cuda::moe_grouped_gemm_supported(p));
    CUDA_OK(cuda::moe_grouped_gemm(p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    const auto first = dout.download();
    const double err = rel_l2(first, want);
    std::printf("grouped tensor-core experts T%ld K%ld E%ld D%ld F%ld: rel L2 %.2e\n", static_cast<long>(c.T),
                static_cast<long>(c.K), static_cast<long>(c.E), static_cast<long>(c.D), static_cast<long>(c.F), err);
    EXPECT_LE(err, 2e-4);
    p.scratch = nullptr;  // prefill sizes need none
    CUDA_OK(cuda::moe_experts(p, 0));  // the op's dispatch (T > 128) gives the same bits, run after run
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_TRUE(same_bits(dout.download(), first));
  }
}

TEST_F(CudaMoeGroupedGemm, SupportedShapes) {
  const uint16_t* const* t = reinterpret_cast<const uint16_t* const*>(16);  // only null-ness is looked at
  MoeExpertsParams p{.gate_bf16 = t, .up_bf16 = t, .down_bf16 = t, .T = 4096, .K = 8, .D = 7168, .F = 2048, .E = 256};
  EXPECT_TRUE(cuda::moe_grouped_gemm_supported(p));
  p.F = 2044;  // rows of 16-byte copies need multiples of 8
  EXPECT_FALSE(cuda::moe_grouped_gemm_supported(p));
  p.F = 2048;
  p.E = 0;  // the tables' size is needed for the plan
  EXPECT_FALSE(cuda::moe_grouped_gemm_supported(p));
  p.E = 256;
  p.gate_bf16 = nullptr;  // fp32 tables: not this kernel
  EXPECT_FALSE(cuda::moe_grouped_gemm_supported(p));
}

}  // namespace
}  // namespace dsv::ops
