// Training against the PyTorch reference (tests/ref/make_train_fixtures.py, transformers 5.17 in
// fp32): per-parameter gradients of step 1, per-step losses over whole runs, final router biases.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include <filesystem>
#include <fstream>

#include "io/safetensors.h"
#include "train_fixture_util.h"
#include "train/model_train.h"
#include "train/param_store.h"
#include "train/recipe.h"
#include "train/token_data.h"
#include "train/trainer.h"

namespace dsv::train {
namespace {

using namespace test;  // NOLINT: fixture helpers
namespace fs = std::filesystem;

class TrainFixture : public ::testing::TestWithParam<std::string> {};

// Step 1's gradient of the total loss, parameter by parameter.
TEST_P(TrainFixture, GradientsMatchPyTorch) {
  const Case c = open_case(GetParam());
  const ParamStore store = step1_gradients(c.config, true);
  const SafetensorsFile ref((c.dir / "grads_step1.safetensors").string());
  int checked = 0;
  double worst = 0.0;
  for (const ParamSlot& p : store.slots()) {
    if (!p.trainable) continue;
    ASSERT_TRUE(ref.tensors().count(p.hf_name)) << "reference has no gradient for " << p.hf_name;
    const std::vector<float> want = read_f32(ref, p.hf_name);
    ASSERT_EQ(static_cast<int64_t>(want.size()), p.numel) << p.hf_name;
    if (p.numel == 0) continue;
    double max_ref = 0.0, max_diff = 0.0;
    for (int64_t i = 0; i < p.numel; ++i) {
      max_ref = std::max(max_ref, static_cast<double>(std::fabs(want[i])));
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(store.grad_data()[p.offset + i] - want[i])));
    }
    if (max_ref == 0.0) {  // an expert no token chose: exactly zero
      EXPECT_EQ(max_diff, 0.0) << p.hf_name;
      continue;
    }
    // fp32 on both sides, different summation orders: observed errors are ~1e-6 of the tensor's scale.
    EXPECT_LE(max_diff / max_ref, 1e-4) << p.hf_name << " max|diff| " << max_diff << " max|ref| " << max_ref;
    worst = std::max(worst, max_diff / max_ref);
    ++checked;
  }
  EXPECT_GT(checked, 10);
  RecordProperty("worst_relative_gradient_error", sci(worst));
}

