// Recipes: a good file, every override type, and each error naming file, key, expected and found.
#include <gtest/gtest.h>

#include <filesystem>

#include "test_helpers.h"
#include "train/recipe.h"

namespace dsv::train {
namespace {

const char* kGood = R"(
[model]
config = "cfg/config.json"
seed = 7
init_std = 0.01

[data]
tokens = "/abs/tokens.bin"
shuffle = true

[train]
micro_batch = 2
seq_len = 32
grad_accum = 3
steps = 50
device = "cuda"
recompute = "full"

[optimizer]
lr = 1e-3
min_lr = 0          # an integer where a number is expected is fine
warmup_steps = 5
schedule = "wsd"
decay_fraction = 0.2
bf16_moments = true

[loss]
mtp_depth = 1
seq_aux_alpha = 1e-4

[output]
out_dir = "../out"
log_interval = 10
)";

TrainConfig parse(const std::string& text, const std::vector<std::string>& overrides = {}) {
  return parse_recipe(text, "r.toml", "/recipes", overrides);
}

// The smallest valid recipe.
const std::string kMinimal = "[model]\nconfig = \"c.json\"\n[data]\ntokens = \"t.bin\"\n";

TEST(Recipe, GoodFileResolvesEveryKindOfKey) {
  const TrainConfig c = parse(kGood);
  EXPECT_EQ(c.model_config, "/recipes/cfg/config.json");  // relative: against the recipe's directory
  EXPECT_EQ(c.data_tokens, "/abs/tokens.bin");             // absolute: kept
  EXPECT_EQ(c.out_dir, "/out");                            // normalized
  EXPECT_EQ(c.seed, 7u);
  EXPECT_DOUBLE_EQ(c.init_std, 0.01);
  EXPECT_TRUE(c.shuffle);
  EXPECT_EQ(c.micro_batch, 2);
  EXPECT_EQ(c.seq_len, 32);
  EXPECT_EQ(c.grad_accum, 3);
  EXPECT_EQ(c.steps, 50);
  EXPECT_EQ(c.device, "cuda");
  EXPECT_EQ(c.recompute, "full");
  EXPECT_DOUBLE_EQ(c.lr, 1e-3);
  EXPECT_DOUBLE_EQ(c.min_lr, 0.0);
  EXPECT_EQ(c.warmup_steps, 5);
  EXPECT_EQ(c.schedule, "wsd");
  EXPECT_TRUE(c.bf16_moments);
  EXPECT_EQ(c.mtp_depth, 1);
  EXPECT_EQ(c.log_interval, 10);
  // Untouched keys keep train_config.h's defaults.
  EXPECT_DOUBLE_EQ(c.beta2, 0.95);
  EXPECT_EQ(c.max_bad_steps, 3);
  EXPECT_TRUE(c.init_from.empty());
}

TEST(Recipe, OverridesOfEveryType) {
  const TrainConfig c = parse(kGood, {"train.steps=7", "optimizer.lr=2.5e-4", "data.shuffle=false",
                                      "train.device=cpu", "optimizer.schedule=\"cosine\"", "model.seed=99",
                                      "model.init_from=rel/ckpt", "loss.mtp_depth=-1", "optimizer.lr=3e-4"});
  EXPECT_EQ(c.steps, 7);
  EXPECT_DOUBLE_EQ(c.lr, 3e-4);  // later overrides win
  EXPECT_FALSE(c.shuffle);
  EXPECT_EQ(c.device, "cpu");
  EXPECT_EQ(c.schedule, "cosine");  // quotes are optional
  EXPECT_EQ(c.seed, 99u);
  EXPECT_EQ(c.init_from, "rel/ckpt");  // override paths are relative to the working directory
  EXPECT_EQ(c.mtp_depth, -1);
}

TEST(Recipe, DescribeReadsBack) {
  const TrainConfig c = parse(kGood, {"output.tokenizer=/tok \"dir\""});
  const std::string text = describe(c);
  EXPECT_NE(text.find("[optimizer]\n"), std::string::npos);
  EXPECT_NE(text.find("min_lr = 0.0\n"), std::string::npos);
  const TrainConfig back = parse_recipe(text, "described.toml", "/elsewhere");
  EXPECT_EQ(describe(back), text);
  EXPECT_EQ(back.tokenizer, "/tok \"dir\"");
  EXPECT_EQ(back.model_config, c.model_config);
}

TEST(Recipe, LoadRecipeReadsAFileAndResolvesAgainstItsDirectory) {
  const auto dir = test::temp_dir("recipe");
  std::filesystem::create_directories(dir / "sub");
  test::write_raw(dir / "sub" / "r.toml", kMinimal);
  const TrainConfig c = load_recipe((dir / "sub" / "r.toml").string(), {"train.steps=3"});
  EXPECT_EQ(c.model_config, (dir / "sub" / "c.json").string());
  EXPECT_EQ(c.data_tokens, (dir / "sub" / "t.bin").string());
  EXPECT_EQ(c.steps, 3);
  test::expect_error([&] { load_recipe((dir / "missing.toml").string()); }, {"missing.toml", "cannot open"});
  std::filesystem::remove_all(dir);
}

TEST(Recipe, TheBundledDebugRecipeLoads) {
  const TrainConfig c = load_recipe(test::source_dir() + "/recipes/debug.toml");
  EXPECT_EQ(c.seq_len, 64);
  EXPECT_EQ(c.micro_batch, 4);
  EXPECT_EQ(c.device, "cpu");
  EXPECT_TRUE(std::filesystem::exists(c.data_tokens)) << c.data_tokens;
  EXPECT_TRUE(std::filesystem::exists(c.model_config.empty() ? c.init_from : c.model_config));
  const ModelConfig m = recipe_model_config(c);
  EXPECT_EQ(resolved_mtp_depth(c, m), m.num_nextn_predict_layers);
}

TEST(Recipe, UnknownSectionsAndKeys) {
  test::expect_error([] { parse(kMinimal + "[trian]\nsteps = 3\n"); }, {"r.toml:5", "unknown section \"trian\"", "[train]"});
  test::expect_error([] { parse(kMinimal + "[train]\nstep = 3\n"); }, {"r.toml:6", "unknown key train.step", "steps"});
  test::expect_error([] { parse("steps = 3\n" + kMinimal); }, {"r.toml:1", "steps"});
  test::expect_error([] { parse(kMinimal, {"train.stepz=3"}); }, {"r.toml", "train.stepz=3", "unknown key"});
  test::expect_error([] { parse(kMinimal, {"trian.steps=3"}); }, {"unknown section \"trian\""});
  test::expect_error([] { parse(kMinimal, {"train.steps"}); }, {"train.steps", "expected section.key=value"});
  test::expect_error([] { parse(kMinimal, {"steps=3"}); }, {"steps=3", "expected section.key=value"});
}

TEST(Recipe, WrongTypes) {
  test::expect_error([] { parse(kMinimal + "[train]\nsteps = \"ten\"\n"); },
                     {"r.toml:6", "train.steps", "expected an integer", "found the string \"ten\""});
  test::expect_error([] { parse(kMinimal + "[train]\nsteps = 1.5\n"); }, {"train.steps", "found the float 1.5"});
  test::expect_error([] { parse(kMinimal + "[optimizer]\nlr = \"fast\"\n"); }, {"optimizer.lr", "expected a number"});
  test::expect_error([] { parse(kMinimal + "[data]\n"); }, {"r.toml"});  // a repeated table is invalid TOML
  test::expect_error([] { parse("[model]\nconfig = 3\n"); }, {"model.config", "expected a string", "the integer 3"});
  test::expect_error([] { parse("[model]\nseed = -1\nconfig = \"c\"\n"); }, {"model.seed", "non-negative"});
  test::expect_error([] { parse(kMinimal, {"data.shuffle=yes"}); },
                     {"r.toml (override data.shuffle=yes)", "data.shuffle", "expected a boolean", "found \"yes\""});
  test::expect_error([] { parse(kMinimal, {"train.steps=1e3"}); }, {"train.steps", "expected an integer", "\"1e3\""});
  test::expect_error([] { parse(kMinimal, {"optimizer.lr=x"}); }, {"optimizer.lr", "expected a number", "\"x\""});
  test::expect_error([] { parse(kMinimal, {"model.seed=-3"}); }, {"model.seed", "\"-3\""});
  test::expect_error([] { parse("[model\nconfig = 1\n"); }, {"r.toml:1", "not valid TOML"});
}

TEST(Recipe, BadValues) {
  struct Case {
    std::string override_text;
    std::vector<std::string> needles;
  };
  const Case cases[] = {
      {"train.steps=-5", {"train.steps", "expected an integer >= 1", "found -5"}},
      {"train.steps=0", {"train.steps", ">= 1", "found 0"}},
      {"train.seq_len=1", {"train.seq_len", ">= 2", "found 1"}},
      {"train.micro_batch=0", {"train.micro_batch", ">= 1"}},
      {"train.grad_accum=0", {"train.grad_accum", ">= 1"}},
      {"train.max_bad_steps=0", {"train.max_bad_steps"}},
      {"optimizer.lr=-1e-3", {"optimizer.lr", ">= 0", "found -0.001"}},
      {"optimizer.lr=nan", {"optimizer.lr"}},
      {"optimizer.min_lr=1", {"optimizer.min_lr", "[0, optimizer.lr]"}},
      {"optimizer.beta1=1", {"optimizer.beta1", "[0, 1)", "found 1"}},
      {"optimizer.beta2=-0.5", {"optimizer.beta2", "[0, 1)"}},
      {"optimizer.eps=0", {"optimizer.eps", "> 0"}},
      {"optimizer.weight_decay=-1", {"optimizer.weight_decay"}},
      {"optimizer.clip_grad=-1", {"optimizer.clip_grad"}},
      {"optimizer.warmup_steps=-1", {"optimizer.warmup_steps", ">= 0"}},
      {"optimizer.decay_fraction=1.5", {"optimizer.decay_fraction", "[0, 1]"}},
      {"optimizer.schedule=linear", {"optimizer.schedule", "\"constant\", \"cosine\", \"wsd\"", "found \"linear\""}},
      {"train.recompute=some", {"train.recompute", "\"none\", \"selective\", \"full\"", "found \"some\""}},
      {"train.device=tpu", {"train.device", "\"cpu\", \"cuda\"", "found \"tpu\""}},
      {"loss.mtp_depth=-2", {"loss.mtp_depth", ">= -1"}},
      {"loss.mtp_lambda=-1", {"loss.mtp_lambda"}},
      {"loss.seq_aux_alpha=-1", {"loss.seq_aux_alpha"}},
      {"loss.expert_aux_alpha=-1", {"loss.expert_aux_alpha"}},
      {"loss.bias_update_gamma=-1", {"loss.bias_update_gamma"}},
      {"model.init_std=0", {"model.init_std"}},
      {"output.log_interval=0", {"output.log_interval"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.override_text);
    std::vector<std::string> needles = c.needles;
    needles.push_back("r.toml (override " + c.override_text + ")");  // the file and where the value came from
    try {
      parse(kMinimal, {c.override_text});
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    }
  }
  // A bad value written in the file names the file and line.
  test::expect_error([] { parse(kMinimal + "[train]\nsteps = -5\n"); }, {"r.toml:6", "train.steps", "found -5"});
  test::expect_error([] { parse(kMinimal + "[optimizer]\nbeta1 = 1.0\n"); }, {"r.toml:6", "optimizer.beta1"});
}

TEST(Recipe, ModelAndDataAreRequired) {
  test::expect_error([] { parse("[data]\ntokens = \"t\"\n"); },
                     {"r.toml", "model.config", "model.init_from", "found neither"});
  test::expect_error([] { parse("[model]\ninit_from = \"ckpt\"\n"); }, {"r.toml", "data.tokens"});
  // Either model key is enough; init_from alone (through an override) too.
  EXPECT_EQ(parse("[data]\ntokens = \"t\"\n", {"model.init_from=/ck"}).init_from, "/ck");
}

TEST(Recipe, ChecksAgainstTheModel) {
  ModelConfig m;
  m.num_nextn_predict_layers = 1;
  TrainConfig c;
  EXPECT_EQ(resolved_mtp_depth(c, m), 1);  // -1: what the config declares
  c.mtp_depth = 0;
  EXPECT_EQ(resolved_mtp_depth(c, m), 0);
  c.mtp_depth = 2;
  test::expect_error([&] { resolved_mtp_depth(c, m); }, {"loss.mtp_depth", "at most 1", "found 2"});
  m.max_position_embeddings = 128;
  test::expect_error([&] { check_recipe_fits(c, m); }, {"loss.mtp_depth"});
  c.mtp_depth = 1;
  c.seq_len = 128;
  check_recipe_fits(c, m);
  c.seq_len = 129;
  test::expect_error([&] { check_recipe_fits(c, m); }, {"train.seq_len", "at most 128", "found 129"});
}

}  // namespace
}  // namespace dsv::train
