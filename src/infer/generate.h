// Autoregressive generation on the model's backend: one prefill over the prompt, then one token per
// step over the latent KV cache (BatchDecoder: on CUDA, a replayed graph per step).
#pragma once
#include <functional>
#include <vector>

#include "infer/sampler.h"
#include "model/model.h"

namespace dsv {

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  SamplingOptions sampling;
  std::vector<int64_t> stop_ids;  // generation ends after emitting one of these (EOS)
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (the stop id included when one was hit)
  bool stopped_at_eos = false;
  double prefill_seconds = 0, decode_seconds = 0;
};

// on_token (optional) is called for each new id as soon as it is chosen (streaming output).
GenerateResult generate(const Model& m, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                        const std::function<void(int32_t)>& on_token = {});

}  // namespace dsv
