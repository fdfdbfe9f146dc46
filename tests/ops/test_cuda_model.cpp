// The whole model on the CUDA backend against the transformers fixtures (fp32 weights on the GPU,
// reference kernels): logits, greedy continuations, absorbed vs expanded MLA, MTP.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "backends/cuda/cuda_ops.h"
#include "infer/generate.h"
#include "io/npy.h"
#include "model/model.h"
#include "../model/fixture_util.h"

namespace dsv {
namespace {
namespace fs = std::filesystem;

using test::fixture_names;
using test::fixtures_root;

double max_rel_error(const std::vector<float>& got, const std::vector<float>& ref) {
  return test::max_rel_error(got.data(), ref);
}

class CudaModel : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) GTEST_SKIP() << "no CUDA device";
    static bool registered = false;
    if (!registered) ops::cuda::register_cuda_backend();
    registered = true;
    dir_ = fixtures_root() / GetParam();
    std::ifstream in(dir_ / "ref.json");
    ref_ = nlohmann::json::parse(in);
    for (int v : ref_["ids"]) ids_.push_back(v);
    host_ = load_model(dir_.string());
    gpu_ = to_backend(*host_, ops::Backend::Cuda);
  }
  fs::path dir_;
  nlohmann::json ref_;
  std::vector<int32_t> ids_;
  std::unique_ptr<Model> host_, gpu_;
};

// fp32 on the GPU: same bar as the CPU (measured ~1e-6).
TEST_P(CudaModel, LogitsMatchTransformers) {
  const int64_t T = static_cast<int64_t>(ids_.size()), V = gpu_->config.vocab_size;
  for (MlaMode mode : {MlaMode::Expanded, MlaMode::Absorbed}) {
    std::vector<float> logits(static_cast<size_t>(T * V));
    KvCache cache = make_kv_cache(*gpu_, T);
    forward(*gpu_, ids_.data(), T, cache, {.logits = logits.data(), .mla_mode = mode});
    const double err = max_rel_error(logits, read_npy((dir_ / "logits.npy").string()).data);
    std::printf("%s %s: max rel error %.2e\n", GetParam().c_str(), mode == MlaMode::Expanded ? "expanded" : "absorbed",
                err);
    EXPECT_LE(err, 1e-4);
  }
}

TEST_P(CudaModel, GreedyMatchesCpuAndTransformers) {
  std::vector<int32_t> prompt, expected;
  for (int v : ref_["greedy"]["prompt"]) prompt.push_back(v);
  for (int v : ref_["greedy"]["continuation"]) expected.push_back(v);
  GenerateOptions opt;
  opt.max_new_tokens = static_cast<int64_t>(expected.size());
  EXPECT_EQ(generate(*gpu_, prompt, opt).tokens, expected);
  EXPECT_EQ(generate(*host_, prompt, opt).tokens, expected);
}

TEST_P(CudaModel, MtpMatchesTransformers) {
  if (!fs::exists(dir_ / "mtp_logits.npy")) GTEST_SKIP() << "no MTP module";
  const int64_t T = static_cast<int64_t>(ids_.size()), D = gpu_->config.hidden_size;
  std::vector<float> hidden(static_cast<size_t>(T * D));
  KvCache cache = make_kv_cache(*gpu_, T);
  forward(*gpu_, ids_.data(), T, cache, {.final_hidden = hidden.data()});
  const auto depths = mtp_logits(*gpu_, ids_.data(), T, hidden.data());
  EXPECT_LE(max_rel_error(depths[0], read_npy((dir_ / "mtp_logits.npy").string()).data), 1e-4);
}

// bf16 inference on the GPU (bf16 weights and latent cache, GEMV decode, bf16 tensor-core prefill)
// against the same model in bf16 on the CPU, the spec: the two round the same operands and differ in
// fp32 summation order, except where a product input lies within an fp32 rounding error of a bf16
// rounding boundary and rounds to the other bf16 neighbour (2^-8 relative) on one backend. Measured:
// 1e-7 on most fixtures and modes, up to 4.8e-3 where such a flip happens. Greedy generation must
// match the CPU token for token.
TEST_P(CudaModel, Bf16MatchesCpuBf16) {
  auto gpu16 = to_backend(*host_, ops::Backend::Cuda, /*bf16_weights=*/true);
  auto cpu16 = load_model(dir_.string());
  store_weights_bf16(*cpu16);
  const int64_t T = static_cast<int64_t>(ids_.size()), V = gpu16->config.vocab_size;
  for (MlaMode mode : {MlaMode::Expanded, MlaMode::Absorbed}) {
    std::vector<float> got(static_cast<size_t>(T * V)), want(static_cast<size_t>(T * V));
    KvCache gc = make_kv_cache(*gpu16, T), cc = make_kv_cache(*cpu16, T);
    ASSERT_TRUE(gc.bf16 && cc.bf16);
    forward(*gpu16, ids_.data(), T, gc, {.logits = got.data(), .mla_mode = mode});
    forward(*cpu16, ids_.data(), T, cc, {.logits = want.data(), .mla_mode = mode});
    const double err = max_rel_error(got, want);
    std::printf("%s bf16 %s: GPU vs CPU max rel error %.2e\n", GetParam().c_str(),
                mode == MlaMode::Expanded ? "expanded" : "absorbed", err);
    EXPECT_LE(err, 1e-2);
  }
  std::vector<int32_t> prompt;
  for (int v : ref_["greedy"]["prompt"]) prompt.push_back(v);
  GenerateOptions opt;
  opt.max_new_tokens = static_cast<int64_t>(ref_["greedy"]["continuation"].size());
  EXPECT_EQ(generate(*gpu16, prompt, opt).tokens, generate(*cpu16, prompt, opt).tokens);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaModel, ::testing::ValuesIn(fixture_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace dsv
