// Backward of causal attention with Hkv == H (dense layouts; queries are the last T of S keys).
// Per (head, query) the probabilities are recomputed once, then one pass over the visible keys
// adds that query's share to dq, dk and dv:
//   P = softmax(scale * q.k), dP[s] = dout . v[s], dS[s] = P[s] * (dP[s] - sum_s' P[s'] dP[s'])
//   dq = scale * sum_s dS[s] k[s];  dk[s] += scale * dS[s] q;  dv[s] += P[s] dout
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_ops.h"

namespace dsv::ops::cpu {
namespace {

// fp32 dot product with independent partial sums (vectorizable without -ffast-math).
float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

}  // namespace

void attention_backward(const AttentionBackwardParams& p) {
  const int64_t T = p.T, S = p.S, H = p.H, Dk = p.Dqk, Dv = p.Dv, past = S - T;
  std::fill(p.dk, p.dk + S * H * Dk, 0.0f);
  std::fill(p.dv, p.dv + S * H * Dv, 0.0f);
  std::vector<float> prob(static_cast<size_t>(S)), dprob(static_cast<size_t>(S));
  // Head-major order: one head's k, v, dk, dv rows (4 * S * D floats) stay in cache across queries.
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t visible = past + t + 1;  // causal: keys 0 .. past + t
      const float* q = p.q + (t * H + h) * Dk;
      const float* dout = p.dout + (t * H + h) * Dv;
      float* dq = p.dq + (t * H + h) * Dk;

      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < visible; ++s) {
        prob[s] = dot(q, p.k + (s * H + h) * Dk, Dk) * p.scale;
        max_score = std::max(max_score, prob[s]);
      }
      double denom = 0.0;
      for (int64_t s = 0; s < visible; ++s) denom += (prob[s] = std::exp(prob[s] - max_score));
      const float inv = static_cast<float>(1.0 / denom);
      double row = 0.0;  // sum_s P[s] dP[s], in double: dS is a difference against it
      for (int64_t s = 0; s < visible; ++s) {
        prob[s] *= inv;
        dprob[s] = dot(dout, p.v + (s * H + h) * Dv, Dv);
        row += static_cast<double>(prob[s]) * dprob[s];
      }
      const float rowf = static_cast<float>(row);

      std::fill(dq, dq + Dk, 0.0f);
      for (int64_t s = 0; s < visible; ++s) {
        const float ds = prob[s] * (dprob[s] - rowf) * p.scale;
        const float* k = p.k + (s * H + h) * Dk;
        float* dk = p.dk + (s * H + h) * Dk;
        for (int64_t d = 0; d < Dk; ++d) {
          dq[d] += ds * k[d];
          dk[d] += ds * q[d];
        }
        const float w = prob[s];
        float* dv = p.dv + (s * H + h) * Dv;
        for (int64_t d = 0; d < Dv; ++d) dv[d] += w * dout[d];
      }
    }
  }
}

}  // namespace dsv::ops::cpu
