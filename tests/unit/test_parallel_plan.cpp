// ParallelPlan: hand-computed numbers for a small MoE config, the layer split rules, every layout
// error, and the shipped recipes (they parse, and DeepSeek-V3's layout gives the published shapes).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "test_helpers.h"
#include "train/flops.h"
#include "train/parallel_plan.h"
#include "train/recipe.h"

namespace dsv::train {
namespace {

// V 100, D 8, F 16, Fe 4, 4 layers (1 dense + 3 MoE), 4 heads, no q_lora, C 4, Dn 2, R 2, Dv 2,
// 8 routed experts (top-2) + 1 shared, one MTP module.
const char* kSmall = R"({
  "model_type": "deepseek_v3", "vocab_size": 100, "hidden_size": 8, "intermediate_size": 16,
  "moe_intermediate_size": 4, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
  "q_lora_rank": null, "kv_lora_rank": 4, "qk_nope_head_dim": 2, "qk_rope_head_dim": 2, "v_head_dim": 2,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
  "first_k_dense_replace": 1, "num_nextn_predict_layers": 1, "max_position_embeddings": 64,
  "tie_word_embeddings": false
})";

ModelConfig small() { return parse_model_config(kSmall, "small config"); }

TrainConfig layout(int64_t gpus, int64_t tp, int64_t pp, int64_t ep) {
  TrainConfig t;
  t.gpus = gpus;
  t.tp = tp;
  t.pp = pp;
  t.ep = ep;
  t.micro_batch = 1;
  t.seq_len = 8;
  t.grad_accum = 4;
  t.recompute = "none";
  return t;
}

TEST(ParallelPlan, SmallConfigParameterCountsMatchTheHandSums) {
  // Per layer by holder (hand sums): attention q_proj 128 + kv_b 64 + o_proj 64 = 256 split over tp,
  // kv_a 48 + kv norm 4 + two layer norms 16 = 68 whole; dense FFN 3*8*16 = 384 split; MoE router
  // 64 + bias 8 whole, experts 8 * 96 = 768, shared expert 96 split.
  // Dense layer 708, MoE layer 1260, MTP module 1260 + 3 norms 24 + eh_proj 128 = 1412,
  // embedding and head 800 each, final norm 8: 1608 + 708 + 3 * 1260 = 6096.
  const ModelConfig c = small();
  EXPECT_EQ(c.params_total(), 6096);
  EXPECT_EQ(c.params_mtp(), 1412);
}

