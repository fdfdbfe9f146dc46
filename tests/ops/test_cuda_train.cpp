// The trainer on the CUDA backend against the PyTorch training fixtures (fp32 on the GPU):
// step-1 gradients and whole loss curves, with the same bars as the CPU trainer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "backends/cuda/cuda_ops.h"
#include "../model/train_fixture_util.h"
#include "train/trainer.h"

namespace dsv::train {
namespace {
using namespace test;  // NOLINT: fixture helpers

class CudaTrain : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) GTEST_SKIP() << "no CUDA device";
    static bool registered = false;
    if (!registered) ops::cuda::register_cuda_backend();
    registered = true;
  }
};

TEST_P(CudaTrain, GradientsMatchPyTorch) {
  const Case c = open_case(GetParam());
  const ParamStore store = step1_gradients(c.config, true, ops::Backend::Cuda);
  std::vector<float> grads(static_cast<size_t>(store.total()));
  ops::copy_to_host(store.model().context(), grads.data(), store.grad_data(), grads.size() * sizeof(float));
  const SafetensorsFile ref((c.dir / "grads_step1.safetensors").string());
  double worst = 0.0;
  for (const ParamSlot& p : store.slots()) {
    if (!p.trainable || p.numel == 0) continue;
    const std::vector<float> want = read_f32(ref, p.hf_name);
    double max_ref = 0.0, max_diff = 0.0;
    for (int64_t i = 0; i < p.numel; ++i) {
      max_ref = std::max(max_ref, static_cast<double>(std::fabs(want[i])));
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(grads[p.offset + i] - want[i])));
    }
    if (max_ref == 0.0) {
      EXPECT_EQ(max_diff, 0.0) << p.hf_name;
      continue;
    }
    EXPECT_LE(max_diff / max_ref, 1e-4) << p.hf_name;
    worst = std::max(worst, max_diff / max_ref);
  }
  RecordProperty("worst_relative_gradient_error", sci(worst));
}

TEST_P(CudaTrain, LossCurveMatchesPyTorch) {
  Case c = open_case(GetParam());
  c.config.device = "cuda";
  std::ifstream in(c.dir / "losses.json");
  const nlohmann::json want = nlohmann::json::parse(in);
  Trainer trainer(c.config);
  double worst = 0.0;
  for (const auto& w : want) {
    const StepMetrics m = trainer.step();
    const double rel = std::fabs(m.loss - w["loss"].get<double>()) / std::fabs(w["loss"].get<double>());
    EXPECT_LE(rel, 1e-3) << "step " << m.step;
    if (w["mtp_loss"].get<double>() != 0.0) {
      EXPECT_NEAR(m.mtp_loss, w["mtp_loss"].get<double>(), 1e-3 * w["mtp_loss"].get<double>()) << "step " << m.step;
    }
    if (w["aux_loss"].get<double>() != 0.0) {
      EXPECT_NEAR(m.aux_loss, w["aux_loss"].get<double>(), 1e-3 * w["aux_loss"].get<double>()) << "step " << m.step;
    }
    worst = std::max(worst, rel);
  }
  RecordProperty("worst_relative_loss_error", sci(worst));
  std::printf("[ cuda train ] %s: worst relative loss error over %zu steps %s\n", GetParam().c_str(), want.size(),
              sci(worst).c_str());
}

// Reduced-precision tensor-core products (train.tf32, train.bf16: products and attention on TF32 or
// bf16 tensor cores, fp32 master weights): the bar for reduced-precision GPU training is the
// PyTorch fp32 loss within 2% at every step.
void expect_loss_curve_within_two_percent(const std::string& name, bool bf16) {
  Case c = open_case(name);
  c.config.device = "cuda";
  (bf16 ? c.config.bf16 : c.config.tf32) = true;
  std::ifstream in(c.dir / "losses.json");
  const nlohmann::json want = nlohmann::json::parse(in);
  Trainer trainer(c.config);
  double worst = 0.0;
  for (const auto& w : want) {
    const StepMetrics m = trainer.step();
    const double rel = std::fabs(m.loss - w["loss"].get<double>()) / std::fabs(w["loss"].get<double>());
    EXPECT_LE(rel, 2e-2) << "step " << m.step;
    worst = std::max(worst, rel);
  }
  ops::set_matmul_precision(ops::MatmulPrecision::Fp32);
  std::printf("[ cuda train %s ] %s: worst relative loss error over %zu steps %s\n", bf16 ? "bf16" : "tf32",
              name.c_str(), want.size(), sci(worst).c_str());
}

