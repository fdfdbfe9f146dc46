// MLA training forward (expanded form) and backward. Per head h the attention sees
//   k[t, h] = [latent[t] . Wkv_b[h, key rows]^T ; rope(kv_a[t, C:])]    (one rope key shared by heads)
//   v[t, h] = latent[t] . Wkv_b[h, value rows]^T
// so the shared rope key's gradient is the sum over heads, and kv_b_proj's is one product over all.
#include "core/error.h"
#include "train/param_store.h"
#include "train/train_layers.h"
#include "ops/ops.h"

namespace dsv::train {
namespace {
constexpr float kLatentNormEps = 1e-6f;  // q_a / kv_a layernorms (see model/layers/mla.cpp)

void rope_rows(const ops::Context& ctx, const ModelConfig& c, const layers::RopeTable& table, float* x, int64_t T,
               int64_t heads, int64_t token_stride, int64_t head_stride, int64_t offset) {
  ops::rope(ctx, {.x = x, .cos = table.cos.data(), .sin = table.sin.data(), .tokens = T, .heads = heads,
                  .rope_dim = c.qk_rope_head_dim, .token_stride = token_stride, .head_stride = head_stride,
                  .offset = offset, .layout = c.rope_layout});
}
}  // namespace

Ropes make_ropes(const ops::Context& ctx, const ModelConfig& c, Batch batch, int64_t first_position) {
  // Row t sits at position first_position + t % length (built on the backend: on a GPU host-side tables
  // of 2 x 4096 rows took ~3 ms each while the device waited).
  return Ropes{layers::make_rope_table(ctx, c, first_position, batch.length, batch.sequences),
               layers::make_rope_table(ctx, c, first_position, batch.length, batch.sequences, true)};
}

// The queries from the saved down-projection: q = rope(q_b_proj(norm(q_latent_raw))), or
// rope(q_proj(xn)) without a q LoRA. Shared by the forward and selective recomputation.
void mla_make_queries(const ops::Context& ctx, const ModelConfig& c, const MlaWeights& w, const float* xn, Batch batch,
                      const Ropes& ropes, MlaSaved& s) {
  const int64_t T = batch.tokens(), D = c.hidden_size, H = c.num_attention_heads, Q = c.q_lora_rank,
                Dn = c.qk_nope_head_dim, Dqk = Dn + c.qk_rope_head_dim;
  const ops::Backend be = ctx.backend;
  s.q = Buffer<float>(be, T * H * Dqk);
  if (Q > 0) {
    s.q_latent = Buffer<float>(be, T * Q);
    ops::rmsnorm(ctx, {.x = s.q_latent_raw.data(), .weight = w.q_a_layernorm.data, .y = s.q_latent.data(),
                       .rows = T, .dim = Q, .eps = kLatentNormEps});
    ops::linear(ctx, {.x = s.q_latent.data(), .w = w.q_b_proj.data, .y = s.q.data(), .M = T, .N = H * Dqk, .K = Q});
  } else {
    ops::linear(ctx, {.x = xn, .w = w.q_proj.data, .y = s.q.data(), .M = T, .N = H * Dqk, .K = D});
  }
  rope_rows(ctx, c, ropes.forward, s.q.data(), T, H, H * Dqk, Dqk, Dn);
}

// Keys and values from the saved kv_a = [latent before its norm ; rope key before rope]:
// latent = norm(kv_a[:, :C]), k = [kv_b_proj(latent) key rows ; rope(kv_a[:, C:])], v = value rows.
void mla_make_keys_values(const ops::Context& ctx, const ModelConfig& c, const MlaWeights& w, Batch batch,
                          const Ropes& ropes, MlaSaved& s) {
  const int64_t T = batch.tokens(), H = c.num_attention_heads, C = c.kv_lora_rank, R = c.qk_rope_head_dim,
                Dn = c.qk_nope_head_dim, Dv = c.v_head_dim, Dqk = Dn + R;
  const ops::Backend be = ctx.backend;
  s.latent = Buffer<float>(be, T * C);
  ops::rmsnorm(ctx, {.x = s.kv_a.data(), .weight = w.kv_a_layernorm.data, .y = s.latent.data(), .rows = T, .dim = C,
                     .x_stride = C + R, .eps = kLatentNormEps});
  Buffer<float> k_rope(be, T * R);
  ops::copy2d(ctx, {.src = s.kv_a.data() + C, .dst = k_rope.data(), .rows = T, .cols = R, .src_stride = C + R,
                    .dst_stride = R});
  rope_rows(ctx, c, ropes.forward, k_rope.data(), T, 1, R, R, 0);

  // kv[T, H, Dn + Dv] -> k[T, H, Dqk] = [nope ; shared rope key], v[T, H, Dv]
  Buffer<float> kv(be, T * H * (Dn + Dv));
  s.k = Buffer<float>(be, T * H * Dqk);
  s.v = Buffer<float>(be, T * H * Dv);
  ops::linear(ctx, {.x = s.latent.data(), .w = w.kv_b_proj.data, .y = kv.data(), .M = T, .N = H * (Dn + Dv), .K = C});
  if (Dn > 0)
    ops::copy2d(ctx, {.src = kv.data(), .dst = s.k.data(), .rows = T * H, .cols = Dn, .src_stride = Dn + Dv,
                      .dst_stride = Dqk});
  ops::copy2d(ctx, {.src = k_rope.data(), .dst = s.k.data() + Dn, .rows = T, .cols = R, .src_stride = R,
                    .dst_stride = H * Dqk, .batch = H, .src_batch_stride = 0, .dst_batch_stride = Dqk});  // shared by all heads
  ops::copy2d(ctx, {.src = kv.data() + Dn, .dst = s.v.data(), .rows = T * H, .cols = Dv, .src_stride = Dn + Dv,
                    .dst_stride = Dv});
}

void mla_forward(const ops::Context& ctx, const ModelConfig& c, const MlaWeights& w, const float* xn, Batch batch,
                 const Ropes& ropes, float* out, MlaSaved& s) {
  const int64_t T = batch.tokens(), S = batch.length, D = c.hidden_size, H = c.num_attention_heads,
                Q = c.q_lora_rank, C = c.kv_lora_rank, R = c.qk_rope_head_dim, Dn = c.qk_nope_head_dim,
                Dv = c.v_head_dim, Dqk = Dn + R;
  const ops::Backend be = ctx.backend;
  if (Q > 0) {
    s.q_latent_raw = Buffer<float>(be, T * Q);
    ops::linear(ctx, {.x = xn, .w = w.q_a_proj.data, .bias = w.q_a_proj_bias.data, .y = s.q_latent_raw.data(),
                      .M = T, .N = Q, .K = D});
  }
  mla_make_queries(ctx, c, w, xn, batch, ropes, s);
  s.kv_a = Buffer<float>(be, T * (C + R));
  ops::linear(ctx, {.x = xn, .w = w.kv_a_proj.data, .bias = w.kv_a_proj_bias.data, .y = s.kv_a.data(), .M = T,
                    .N = C + R, .K = D});
  mla_make_keys_values(ctx, c, w, batch, ropes, s);

  s.attn = Buffer<float>(be, T * H * Dv);
  s.lse = Buffer<float>(be, T * H);
  const float scale = static_cast<float>(c.softmax_scale());
  for (int64_t b = 0; b < batch.sequences; ++b)  // causal within each sequence
    ops::attention(ctx, {.q = s.q.data() + b * S * H * Dqk, .k = s.k.data() + b * S * H * Dqk,
                         .v = s.v.data() + b * S * H * Dv, .out = s.attn.data() + b * S * H * Dv, .T = S, .S = S,
                         .H = H, .Dqk = Dqk, .Dv = Dv, .scale = scale, .lse = s.lse.data() + b * S * H});
  ops::linear(ctx, {.x = s.attn.data(), .w = w.o_proj.data, .bias = w.o_proj_bias.data, .y = out, .M = T, .N = D,
                    .K = H * Dv});
}

void mla_backward(const ops::Context& ctx, const ModelConfig& c, const MlaWeights& w, const MlaWeights& g,
                  const float* xn, Batch batch, const Ropes& ropes, const MlaSaved& s, const float* dout, float* dxn) {
  const int64_t T = batch.tokens(), S = batch.length, D = c.hidden_size, H = c.num_attention_heads,
                Q = c.q_lora_rank, C = c.kv_lora_rank, R = c.qk_rope_head_dim, Dn = c.qk_nope_head_dim,
                Dv = c.v_head_dim, Dqk = Dn + R;
  const ops::Backend be = ctx.backend;

  // o_proj
  Buffer<float> dattn(be, T * H * Dv);
  ops::linear_backward(ctx, {.dy = dout, .x = s.attn.data(), .w = w.o_proj.data, .dx = dattn.data(),
                             .dw = mut(g.o_proj), .dbias = mut(g.o_proj_bias), .M = T, .N = D, .K = H * Dv,
                             .accumulate_dw = true});

  // attention, per sequence
  Buffer<float> dq(be, T * H * Dqk), dk(be, T * H * Dqk), dv(be, T * H * Dv);
  const float scale = static_cast<float>(c.softmax_scale());
  for (int64_t b = 0; b < batch.sequences; ++b)
    ops::attention_backward(ctx, {.q = s.q.data() + b * S * H * Dqk, .k = s.k.data() + b * S * H * Dqk,
                                  .v = s.v.data() + b * S * H * Dv, .dout = dattn.data() + b * S * H * Dv,
                                  .dq = dq.data() + b * S * H * Dqk, .dk = dk.data() + b * S * H * Dqk,
                                  .dv = dv.data() + b * S * H * Dv, .T = S, .S = S, .H = H, .Dqk = Dqk, .Dv = Dv,
                                  .scale = scale, .out = s.attn.data() + b * S * H * Dv,
                                  .lse = s.lse.data() + b * S * H});

  // k, v -> kv_b_proj and the latent; the shared rope key collects every head's rope gradient.
  Buffer<float> dkv(be, T * H * (Dn + Dv)), dkv_a(be, T * (C + R)), dk_rope(be, T * R);
  if (Dn > 0)
    ops::copy2d(ctx, {.src = dk.data(), .dst = dkv.data(), .rows = T * H, .cols = Dn, .src_stride = Dqk,
                      .dst_stride = Dn + Dv});
  ops::copy2d(ctx, {.src = dv.data(), .dst = dkv.data() + Dn, .rows = T * H, .cols = Dv, .src_stride = Dv,
                    .dst_stride = Dn + Dv});
  ops::copy2d(ctx, {.src = dk.data() + Dn, .dst = dk_rope.data(), .rows = T, .cols = R, .src_stride = H * Dqk,
                    .dst_stride = R});
  if (H > 1) {
    Buffer<float> head(be, T * R);
    for (int64_t h = 1; h < H; ++h) {
      ops::copy2d(ctx, {.src = dk.data() + h * Dqk + Dn, .dst = head.data(), .rows = T, .cols = R,
                        .src_stride = H * Dqk, .dst_stride = R});
      ops::add(ctx, {.x = head.data(), .y = dk_rope.data(), .n = T * R});
    }
  }
  Buffer<float> dlatent(be, T * C);
  ops::linear_backward(ctx, {.dy = dkv.data(), .x = s.latent.data(), .w = w.kv_b_proj.data, .dx = dlatent.data(),
                             .dw = mut(g.kv_b_proj), .M = T, .N = H * (Dn + Dv), .K = C, .accumulate_dw = true});
  rope_rows(ctx, c, ropes.backward, dk_rope.data(), T, 1, R, R, 0);
  ops::rmsnorm_backward(ctx, {.x = s.kv_a.data(), .weight = w.kv_a_layernorm.data, .dy = dlatent.data(),
                              .dx = dkv_a.data(), .dweight = mut(g.kv_a_layernorm), .rows = T, .dim = C,
                              .x_stride = C + R, .dy_stride = C, .dx_stride = C + R, .eps = kLatentNormEps});
  ops::copy2d(ctx, {.src = dk_rope.data(), .dst = dkv_a.data() + C, .rows = T, .cols = R, .src_stride = R,
                    .dst_stride = C + R});
  ops::linear_backward(ctx, {.dy = dkv_a.data(), .x = xn, .w = w.kv_a_proj.data, .dx = dxn, .dw = mut(g.kv_a_proj),
                             .dbias = mut(g.kv_a_proj_bias), .M = T, .N = C + R, .K = D, .accumulate_dw = true});

  // queries
  rope_rows(ctx, c, ropes.backward, dq.data(), T, H, H * Dqk, Dqk, Dn);
  if (Q > 0) {
    Buffer<float> dq_latent(be, T * Q), dq_latent_raw(be, T * Q);
    ops::linear_backward(ctx, {.dy = dq.data(), .x = s.q_latent.data(), .w = w.q_b_proj.data, .dx = dq_latent.data(),
                               .dw = mut(g.q_b_proj), .M = T, .N = H * Dqk, .K = Q, .accumulate_dw = true});
    ops::rmsnorm_backward(ctx, {.x = s.q_latent_raw.data(), .weight = w.q_a_layernorm.data, .dy = dq_latent.data(),
                                .dx = dq_latent_raw.data(), .dweight = mut(g.q_a_layernorm), .rows = T, .dim = Q,
                                .eps = kLatentNormEps});
    ops::linear_backward(ctx, {.dy = dq_latent_raw.data(), .x = xn, .w = w.q_a_proj.data, .dx = dxn,
                               .dw = mut(g.q_a_proj), .dbias = mut(g.q_a_proj_bias), .M = T, .N = Q, .K = D,
                               .accumulate_dx = true, .accumulate_dw = true});
  } else {
    ops::linear_backward(ctx, {.dy = dq.data(), .x = xn, .w = w.q_proj.data, .dx = dxn, .dw = mut(g.q_proj), .M = T,
                               .N = H * Dqk, .K = D, .accumulate_dx = true, .accumulate_dw = true});
  }
}

}  // namespace dsv::train