// The balance losses' own router gradient (tiny at alpha = 0.01, so invisible inside the total):
// total with them minus total without them.
TEST_P(TrainFixture, BalanceLossGradientMatchesPyTorch) {
  const Case c = open_case(GetParam());
  if (!fs::exists(c.dir / "grads_step1_aux.safetensors")) GTEST_SKIP() << "no balance loss in this case";
  const ParamStore with = step1_gradients(c.config, true), without = step1_gradients(c.config, false);
  const SafetensorsFile ref((c.dir / "grads_step1_aux.safetensors").string());
  int checked = 0;
  for (const auto& [name, entry] : ref.tensors()) {
    const std::vector<float> want = read_f32(ref, name);
    const ParamSlot* slot = nullptr;
    for (const ParamSlot& p : with.slots())
      if (p.hf_name == name) slot = &p;
    ASSERT_NE(slot, nullptr) << name;
    double max_ref = 0.0, max_diff = 0.0;
    for (int64_t i = 0; i < slot->numel; ++i) {
      const double got = static_cast<double>(with.grad_data()[slot->offset + i]) -
                         static_cast<double>(without.grad_data()[slot->offset + i]);
      max_ref = std::max(max_ref, std::fabs(static_cast<double>(want[i])));
      max_diff = std::max(max_diff, std::fabs(got - want[i]));
    }
    ASSERT_GT(max_ref, 0.0) << name;
    // The difference of two fp32 totals ~100x larger than it: ~1e-6 * 100 of its own scale.
    EXPECT_LE(max_diff / max_ref, 1e-3) << name << " max|diff| " << max_diff << " max|ref| " << max_ref;
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

// Whole runs: every step's losses within 1e-3 relative (the bar); lr exactly; the grad norm
// within 1e-3 too.
TEST_P(TrainFixture, LossCurveMatchesPyTorch) {
  const Case c = open_case(GetParam());
  std::ifstream in(c.dir / "losses.json");
  const nlohmann::json want = nlohmann::json::parse(in);
  Trainer trainer(c.config);
  double worst = 0.0;
  for (const auto& w : want) {
    const StepMetrics m = trainer.step();
    ASSERT_EQ(m.step, w["step"].get<int64_t>());
    ASSERT_FALSE(m.skipped);
    auto rel = [](double got, double ref) { return std::fabs(got - ref) / std::max(std::fabs(ref), 1e-12); };
    EXPECT_LE(rel(m.loss, w["loss"]), 1e-3) << "step " << m.step << " loss " << m.loss << " want " << w["loss"];
    worst = std::max(worst, rel(m.loss, w["loss"]));
    if (w["mtp_loss"].get<double>() != 0.0) {
      EXPECT_LE(rel(m.mtp_loss, w["mtp_loss"]), 1e-3) << "step " << m.step;
    }
    if (w["aux_loss"].get<double>() != 0.0) {
      EXPECT_LE(rel(m.aux_loss, w["aux_loss"]), 1e-3) << "step " << m.step;
    }
    EXPECT_LE(rel(m.grad_norm, w["grad_norm"]), 1e-3) << "step " << m.step;
    EXPECT_NEAR(m.lr, w["lr"].get<double>(), 1e-9 * std::fabs(w["lr"].get<double>())) << "step " << m.step;
  }
  RecordProperty("worst_relative_loss_error", sci(worst));
  if (!fs::exists(c.dir / "bias_final.safetensors")) return;
  const SafetensorsFile ref((c.dir / "bias_final.safetensors").string());
  const Model& m = trainer.model();
  for (int64_t l = 0; l < m.config.num_hidden_layers; ++l) {
    const Tensor& b = m.weights.layers[l].moe.score_correction_bias;
    if (b.empty()) continue;
    const std::string name = "model.layers." + std::to_string(l) + ".mlp.gate.e_score_correction_bias";
    ASSERT_TRUE(ref.tensors().count(name)) << name;
    const std::vector<float> want_b = read_f32(ref, name);
    for (int64_t e = 0; e < b.numel(); ++e) EXPECT_NEAR(b.data[e], want_b[e], 1e-6) << name << "[" << e << "]";
  }
}

// A non-finite loss skips the step (no update anywhere) with the step reported as skipped; after
// train.max_bad_steps such steps in a row the trainer stops with an error naming the cause.
TEST(TrainNonFinite, SkipsThenStops) {
  Case c = open_case("v3_tied");
  c.config.max_bad_steps = 3;
  Trainer trainer(c.config);
  const Model& m = trainer.model();
  const Tensor& poisoned = m.weights.layers[0].attn.o_proj;
  const Tensor& watched = m.weights.layers[0].attn.kv_b_proj;
  const std::vector<float> before(watched.data, watched.data + watched.numel());
  mut(poisoned)[0] = std::nanf("");
  for (int i = 0; i < 2; ++i) {
    const StepMetrics s = trainer.step();
    EXPECT_TRUE(s.skipped);
    EXPECT_FALSE(std::isfinite(s.loss));
  }
  EXPECT_EQ(std::vector<float>(watched.data, watched.data + watched.numel()), before) << "a skipped step updated";
  try {
    trainer.step();
    FAIL() << "the third non-finite step in a row should stop training";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not finite"), std::string::npos) << e.what();
  }
}

// With full recomputation the gradients are those of the saved-activation path (same ops, same order).
TEST(TrainRecompute, FullGivesTheSameGradients) {
  const Case c = open_case("v3_mtp");
  const ParamStore plain = step1_gradients(c.config, true);
  TrainConfig full = c.config;
  full.recompute = "full";
  const ParamStore again = step1_gradients(full, true);
  for (int64_t i = 0; i < plain.total(); ++i) ASSERT_EQ(plain.grad_data()[i], again.grad_data()[i]) << i;
}

// optimizer.bf16_moments: Adam's m and v in bf16 (stochastically rounded) follow the fp32-moment run
// closely, are what the checkpoint stores, and a resumed run repeats the next step bit for bit.
TEST(TrainBf16Moments, TrackFp32MomentsAndResumeExactly) {
  Case c = open_case("v3_mtp");
  c.config.steps = 8;
  std::vector<double> fp32_losses;
  {
    Trainer t(c.config);
    for (int i = 0; i < 6; ++i) fp32_losses.push_back(t.step().loss);
  }
  TrainConfig cfg = c.config;
  cfg.bf16_moments = true;
  const fs::path dir = fs::temp_directory_path() / "dsv_test_bf16_moments";
  fs::remove_all(dir);
  std::vector<double> losses;
  double want = 0.0;
  {
    Trainer a(cfg);
    for (int i = 0; i < 6; ++i) losses.push_back(a.step().loss);
    a.save_checkpoint(dir.string(), "", 1);
    want = a.step().loss;
  }
  // A bf16 moment rounding moves an update by ~2^-9 of itself: the losses stay within the fp32
  // trainer's PyTorch parity bound (1e-3 relative), and differ from step 2 on (the path really ran).
  for (size_t i = 0; i < losses.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_LE(std::abs(losses[i] - fp32_losses[i]), 1e-3 * std::abs(fp32_losses[i]));
  }
  EXPECT_EQ(losses[0], fp32_losses[0]);
  EXPECT_NE(losses[5], fp32_losses[5]);

  const SafetensorsFile optimizer((dir / "step_00000006" / "optimizer.safetensors").string());
  for (const auto& [name, t] : optimizer.tensors()) ASSERT_EQ(t.dtype, DType::BF16) << name;

  Trainer b(cfg);
  b.load_checkpoint(dir.string());
  const StepMetrics m = b.step();
  fs::remove_all(dir);
  EXPECT_EQ(m.step, 7);
  EXPECT_EQ(m.loss, want);
}

// Selective recomputation re-makes the norm outputs and MLA's queries, keys and values with the
// forward's own ops: every gradient is bit-identical to keeping them, on every fixture (with and
// without a q LoRA, MTP, tied heads, YaRN).
TEST_P(TrainFixture, SelectiveRecomputeGivesTheSameGradients) {
  const Case c = open_case(GetParam());
  const ParamStore plain = step1_gradients(c.config, true);
  TrainConfig selective = c.config;
  selective.recompute = "selective";
  const ParamStore again = step1_gradients(selective, true);
  for (int64_t i = 0; i < plain.total(); ++i) ASSERT_EQ(plain.grad_data()[i], again.grad_data()[i]) << i;
}

// drop_recomputable really frees the recomputable buffers, and recompute_dropped re-makes the same bits.
TEST(TrainRecompute, SelectiveDropsAndRemakesTheSameBuffers) {
  for (const char* name : {"v2_yarn", "v3_mtp"}) {  // without and with a q LoRA
    SCOPED_TRACE(name);
    const Case c = open_case(name);
    const ModelConfig mc = recipe_model_config(c.config);
    const ParamStore store = ParamStore::from_checkpoint(c.config.init_from, ops::Backend::Cpu, 0);
    const ops::Context ctx = store.model().context();
    const Batch batch{2, 5};
    const int64_t T = batch.tokens(), D = mc.hidden_size;
    std::vector<float> x(static_cast<size_t>(T * D));
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.7f * static_cast<float>(i));
    const Ropes ropes = make_ropes(ctx, mc, batch, 0);
    LayerSaved s;
    MoeStats stats;
    layer_forward(ctx, mc, store.model().weights.layers[0], x.data(), batch, ropes, AuxSpec{}, s, stats);
    const auto values = [](const Buffer<float>& b) { return std::vector<float>(b.data(), b.data() + b.size()); };
    const auto recomputable = [&](const LayerSaved& l) {
      return std::vector<std::vector<float>>{values(l.xn1),    values(l.xn2), values(l.attn.q_latent),
                                             values(l.attn.q), values(l.attn.latent), values(l.attn.k),
                                             values(l.attn.v)};
    };
    const auto before = recomputable(s);
    EXPECT_EQ(before[0].size(), static_cast<size_t>(T * D));
    EXPECT_EQ(before[1].size(), static_cast<size_t>(T * D));
    EXPECT_EQ(before[2].empty(), mc.q_lora_rank == 0);
    drop_recomputable(s);
    for (const auto& v : recomputable(s)) EXPECT_TRUE(v.empty());
    EXPECT_GT(s.x_in.size(), 0u);  // what the recomputation starts from stays
    EXPECT_GT(s.x_mid.size(), 0u);
    EXPECT_GT(s.attn.kv_a.size(), 0u);
    recompute_dropped(ctx, mc, store.model().weights.layers[0], batch, ropes, s);
    EXPECT_EQ(recomputable(s), before);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TrainFixture, ::testing::ValuesIn(train_cases()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace dsv::train