TEST(ParallelPlan, SmallConfigOnTwoStagesHandComputed) {
  const ModelConfig c = small();
  const ParallelPlan p = plan_parallel(layout(8, 2, 2, 4), c, 1);
  EXPECT_EQ(p.dp, 2);         // 8 / (2 * 2)
  EXPECT_EQ(p.expert_dp, 1);  // dp * tp / ep = 4 / 4
  EXPECT_EQ(p.global_batch, 8);  // 1 * 4 * 2
  EXPECT_EQ(p.tokens_per_step, 64);
  EXPECT_EQ(p.heads_per_tp_rank, 2);
  EXPECT_EQ(p.experts_per_ep_rank, 2);
  ASSERT_EQ(p.stages.size(), 2u);

  // Stage 0: layers 0 (dense) and 1 (MoE) + embedding; 2 micro-batches in flight.
  const StagePlan& s0 = p.stages[0];
  EXPECT_EQ(s0.first_layer, 0);
  EXPECT_EQ(s0.num_layers, 2);
  EXPECT_EQ(s0.moe_layers, 1);
  EXPECT_TRUE(s0.embedding);
  EXPECT_FALSE(s0.head);
  EXPECT_EQ(s0.in_flight, 2);
  // split 640 + 352 + 800 = 1792 / tp 2 = 896, whole 68 + 140 = 208; experts 768 / ep 4 = 192.
  EXPECT_DOUBLE_EQ(s0.dense_params, 1104);
  EXPECT_DOUBLE_EQ(s0.expert_params, 192);
  EXPECT_DOUBLE_EQ(s0.weight_bytes, 2 * 1296);
  EXPECT_DOUBLE_EQ(s0.grad_bytes, 4 * 1296);
  EXPECT_DOUBLE_EQ(s0.optimizer_bytes, 12 * (1104.0 / 2 + 192.0 / 1));
  // Activation floats per token: attention 4D + 2H Dqk + 2H Dv + H + 2C + R = 32 + 32 + 16 + 4 + 8 + 2
  // = 94; dense 94 + 2F = 126; MoE 94 + 2E + K + K (2Fe + D + 3) + 2 Fe = 94 + 16 + 2 + 38 + 8 = 158.
  // Stage 0: 2 in flight x (126 + 158) + working set 158 = 726 floats, x 4 bytes x 8 tokens / tp 2.
  EXPECT_DOUBLE_EQ(s0.activation_bytes, 726.0 * 16);

  // Stage 1: layers 2, 3 (MoE) + final norm, head, MTP; 1 micro-batch in flight.
  const StagePlan& s1 = p.stages[1];
  EXPECT_EQ(s1.first_layer, 2);
  EXPECT_EQ(s1.num_layers, 2);
  EXPECT_TRUE(s1.head);
  EXPECT_EQ(s1.in_flight, 1);
  // split 2 * 352 + 800 + 480 = 1984 / 2 = 992, whole 2 * 140 + 8 + 164 = 452; experts 3 * 768 / 4 = 576.
  EXPECT_DOUBLE_EQ(s1.dense_params, 1444);
  EXPECT_DOUBLE_EQ(s1.expert_params, 576);
  EXPECT_DOUBLE_EQ(s1.optimizer_bytes, 12 * (1444.0 / 2 + 576.0));
  // 2 x 158 + head 2V = 200 + MTP 7/8 x (158 + 7D) = 187.25, + working set 158.
  EXPECT_DOUBLE_EQ(s1.activation_bytes, (316 + 200 + 187.25 + 158) * 16);
  EXPECT_DOUBLE_EQ(s1.total_bytes(), 2 * 2020 + 4 * 2020 + 12 * 1298 + 861.25 * 16);
  EXPECT_EQ(p.busiest_stage, 1);
  EXPECT_TRUE(p.warnings.empty());
}

TEST(ParallelPlan, OneGpuMatchesTheSingleDeviceEstimates) {
  const ModelConfig c = small();
  TrainConfig t = layout(1, 1, 1, 1);
  for (const char* recompute : {"none", "full"}) {
    t.recompute = recompute;
    const ParallelPlan p = plan_parallel(t, c, 1);
    ASSERT_EQ(p.stages.size(), 1u);
    const StagePlan& s = p.stages[0];
    EXPECT_EQ(s.in_flight, 1);
    EXPECT_DOUBLE_EQ(s.dense_params + s.expert_params, static_cast<double>(trained_parameters(c, 1)));
    EXPECT_DOUBLE_EQ(s.optimizer_bytes, 12.0 * static_cast<double>(trained_parameters(c, 1)));
    EXPECT_DOUBLE_EQ(s.activation_bytes, activation_bytes_estimate(c, 1, 8, 1, recompute)) << recompute;
  }
  t.bf16_moments = true;
  EXPECT_DOUBLE_EQ(plan_parallel(t, c, 1).stages[0].optimizer_bytes, 8.0 * static_cast<double>(trained_parameters(c, 1)));
}

TEST(ParallelPlan, StagesHoldEveryParameterOnce) {
  // With tp = ep = 1 the stages' parameters add up to the model plus its MTP modules, for any pp.
  const ModelConfig c = small();
  for (int64_t pp = 1; pp <= 4; ++pp) {
    const ParallelPlan p = plan_parallel(layout(pp, 1, pp, 1), c, 1);
    double sum = 0;
    int64_t layers = 0;
    for (const StagePlan& s : p.stages) {
      sum += s.dense_params + s.expert_params;
      layers += s.num_layers;
    }
    EXPECT_DOUBLE_EQ(sum, static_cast<double>(trained_parameters(c, 1))) << "pp " << pp;
    EXPECT_EQ(layers, 4);
  }
}

