#include "infer/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace dsv {

GenerateResult generate(const Model& m, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                        const std::function<void(int32_t)>& on_token) {
  const ModelConfig& c = m.config;
  DSV_CHECK(!prompt.empty(), "generate: the prompt is empty (expected at least one token)");
  const int64_t total = static_cast<int64_t>(prompt.size()) + opt.max_new_tokens;
  DSV_CHECK(total <= c.max_position_embeddings,
            "prompt ({} tokens) + max-new-tokens ({}) = {} exceeds the model's context of {} tokens "
            "(max_position_embeddings)", prompt.size(), opt.max_new_tokens, total, c.max_position_embeddings);
  KvCache cache = make_kv_cache(m, total);
  Sampler sampler(opt.sampling);
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  GenerateResult result;
  using clock = std::chrono::steady_clock;

  auto t0 = clock::now();
  forward(m, prompt.data(), static_cast<int64_t>(prompt.size()), cache,
          {.all_logits = false, .logits = logits.data()});
  result.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  t0 = clock::now();
  BatchDecoder decoder(m, cache);  // one sequence; on CUDA its steps replay a captured graph
  // Emits one token; true when generation ends with it.
  auto emit = [&](int32_t id, int64_t step) {
    result.tokens.push_back(id);
    if (on_token) on_token(id);
    if (std::find(opt.stop_ids.begin(), opt.stop_ids.end(), id) != opt.stop_ids.end()) {
      result.stopped_at_eos = true;
      return true;
    }
    return step + 1 == opt.max_new_tokens;
  };
  int32_t id = sampler.next(logits.data(), c.vocab_size);
  if (opt.max_new_tokens > 0 && !emit(id, 0)) {
    if (opt.sampling.temperature <= 0.0f) {
      // Greedy: the device chooses (ops::argmax_rows) and feeds each next step itself; the host keeps
      // one step in flight ahead of the token it reads, so the GPU never waits for it. A stop token is
      // seen one step late: that step's extra row lands in this call's own cache only.
      decoder.enqueue_greedy(&id);
      for (int64_t step = 1;; ++step) {
        if (step + 1 < opt.max_new_tokens) decoder.enqueue_greedy(nullptr);
        decoder.read_greedy(&id);
        if (emit(id, step)) break;
      }
    } else {
      for (int64_t step = 1;; ++step) {
        decoder.step(&id, logits.data());
        id = sampler.next(logits.data(), c.vocab_size);
        if (emit(id, step)) break;
      }
    }
  }
  result.decode_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  return result;
}

}  // namespace dsv
