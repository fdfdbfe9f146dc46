// Next-token choice from one row of logits: greedy, or temperature + top-k + top-p sampling with a
// seeded generator (same seed, same logits -> same tokens).
#pragma once
#include <cstdint>
#include <random>

namespace dsv {

struct SamplingOptions {
  float temperature = 0.0f;  // 0: greedy (argmax)
  int64_t top_k = 0;         // 0: no limit
  float top_p = 1.0f;        // 1: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& o) : opt_(o), rng_(o.seed) {}
  int32_t next(const float* logits, int64_t vocab);

 private:
  SamplingOptions opt_;
  std::mt19937_64 rng_;
};

int32_t argmax(const float* logits, int64_t n);  // first maximum, as torch.argmax

}  // namespace dsv