TEST_P(CudaTrain, Tf32LossCurveWithinTwoPercent) { expect_loss_curve_within_two_percent(GetParam(), false); }
TEST_P(CudaTrain, Bf16LossCurveWithinTwoPercent) { expect_loss_curve_within_two_percent(GetParam(), true); }

// bf16 training resumes exactly: AdamW keeps the bf16 compute copy of what it updates, so a checkpoint
// load must re-cast all of it. The resuming trainer takes a step of its own first (its copy then
// holds other weights than the checkpoint's), loads the checkpoint written after step 2 of another
// run, and must repeat that run's step 3 bit for bit.
TEST_P(CudaTrain, Bf16ResumeRepeatsTheStep) {
  Case c = open_case(GetParam());
  c.config.device = "cuda";
  c.config.bf16 = true;
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("dsv_cuda_bf16_resume_" + GetParam());
  std::filesystem::remove_all(dir);
  double want = 0.0;
  {
    Trainer a(c.config);
    a.step();
    a.step();
    a.save_checkpoint(dir.string(), "", 1);
    want = a.step().loss;
  }
  Trainer b(c.config);
  b.step();
  b.load_checkpoint(dir.string());
  const StepMetrics m = b.step();
  ops::set_matmul_precision(ops::MatmulPrecision::Fp32);
  std::filesystem::remove_all(dir);
  EXPECT_EQ(m.step, 3);
  EXPECT_EQ(m.loss, want);
}

// A step's gradients start clean: the first micro-batch overwrites the routed experts' gradients
// (grouped experts on the device with bf16) and the rest are zeroed, so gradients left in the buffer
// (NaN here) never reach the update. Same bits as a trainer whose buffer started at zero.
TEST_P(CudaTrain, Bf16StaleGradientsNeverLeak) {
  Case c = open_case(GetParam());
  c.config.device = "cuda";
  c.config.bf16 = true;
  const auto grads_of = [](const Trainer& t) {
    std::vector<float> g(static_cast<size_t>(t.store().total()));
    ops::copy_to_host(t.model().context(), g.data(), t.store().grad_data(), g.size() * sizeof(float));
    return g;
  };
  Trainer clean(c.config);
  const StepMetrics want = clean.step();
  const std::vector<float> want_grads = grads_of(clean);
  Trainer poisoned(c.config);
  std::vector<float> nan(static_cast<size_t>(poisoned.store().total()), 0.0f);  // the padding stays zero
  for (const ParamSlot& p : poisoned.store().slots()) std::fill_n(nan.begin() + p.offset, p.numel, NAN);
  ops::copy_to_backend(poisoned.model().context(), poisoned.store().grad_data(), nan.data(), nan.size() * sizeof(float));
  const StepMetrics got = poisoned.step();
  ops::set_matmul_precision(ops::MatmulPrecision::Fp32);
  EXPECT_FALSE(got.skipped);
  EXPECT_EQ(got.loss, want.loss);
  EXPECT_EQ(got.grad_norm, want.grad_norm);
  const std::vector<float> got_grads = grads_of(poisoned);
  int64_t differing = 0;
  for (size_t i = 0; i < got_grads.size(); ++i) differing += std::memcmp(&got_grads[i], &want_grads[i], 4) != 0;
  EXPECT_EQ(differing, 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaTrain, ::testing::ValuesIn(train_cases()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace dsv::train
