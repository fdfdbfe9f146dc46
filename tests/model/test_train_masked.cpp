// Masked targets (-1 = no loss), the fine-tuning case: the training pass's main and MTP losses over
// a random mask equal cross-entropies computed here from the inference path's logits (an independent
// code path), and gradients are linear in the mask (mask + its complement = everything).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "model/model.h"
#include "train/model_train.h"
#include "train/param_store.h"
#include "train/recipe.h"

namespace dsv::train {
namespace {

ModelConfig tiny_config() { return load_model_config(std::string(DSV_SOURCE_DIR) + "/models/tiny"); }

double cross_entropy(const float* logits, int64_t V, int32_t target) {
  double mx = logits[0];
  for (int64_t v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(logits[v]));
  double sum = 0.0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(logits[v]) - mx);
  return std::log(sum) + mx - static_cast<double>(logits[target]);
}

struct Sample {
  std::vector<int32_t> inputs, targets, masked, complement;
};

Sample random_sample(int64_t B, int64_t S, int64_t V, uint32_t seed) {
  std::mt19937 rng(seed);
  Sample s;
  for (int64_t i = 0; i < B * S; ++i) {
    s.inputs.push_back(static_cast<int32_t>(rng() % V));
    s.targets.push_back(static_cast<int32_t>(rng() % V));
    const bool keep = rng() % 3 != 0;
    s.masked.push_back(keep ? s.targets.back() : -1);
    s.complement.push_back(keep ? -1 : s.targets.back());
  }
  return s;
}

TEST(TrainMasked, LossesEqualInferenceCrossEntropyOverUnmaskedTargets) {
  const ModelConfig c = tiny_config();
  const int64_t B = 2, S = 24, V = c.vocab_size;
  ASSERT_GE(c.num_nextn_predict_layers, 1);
  ParamStore store = ParamStore::random(c, 1, ops::Backend::Cpu, 7, 0.05f);
  const Sample smp = random_sample(B, S, V, 3);
  PassOptions opt;
  opt.mtp_depth = 1;
  opt.mtp_lambda = 0.3;
  const PassResult r = forward_backward(store.model(), store.grads(), smp.inputs.data(), smp.masked.data(),
                                        Batch{B, S}, opt);

  double main = 0.0, mtp = 0.0;
  int64_t main_n = 0, mtp_n = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* in = smp.inputs.data() + b * S;
    const int32_t* tg = smp.masked.data() + b * S;
    std::vector<float> logits(static_cast<size_t>(S * V)), hidden(static_cast<size_t>(S * c.hidden_size));
    KvCache cache = make_kv_cache(store.model(), S);
    forward(store.model(), in, S, cache, ForwardOptions{.logits = logits.data(), .final_hidden = hidden.data()});
    for (int64_t i = 0; i < S; ++i)
      if (tg[i] >= 0) {
        main += cross_entropy(logits.data() + i * V, V, tg[i]);
        ++main_n;
      }
    // Depth 1, row i: input in[i + 1], target tg[i + 1] (docs/TRAINING.md, MTP).
    const auto depth = mtp_logits(store.model(), in, S, hidden.data());
    for (int64_t i = 0; i + 1 < S; ++i)
      if (tg[i + 1] >= 0) {
        mtp += cross_entropy(depth[0].data() + i * V, V, tg[i + 1]);
        ++mtp_n;
      }
  }
  ASSERT_GT(main_n, 0);
  EXPECT_EQ(r.loss_count, main_n);
  ASSERT_EQ(r.mtp_count.size(), 1u);
  EXPECT_EQ(r.mtp_count[0], mtp_n);
  EXPECT_NEAR(r.loss_sum, main, 1e-4 * main);
  EXPECT_NEAR(r.mtp_sum[0], mtp, 1e-4 * mtp);

  // The forward-only pass (validation) gives the same main loss and leaves the gradients alone.
  store.zero_grads();
  PassOptions eval;
  eval.forward_only = true;
  const PassResult e = forward_backward(store.model(), store.grads(), smp.inputs.data(), smp.masked.data(),
                                        Batch{B, S}, eval);
  EXPECT_NEAR(e.loss_sum, main, 1e-4 * main);
  const Tensor& g = store.grads().embed_tokens;
  double g_abs = 0.0;
  for (int64_t i = 0; i < g.numel(); ++i) g_abs += std::fabs(g.data[i]);
  EXPECT_EQ(g_abs, 0.0);
}

TEST(TrainMasked, GradientsAreLinearInTheMask) {
  const ModelConfig c = tiny_config();
  const int64_t B = 2, S = 16;
  ParamStore store = ParamStore::random(c, 1, ops::Backend::Cpu, 11, 0.05f);
  const Sample smp = random_sample(B, S, c.vocab_size, 5);
  PassOptions opt;  // normalizers 1: gradients of the summed losses
  opt.mtp_depth = 1;
  opt.mtp_lambda = 0.3;
  opt.loss_targets = 1;
  opt.mtp_targets = {1};
  auto grads_for = [&](const std::vector<int32_t>& targets) {
    store.zero_grads();
    forward_backward(store.model(), store.grads(), smp.inputs.data(), targets.data(), Batch{B, S}, opt);
    const float* g = store.grad_data();
    return std::vector<float>(g, g + store.total());
  };
  const std::vector<float> all = grads_for(smp.targets), part = grads_for(smp.masked),
                           rest = grads_for(smp.complement);
  double scale = 0.0, worst = 0.0, part_abs = 0.0, rest_abs = 0.0;
  for (size_t i = 0; i < all.size(); ++i) {
    scale = std::max(scale, static_cast<double>(std::fabs(all[i])));
    worst = std::max(worst, static_cast<double>(std::fabs(all[i] - part[i] - rest[i])));
    part_abs += std::fabs(part[i]);
    rest_abs += std::fabs(rest[i]);
  }
  ASSERT_GT(scale, 0.0);
  EXPECT_GT(part_abs, 0.0);
  EXPECT_GT(rest_abs, 0.0);
  EXPECT_LT(worst, 1e-5 * scale);
}

TEST(TrainMasked, CountTargetsPerDepth) {
  // B = 1, S = 5; targets at positions 0, 2, 3 carry loss. Depth k counts positions i >= k.
  const std::vector<int32_t> t = {4, -1, 7, 9, -1};
  const TargetCounts n = count_targets(t.data(), Batch{1, 5}, 3);
  EXPECT_EQ(n.main, 3);
  ASSERT_EQ(n.mtp.size(), 3u);
  EXPECT_EQ(n.mtp[0], 2);  // positions 2, 3
  EXPECT_EQ(n.mtp[1], 2);  // positions 2, 3
  EXPECT_EQ(n.mtp[2], 1);  // position 3
}

}  // namespace
}  // namespace dsv::train
