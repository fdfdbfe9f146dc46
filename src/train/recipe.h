// Recipes: a TOML file (recipes/*.toml) plus `section.key=value` overrides -> a validated TrainConfig.
// The sections and keys are exactly the fields documented in train_config.h.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "train/train_config.h"

namespace dsv::train {

// Reads the recipe, applies the overrides in order (later wins), then validates the result.
// Relative paths in the file resolve against the file's directory; relative paths in overrides are
// kept as given (relative to the working directory). Every failure is a dsv::Error naming the file,
// the key (and the override it came from), what was expected and what was found.
TrainConfig load_recipe(const std::string& toml_path, const std::vector<std::string>& overrides = {});

// The same from TOML text: `origin` names it in errors, `base_dir` resolves relative paths.
TrainConfig parse_recipe(const std::string& toml_text, const std::string& origin, const std::string& base_dir,
                         const std::vector<std::string>& overrides = {});

// The resolved config as TOML, every key present (for --dry-run and run logs); load_recipe reads it back.
std::string describe(const TrainConfig& config);

// The architecture being trained: init_from/config.json when init_from is set, else model.config.
ModelConfig recipe_model_config(const TrainConfig& config);

// loss.mtp_depth resolved against the architecture (-1 -> num_nextn_predict_layers); throws when the
// recipe asks for more MTP modules than the config declares.
int64_t resolved_mtp_depth(const TrainConfig& config, const ModelConfig& model);

// Checks what needs the architecture: train.seq_len within max_position_embeddings, and mtp_depth as above.
void check_recipe_fits(const TrainConfig& config, const ModelConfig& model);

}  // namespace dsv::train