TEST(ParallelPlan, LayerSplitRules) {
  using V = std::vector<int64_t>;
  EXPECT_EQ(split_layers(60, 4), V({15, 15, 15, 15}));
  // 61 over 16: the middle take 4, the first gives up 1 and the last 2 (NeMo's V3 layout).
  std::string rule;
  const V v3 = split_layers(61, 16, &rule);
  EXPECT_EQ(v3.front(), 3);
  EXPECT_EQ(v3.back(), 2);
  for (size_t i = 1; i + 1 < v3.size(); ++i) EXPECT_EQ(v3[i], 4);
  EXPECT_NE(rule.find("first stage gives up 1 and the last 2"), std::string::npos) << rule;
  EXPECT_EQ(split_layers(5, 2), V({3, 2}));
  // 17 over 16: the ends cannot absorb 15; floors of 1 go to the ends first, one stage keeps 2.
  const V fallback = split_layers(17, 16, &rule);
  int64_t twos = 0, total = 0;
  for (int64_t n : fallback) {
    twos += n == 2;
    total += n;
  }
  EXPECT_EQ(total, 17);
  EXPECT_EQ(twos, 1);
  EXPECT_EQ(fallback.front(), 1);
  EXPECT_EQ(fallback.back(), 1);
  EXPECT_NE(rule.find("smaller ones at the ends"), std::string::npos) << rule;
}

TEST(ParallelPlan, LayoutErrorsNameTheKeyAndTheRule) {
  const ModelConfig c = small();
  test::expect_error([&] { plan_parallel(layout(6, 2, 2, 1), c, 1); }, {"parallel.gpus", "multiple of tp * pp", "6"});
  test::expect_error([&] { plan_parallel(layout(3, 3, 1, 1), c, 1); },
                     {"parallel.tp", "num_attention_heads (4)", "found 3"});
  test::expect_error([&] { plan_parallel(layout(5, 1, 5, 1), c, 1); }, {"parallel.pp", "num_hidden_layers (4)", "5"});
  test::expect_error([&] { plan_parallel(layout(3, 1, 1, 3), c, 1); },
                     {"parallel.ep", "n_routed_experts (8)", "found 3"});
  // ep 8 divides the experts but not dp 2 x tp 2 = 4.
  test::expect_error([&] { plan_parallel(layout(8, 2, 2, 8), c, 1); },
                     {"parallel.ep", "dp 2 x tp 2 = 4", "found 8"});
}

TEST(ParallelPlan, WarnsAboveAnH100AndWithTooFewMicroBatches) {
  const ModelConfig c = small();
  TrainConfig t = layout(4, 1, 4, 1);
  t.grad_accum = 2;
  const ParallelPlan few = plan_parallel(t, c, 1);
  ASSERT_EQ(few.warnings.size(), 1u);
  EXPECT_NE(few.warnings[0].find("grad_accum 2 < pp 4"), std::string::npos);
  EXPECT_EQ(few.stages[0].in_flight, 2);  // min(pp, grad_accum)
  // A huge micro-batch: 25.6M tokens x ~4.7 KB of fp32 activations each pass 80 GB.
  t = layout(1, 1, 1, 1);
  t.micro_batch = 400000;
  t.seq_len = 64;
  const ParallelPlan big = plan_parallel(t, c, 1);
  ASSERT_GT(big.stages[0].total_bytes(), kH100MemoryBytes);
  ASSERT_EQ(big.warnings.size(), 1u);
  EXPECT_NE(big.warnings[0].find("more than the 80.0 GB of an H100"), std::string::npos) << big.warnings[0];
  EXPECT_NE(describe_plan(big).find("warning      the busiest GPU"), std::string::npos);
}

