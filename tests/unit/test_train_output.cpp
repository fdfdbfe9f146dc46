// What the training loop reports: metrics lines, the console line, FLOPs per token and peaks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>

#include "model/config.h"
#include "test_helpers.h"
#include "train/flops.h"
#include "train/metrics.h"

namespace dsv::train {
namespace {

TEST(TrainOutput, MetricsLineKeepsTheDocumentedKeysAndNullsNonFinite) {
  StepMetrics m;
  m.step = 3;
  m.loss = std::numeric_limits<double>::quiet_NaN();
  m.grad_norm = std::numeric_limits<double>::infinity();
  m.skipped = true;
  m.expert_imbalance = {1.5, 2.0};
  const std::string line = metrics_json(m);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_EQ(line.rfind("{\"step\":3,\"loss\":null,\"mtp_loss\":0.0,\"aux_loss\":0.0,\"grad_norm\":null,", 0), 0u) << line;
  EXPECT_NE(line.find("\"skipped\":true,\"expert_imbalance\":[1.5,2.0]}"), std::string::npos) << line;

  const auto dir = test::temp_dir("metrics");
  const std::string path = (dir / "sub" / "m.jsonl").string();  // parent directories are made
  {
    MetricsWriter w(path);
    w.write(m);
    m.step = 4;
    w.write(m);
  }
  std::ifstream in(path);
  std::string first, second;
  std::getline(in, first);
  std::getline(in, second);
  EXPECT_EQ(first.rfind("{\"step\":3,", 0), 0u);
  EXPECT_EQ(second.rfind("{\"step\":4,", 0), 0u);
  std::filesystem::remove_all(dir);
}

TEST(TrainOutput, ConsoleLinesOffATerminal) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  ConsoleProgress p(/*total_steps=*/25, /*log_interval=*/10, f, /*is_tty=*/false);
  StepMetrics m;
  for (int64_t s = 1; s <= 25; ++s) {
    m.step = s;
    m.loss = 2.0;
    if (s == 12) p.warn("step 12 skipped");
    p.update(m, 0.5 * static_cast<double>(s));
  }
  p.finish();
  std::rewind(f);
  std::string text;
  char buf[512];
  while (std::fgets(buf, sizeof buf, f)) text += buf;
  std::fclose(f);
  EXPECT_EQ(text.find('\r'), std::string::npos);
  // Steps 1, 10, 20 and the last, plus the warning: five lines.
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 5) << text;
  EXPECT_NE(text.find("step 1/25"), std::string::npos);
  EXPECT_NE(text.find("step 20/25"), std::string::npos);
  EXPECT_NE(text.find("dsv: warning: step 12 skipped\n"), std::string::npos);
  EXPECT_NE(text.find("[########------------] step 10/25"), std::string::npos) << text;  // 40% of the bar
  EXPECT_NE(text.find("ETA 8s"), std::string::npos) << text;  // step 10: 0.5 s per step x 15 left = 7.5 s
  EXPECT_EQ(text.find("step 11/25"), std::string::npos);
}

TEST(TrainOutput, Durations) {
  EXPECT_EQ(format_duration(42.4), "42s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(7620), "2h07m");
  EXPECT_EQ(format_duration(std::nan("")), "?");
}

TEST(TrainOutput, FlopsPerTokenOfTheTinyModel) {
  const ModelConfig c = load_model_config(test::source_dir() + "/models/tiny");
  const int64_t S = 64;
  const double V = 523, D = 64;
  // Main model: 6 x (active parameters without the embedding lookup) + L x 3 x H x (Dqk + Dv) x (S + 1):
  // 2 layers, 4 heads, Dqk 24, Dv 16.
  const double main_matmul = static_cast<double>(c.params_active()) - V * D;
  const double main = 6.0 * main_matmul + 2 * 3 * 4 * (24 + 16) * (S + 1);
  EXPECT_DOUBLE_EQ(train_flops_per_token(c, S, 0), main);
  // One MTP module on 63 of 64 rows: its active parameters (8 experts, 2 per token: 6 unused x 3 x D x Fe 32)
  // plus the LM head, and attention over 63 causal rows (mean 32 keys).
  const double mtp_active = static_cast<double>(c.params_mtp()) - 6 * 3 * 64 * 32;
  const double mtp = 63.0 / 64.0 * (6.0 * (mtp_active + V * D) + 6.0 * 4 * (24 + 16) * 32);
  EXPECT_NEAR(train_flops_per_token(c, S, 1), main + mtp, 1e-6 * main);
}

TEST(TrainOutput, DevicePeaks) {
  EXPECT_EQ(device_peak_flops("cpu"), 0.0);
  EXPECT_EQ(device_peak_flops("cuda"), 989e12);
  EXPECT_EQ(device_peak_flops("cuda", "NVIDIA H100 80GB HBM3"), 989e12);
  EXPECT_EQ(device_peak_flops("cuda", "NVIDIA H100 PCIe"), 756e12);
  EXPECT_EQ(device_peak_flops("cuda", "NVIDIA H200"), 989e12);
  EXPECT_EQ(device_peak_flops("cuda", "Some Other GPU"), 0.0);
}

TEST(TrainOutput, MemoryEstimateGrowsWithTheBatchAndShrinksWithRecompute) {
  const ModelConfig c = load_model_config(test::source_dir() + "/models/tiny");
  EXPECT_EQ(trained_parameters(c, 1), c.params_total() + c.params_mtp());
  const double one = activation_bytes_estimate(c, 1, 64, 1, "none");
  EXPECT_GT(one, 0.0);
  EXPECT_DOUBLE_EQ(activation_bytes_estimate(c, 4, 64, 1, "none"), 4 * one);
  EXPECT_LT(activation_bytes_estimate(c, 1, 64, 1, "full"), one);
}

}  // namespace
}  // namespace dsv::train
