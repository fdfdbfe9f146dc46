#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace dsv {

int32_t argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

int32_t Sampler::next(const float* logits, int64_t vocab) {
  if (opt_.temperature <= 0.0f) return argmax(logits, vocab);
  // Order as transformers' warpers: temperature, then top-k, then top-p over what is left.
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int64_t keep = vocab;
  if (opt_.top_k > 0) keep = std::min<int64_t>(keep, opt_.top_k);
  std::vector<double> probs(static_cast<size_t>(keep));
  const double max_logit = logits[order[0]] / opt_.temperature;
  double sum = 0.0;
  for (int64_t i = 0; i < keep; ++i) sum += (probs[i] = std::exp(logits[order[i]] / opt_.temperature - max_logit));
  if (opt_.top_p < 1.0f) {
    // Smallest prefix whose probability mass reaches top_p (at least one token).
    double mass = 0.0;
    int64_t cut = 0;
    while (cut < keep) {
      mass += probs[cut] / sum;
      ++cut;
      if (mass >= opt_.top_p) break;
    }
    keep = std::max<int64_t>(cut, 1);
    sum = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  }
  std::uniform_real_distribution<double> uniform(0.0, sum);
  const double u = uniform(rng_);
  double acc = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += probs[i];
    if (u < acc) return order[i];
  }
  return order[keep - 1];
}

}  // namespace dsv