std::string recipe_path(const char* name) { return test::source_dir() + "/recipes/" + name; }

TEST(ParallelPlan, ShippedRecipesParseAndPlan) {
  for (const char* name : {"debug.toml", "deepseek_v2_lite_pretrain.toml", "deepseek_v2_pretrain.toml",
                           "deepseek_v3_pretrain.toml"}) {
    SCOPED_TRACE(name);
    const TrainConfig t = load_recipe(recipe_path(name));
    const ModelConfig c = recipe_model_config(t);
    check_recipe_fits(t, c);
    const ParallelPlan p = plan_parallel(t, c, resolved_mtp_depth(t, c));
    // Every shipped layout fits the GPU it is written for.
    EXPECT_TRUE(p.warnings.empty()) << describe_plan(p);
    EXPECT_LE(p.stages[static_cast<size_t>(p.busiest_stage)].total_bytes(), kH100MemoryBytes);
  }
}

TEST(ParallelPlan, DeepSeekV3RecipeLayout) {
  const TrainConfig t = load_recipe(recipe_path("deepseek_v3_pretrain.toml"));
  const ModelConfig c = recipe_model_config(t);
  const int64_t depth = resolved_mtp_depth(t, c);
  EXPECT_EQ(depth, 1);
  EXPECT_DOUBLE_EQ(t.mtp_lambda, 0.1);
  EXPECT_EQ(t.seq_len, 4096);
  const ParallelPlan p = plan_parallel(t, c, depth);
  EXPECT_EQ(p.gpus, 1024);
  EXPECT_EQ(p.dp, 32);            // 1024 / (tp 2 x pp 16)
  EXPECT_EQ(p.expert_dp, 1);      // dp 32 x tp 2 / ep 64
  EXPECT_EQ(p.global_batch, 4096);
  EXPECT_EQ(p.heads_per_tp_rank, 64);
  EXPECT_EQ(p.experts_per_ep_rank, 4);  // 256 / 64
  ASSERT_EQ(p.stages.size(), 16u);
  EXPECT_EQ(p.stages.front().num_layers, 3);  // the 3 dense layers
  EXPECT_EQ(p.stages.front().moe_layers, 0);
  EXPECT_EQ(p.stages.back().num_layers, 2);
  EXPECT_EQ(p.stages.front().in_flight, 16);
  // A middle stage: 4 MoE layers, each with 4 local experts of 3 x 7168 x 2048 parameters.
  const StagePlan& mid = p.stages[5];
  EXPECT_EQ(mid.moe_layers, 4);
  EXPECT_DOUBLE_EQ(mid.expert_params, 4.0 * 4 * 3 * 7168 * 2048);
  // Sanity: the trained 671B + 11.7B MTP are spread so that one GPU holds about 1.2B of them.
  EXPECT_NEAR(p.trained_params / 1e9, 671.0 + 11.7, 2.0);
  const double held = mid.dense_params + mid.expert_params;
  EXPECT_GT(held, 1.1e9);
  EXPECT_LT(held, 1.3e9);
}

TEST(ParallelPlan, DescribePlanShowsLayoutBatchAndAssumptions) {
  const TrainConfig t = load_recipe(recipe_path("deepseek_v3_pretrain.toml"));
  const ModelConfig c = recipe_model_config(t);
  const std::string text = describe_plan(plan_parallel(t, c, 1));
  for (const char* needle : {"1024 GPU(s) = tp 2 x pp 16 x dp 32", "ep 64", "global 4096 sequences per step",
                             "256 routed per MoE layer, 4 per ep rank", "128 heads, 64 per tp rank",
                             "3 | 4 x 14 | 2", "ZeRO-1", "busiest GPU"})
    EXPECT_NE(text.find(needle), std::string::npos) << "lacks \"" << needle << "\":\n" << text;
}

}  // namespace
}  // namespace dsv::train
