// Multi-head latent attention (DeepSeek-V2 s2.1). The cache holds only the normalized latent c_kv [C]
// and the roped shared key k_rope [R] per token. Two equivalent forms: expanded (keys and values of
// all heads re-made through kv_b_proj; cheaper when most keys are new, as in prefill) and absorbed
// (attention directly over the cached rows; cheaper for decode, and what the CUDA decode kernel does).
#include <vector>

#include "core/error.h"

#include "model/layers/layers.h"
#include "ops/ops.h"

namespace dsv::layers {

// transformers builds q_a_layernorm / kv_a_layernorm with the RMSNorm default eps, not rms_norm_eps.
constexpr double kLatentNormEps = 1e-6;

void mla(const ModelConfig& c, const MlaWeights& w, const float* x, int64_t T, KvCache& cache, int64_t cache_layer,
         const RopeTable& rope, MlaMode mode, float* out, const TapFn& tap, int64_t layer) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads, Q = c.q_lora_rank, C = c.kv_lora_rank,
                R = c.qk_rope_head_dim, Dn = c.qk_nope_head_dim, Dv = c.v_head_dim, Dqk = Dn + R;
  const ops::Context ctx;

  // Queries q[T, H, Dn + R].
  std::vector<float> q(static_cast<size_t>(T * H * Dqk));
  if (Q > 0) {
    std::vector<float> q_latent(static_cast<size_t>(T * Q));
    ops::linear(ctx, {.x = x, .w = w.q_a_proj.data, .bias = w.q_a_proj_bias.data, .y = q_latent.data(), .M = T,
                      .N = Q, .K = D});
    rmsnorm_rows(q_latent.data(), w.q_a_layernorm, T, kLatentNormEps, q_latent.data());
    ops::linear(ctx, {.x = q_latent.data(), .w = w.q_b_proj.data, .y = q.data(), .M = T, .N = H * Dqk, .K = Q});
  } else {
    ops::linear(ctx, {.x = x, .w = w.q_proj.data, .y = q.data(), .M = T, .N = H * Dqk, .K = D});
  }

  // Compressed KV: kv_a[T, C + R] = latent | shared rope key; normalize the latent, rope the key.
  const int64_t base = cache.length;
  DSV_CHECK(base + T <= cache.capacity, "KV cache full: {} + {} tokens exceed its capacity of {}", base, T,
            cache.capacity);
  float* cache_rows = cache.row(cache_layer, base);  // [T, C + R], written in place
  ops::linear(ctx, {.x = x, .w = w.kv_a_proj.data, .bias = w.kv_a_proj_bias.data, .y = cache_rows, .M = T,
                    .N = C + R, .K = D, .y_stride = cache.width});
  ops::rmsnorm(ctx, {.x = cache_rows, .weight = w.kv_a_layernorm.data, .y = cache_rows, .rows = T, .dim = C,
                     .x_stride = cache.width, .y_stride = cache.width, .eps = static_cast<float>(kLatentNormEps)});
  ops::rope(ctx, {.x = q.data(), .cos = rope.cos.data(), .sin = rope.sin.data(), .tokens = T, .heads = H,
                  .rope_dim = R, .token_stride = H * Dqk, .head_stride = Dqk, .offset = Dn, .layout = c.rope_layout});
  ops::rope(ctx, {.x = cache_rows, .cos = rope.cos.data(), .sin = rope.sin.data(), .tokens = T, .heads = 1,
                  .rope_dim = R, .token_stride = cache.width, .head_stride = cache.width, .offset = C,
                  .layout = c.rope_layout});
  emit(tap, "q", layer, q.data(), {T, H, Dqk});
  emit(tap, "kv_latent", layer, cache_rows, {T, C + R});

  const int64_t S = base + T;
  const float scale = static_cast<float>(c.softmax_scale());
  std::vector<float> attn(static_cast<size_t>(T * H * Dv));
  const bool absorbed = mode == MlaMode::Absorbed || (mode == MlaMode::Auto && T == 1);
  if (!absorbed) {
    // Expanded: keys and values of all S cached positions, kv[S, H, Dn + Dv] = latent . kv_b^T.
    std::vector<float> kv(static_cast<size_t>(S * H * (Dn + Dv)));
    ops::linear(ctx, {.x = cache.row(cache_layer, 0), .w = w.kv_b_proj.data, .y = kv.data(), .M = S,
                      .N = H * (Dn + Dv), .K = C, .x_stride = cache.width});
    std::vector<float> k(static_cast<size_t>(S * H * Dqk)), v(static_cast<size_t>(S * H * Dv));
    for (int64_t s = 0; s < S; ++s) {
      const float* k_rope = cache.row(cache_layer, s) + C;
      for (int64_t h = 0; h < H; ++h) {
        const float* src = kv.data() + (s * H + h) * (Dn + Dv);
        float* kd = k.data() + (s * H + h) * Dqk;
        std::copy(src, src + Dn, kd);
        std::copy(k_rope, k_rope + R, kd + Dn);  // the one rope key is shared by all heads
        std::copy(src + Dn, src + Dn + Dv, v.data() + (s * H + h) * Dv);
      }
    }
    ops::attention(ctx, {.q = q.data(), .k = k.data(), .v = v.data(), .out = attn.data(), .T = T, .S = S, .H = H,
                         .Dqk = Dqk, .Dv = Dv, .scale = scale});
  } else {
    // Absorbed (DeepSeek-V2 s2.1.2): fold W_UK into the query and W_UV after the attention, so all
    // heads attend over the cached rows [C + R] themselves, as one shared key/value head:
    //   q_lat[t, h] = [W_UK[h]^T q_nope[t, h] ; q_rope[t, h]]        [C + R]
    //   o_lat[t, h] = sum_s softmax_s(q_lat . row_s * scale) row_s[:C]   [C]
    //   out[t, h]   = W_UV[h] o_lat[t, h]                             [Dv]
    std::vector<float> q_lat(static_cast<size_t>(T * H * (C + R)), 0.0f);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const float* qn = q.data() + (t * H + h) * Dqk;
        float* ql = q_lat.data() + (t * H + h) * (C + R);
        const float* w_uk = w.kv_b_proj.data + h * (Dn + Dv) * C;  // [Dn, C]
        for (int64_t d = 0; d < Dn; ++d)
          for (int64_t i = 0; i < C; ++i) ql[i] += qn[d] * w_uk[d * C + i];
        std::copy(qn + Dn, qn + Dqk, ql + C);
      }
    std::vector<float> o_lat(static_cast<size_t>(T * H * C));
    const float* rows = cache.row(cache_layer, 0);
    ops::attention(ctx, {.q = q_lat.data(), .k = rows, .v = rows, .out = o_lat.data(), .T = T, .S = S, .H = H,
                         .Dqk = C + R, .Dv = C, .Hkv = 1, .k_stride = cache.width, .v_stride = cache.width,
                         .scale = scale});
    for (int64_t h = 0; h < H; ++h)
      ops::linear(ctx, {.x = o_lat.data() + h * C, .w = w.kv_b_proj.data + (h * (Dn + Dv) + Dn) * C,
                        .y = attn.data() + h * Dv, .M = T, .N = Dv, .K = C, .x_stride = H * C, .y_stride = H * Dv});
  }
  emit(tap, "attn_heads", layer, attn.data(), {T, H, Dv});
  ops::linear(ctx, {.x = attn.data(), .w = w.o_proj.data, .bias = w.o_proj_bias.data, .y = out, .M = T, .N = D,
                    .K = H * Dv});
}

}  // namespace dsv::layers
