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
#include "flash_attention_checks.h"

namespace dsv::ops {
namespace {

using namespace test;

class CudaFlashAttention : public CudaTest {};

TEST_F(CudaFlashAttention, ForwardMatchesCpu) {
  check_flash_forward("flash", cuda::flash_attention, cuda::flash_attention_supported,
                      {FlashCase{64, 64, 1, 16, 16, 0}, FlashCase{300, 300, 3, 192, 128, 0}, FlashCase{1, 1, 2, 32, 16, 0},
                       FlashCase{100, 357, 2, 64, 48, 0} /* T < S: prefill after a cache */,
                       FlashCase{130, 130, 2, 192, 128, 40} /* strided keys */, FlashCase{77, 77, 1, 256, 256, 0}},
                      2e-3, false);
}

TEST_F(CudaFlashAttention, BackwardMatchesCpu) {
  check_flash_backward("flash", cuda::flash_attention_backward,
                       {FlashCase{64, 64, 1, 16, 16, 0}, FlashCase{300, 300, 3, 192, 128, 0}, FlashCase{1, 1, 1, 32, 16, 0},
                        FlashCase{100, 357, 2, 64, 48, 0}, FlashCase{257, 257, 4, 192, 128, 0},
                        FlashCase{70, 70, 1, 256, 256, 0}},
                       5e-3, 2e-3);
}

TEST_F(CudaFlashAttention, BackwardWithTheForwardsStatsIsTheSame) {
  check_flash_backward_given_stats(cuda::flash_attention, cuda::flash_attention_backward);
}

TEST_F(CudaFlashAttention, BackwardIsDeterministic) { check_flash_backward_deterministic(cuda::flash_attention_backward); }

TEST_F(CudaFlashAttention, SupportedShapes) {
  EXPECT_TRUE(cuda::flash_attention_supported(16, 16, 192, 128, 4096, 4096));
  EXPECT_FALSE(cuda::flash_attention_supported(16, 1, 576, 512, 1, 100));  // absorbed decode: shared K/V head
  EXPECT_TRUE(cuda::flash_attention_supported(4, 4, 24, 16, 10, 10));      // multiples of 8: the mma kernels
  EXPECT_FALSE(cuda::flash_attention_supported(4, 4, 20, 16, 10, 10));     // head dim not a multiple of 8
  EXPECT_FALSE(cuda::flash_attention_supported(4, 4, 512, 128, 10, 10));   // beyond the register budget
}

}  // namespace
}  // namespace dsv::ops
