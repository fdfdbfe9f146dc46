// Access to the training fixtures (tests/fixtures/train, made by tests/ref/make_train_fixtures.py),
// shared by the CPU tests and the CUDA tests.
#pragma once
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "train/model_train.h"
#include "train/param_store.h"
#include "train/recipe.h"
#include "train/token_data.h"
#include "train/trainer.h"

namespace dsv::train::test {

namespace fs = std::filesystem;

inline fs::path train_root() { return fs::path(DSV_SOURCE_DIR) / "tests" / "fixtures" / "train"; }

inline std::vector<std::string> train_cases() {
  std::vector<std::string> names;
  if (fs::exists(train_root()))
    for (const auto& e : fs::directory_iterator(train_root()))
      if (fs::exists(e.path() / "train.json")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

struct Case {
  fs::path dir;
  nlohmann::json meta;
  TrainConfig config;
};

inline Case open_case(const std::string& name) {
  Case c;
  c.dir = train_root() / name;
  std::ifstream in(c.dir / "train.json");
  c.meta = nlohmann::json::parse(in);
  std::vector<std::string> overrides;
  for (const auto& [key, value] : c.meta["config"].items()) {
    std::string v = value.is_string() ? value.get<std::string>() : value.dump();
    if (key == "model.init_from" || key == "data.tokens") v = (fs::path(DSV_SOURCE_DIR) / v).string();
    overrides.push_back(key + "=" + v);
  }
  c.config = parse_recipe("", "train.json of " + name, c.dir.string(), overrides);
  return c;
}

inline std::vector<float> read_f32(const SafetensorsFile& f, const std::string& name) {
  const TensorEntry& e = f.tensors().at(name);
  const float* p = reinterpret_cast<const float*>(e.data);
  int64_t n = 1;
  for (int64_t d : e.shape) n *= d;
  return std::vector<float>(p, p + n);
}

inline std::string sci(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3e", v);
  return buf;
}

// Step 1's gradients (summed over its micro-batches) with the case's settings, optionally with the
// balance losses switched off.
inline ParamStore step1_gradients(TrainConfig config, bool with_aux, ops::Backend backend = ops::Backend::Cpu) {
  if (!with_aux) config.seq_aux_alpha = config.expert_aux_alpha = 0.0;
  const ModelConfig mc = recipe_model_config(config);
  const int64_t depth = resolved_mtp_depth(config, mc);
  ParamStore store = ParamStore::from_checkpoint(config.init_from, backend, depth);
  TokenData data(config, mc.vocab_size);
  const int64_t B = config.micro_batch, S = config.seq_len;
  const PassOptions opt = pass_options(config, depth);
  std::vector<int32_t> windows(static_cast<size_t>(B * (S + 1)));
  for (int64_t a = 0; a < config.grad_accum; ++a) {
    data.fill_step(0, a, windows.data());
    forward_backward(store.model(), store.grads(), windows.data(), Batch{B, S}, opt);
  }
  return store;
}

}  // namespace dsv::train::test
