#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "infer/generate.h"
#include "infer/sampler.h"
#include "model/model.h"
#include "test_helpers.h"

namespace dsv {

TEST(Sampler, GreedyIsFirstArgmax) {
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f};
  Sampler s({});
  EXPECT_EQ(s.next(logits.data(), 4), 1);
}

TEST(Sampler, SameSeedSameTokens) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i));
  Sampler a({.temperature = 1.0f, .seed = 42}), b({.temperature = 1.0f, .seed = 42}), c({.temperature = 1.0f, .seed = 43});
  std::vector<int32_t> ta, tb, tc;
  for (int i = 0; i < 64; ++i) {
    ta.push_back(a.next(logits.data(), 50));
    tb.push_back(b.next(logits.data(), 50));
    tc.push_back(c.next(logits.data(), 50));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(Sampler, TopKAndTopPLimitTheChoice) {
  const std::vector<float> logits = {3.0f, 2.9f, 0.0f, -1.0f, 2.8f};
  Sampler k2({.temperature = 1.0f, .top_k = 2, .seed = 1});
  Sampler p({.temperature = 1.0f, .top_p = 0.3f, .seed = 1});  // the top token alone holds > 30%
  for (int i = 0; i < 200; ++i) {
    const int32_t t = k2.next(logits.data(), 5);
    EXPECT_TRUE(t == 0 || t == 1) << t;
    EXPECT_EQ(p.next(logits.data(), 5), 0);
  }
}

TEST(Sampler, FrequenciesFollowTheTemperedSoftmax) {
  const std::vector<float> logits = {1.0f, 0.0f, -0.5f, 0.5f};
  const float temperature = 0.7f;
  Sampler s({.temperature = temperature, .seed = 7});
  std::map<int32_t, int> counts;
  const int n = 40000;
  for (int i = 0; i < n; ++i) counts[s.next(logits.data(), 4)]++;
  double z = 0;
  for (float l : logits) z += std::exp(l / temperature);
  for (int i = 0; i < 4; ++i) {
    const double p = std::exp(logits[i] / temperature) / z;
    const double sigma = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(counts[i] / static_cast<double>(n), p, 5 * sigma) << "token " << i;
  }
}

TEST(Generate, StopsAtEos) {
  const std::string dir = test::source_dir() + "/tests/fixtures/models/v3_noaux_yarn";
  auto m = load_model(dir);
  const std::vector<int32_t> prompt = {5, 6, 7};
  GenerateOptions opt;
  opt.max_new_tokens = 6;
  const auto free_run = generate(*m, prompt, opt).tokens;
  ASSERT_EQ(free_run.size(), 6u);
  opt.stop_ids = {free_run[2]};
  const auto r = generate(*m, prompt, opt);
  EXPECT_TRUE(r.stopped_at_eos);
  // Stops at the first occurrence of the stop id, which it includes.
  size_t first = 0;
  while (free_run[first] != free_run[2]) ++first;
  EXPECT_EQ(r.tokens, std::vector<int32_t>(free_run.begin(), free_run.begin() + first + 1));
}

TEST(Generate, RefusesPromptsBeyondTheContext) {
  const std::string dir = test::source_dir() + "/tests/fixtures/models/v3_noaux_yarn";
  auto m = load_model(dir);
  GenerateOptions opt;
  opt.max_new_tokens = m->config.max_position_embeddings;
  test::expect_error([&] { generate(*m, {1, 2}, opt); }, {"exceeds the model's context"});
}

}  // namespace dsv
