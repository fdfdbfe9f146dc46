// Resumable training checkpoints: the fp32 master weights (router bias buffers included), the Adam
// moments and the trainer's counters, saved so that a crash at any moment leaves the previous
// checkpoint whole. Format and protocol: docs/CHECKPOINTS.md.
//
// SAVE_DIR/
//   latest                 one line: the name of the newest complete step directory
//   step_NNNNNNNN/         NNNNNNNN = optimizer steps done (8 digits or more)
//     model.safetensors    fp32 weights under their HF names (the step dir is an HF checkpoint dir)
//     optimizer.safetensors  fp32 exp_avg.<hf name> (Adam m) and exp_avg_sq.<hf name> (Adam v)
//     config.json          the model's config.json text
//     trainer_state.json   format version, TrainingState, every other file with its byte size
//     tokenizer.json ...   the tokenizer files, when a tokenizer directory is given
//
// Test hook: when the environment variable DSV_TEST_KILL_DURING_SAVE names a stage, save_checkpoint
// raises SIGKILL there, as a crash or an OOM kill would: "after_model" (model.safetensors written
// into the temporary directory), "before_rename" (every file written and fsynced, the temporary
// directory not yet renamed), "before_latest" (step directory in place, `latest` not yet updated).
// With DSV_TEST_KILL_DURING_SAVE_STEP=N as well, only the save of step N is killed.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "train/param_store.h"

namespace dsv::train {

// What a resumed run needs besides the tensors.
struct TrainingState {
  int64_t step = 0;             // optimizer steps done: also the data position (samples are a function of it)
  int64_t adam_steps = 0;       // updates applied (AdamW bias correction); < step when steps were skipped
  int64_t consecutive_bad = 0;  // non-finite steps in a row
  nlohmann::json extra = nlohmann::json::object();  // free-form: recipe text, data description, seeds...
};

// Writes SAVE_DIR/step_NNNNNNNN/ (NNNNNNNN = state.step) through a temporary directory, fsync and
// rename, then points SAVE_DIR/latest at it, then deletes the oldest step directories beyond
// `keep_last` (0: keep all; never the one `latest` names) and temporary directories of killed saves.
// An existing step directory of the same number is replaced atomically. On failure (a full disk,
// a write error) the temporary directory is removed, `latest` and older checkpoints are untouched,
// and a dsv::Error names the path and the system error. `tokenizer_dir` may be empty. One process
// saves into a SAVE_DIR at a time. Returns the step directory's path.
std::string save_checkpoint(const std::string& save_dir, const ParamStore& store, const TrainingState& state,
                            const std::string& config_json_text, const std::string& tokenizer_dir,
                            int64_t keep_last);

// A save directory (with `latest`) -> the step directory `latest` names; a step directory (with
// trainer_state.json) -> itself; anything else -> dsv::Error saying what was expected.
std::string find_checkpoint(const std::string& dir);

// Checks the step directory (format version, file sizes, config.json, tensor names, shapes and
// dtypes) against `store`, and only then copies the weights (router bias buffers included) and the
// Adam moments into it. Returns the saved state. A checkpoint of another model is a dsv::Error
// listing the config.json fields that differ and the first tensor that does; `store` is untouched.
TrainingState load_checkpoint(const std::string& step_dir, const ParamStore& store);

}  // namespace dsv::train
