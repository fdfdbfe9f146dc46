// Multi-head latent attention (DeepSeek-V2 s2.1). The cache holds only the normalized latent c_kv [C]
// and the roped shared key k_rope [R] per token. Two equivalent forms: expanded (keys and values of
// all heads re-made through kv_b_proj; cheaper when most keys are new, as in prefill) and absorbed
// (attention directly over the cached rows; cheaper for decode, and what the CUDA decode kernel does).
#include <optional>

#include "core/error.h"
#include "model/layers/layers.h"
#include "ops/ops.h"

namespace dsv::layers {

// transformers builds q_a_layernorm / kv_a_layernorm with the RMSNorm default eps, not rms_norm_eps.
constexpr double kLatentNormEps = 1e-6;

void mla(const ops::Context& ctx, const ModelConfig& c, const MlaWeights& w, const float* x, int64_t T,
         KvCache& cache, int64_t cache_layer, const TokenSlots& slots, MlaMode mode, float* out, const TapFn& tap,
         int64_t layer) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads, Q = c.q_lora_rank, C = c.kv_lora_rank,
                R = c.qk_rope_head_dim, Dn = c.qk_nope_head_dim, Dv = c.v_head_dim, Dqk = Dn + R;
  const ops::Backend be = ctx.backend;

  // Until the attention the queries and the new latent rows are independent chains: the rows go on a
  // branch (ops::Branch), so on a device their small kernels overlap the query products.
  ops::Branch kv_branch(ctx);
  const ops::Context& kv_ctx = kv_branch.side();

  // Queries q[T, H, Dn + R].
  ops::Buffer<float> q(be, T * H * Dqk);
  if (Q > 0) {
    ops::Buffer<float> q_latent(be, T * Q);
    ops::linear(ctx, {.x = x, .w = w.q_a_proj.data, .w_bf16 = w.q_a_proj.bf16, .bias = w.q_a_proj_bias.data, .y = q_latent.data(), .M = T,
                      .N = Q, .K = D});
    ops::rmsnorm(ctx, {.x = q_latent.data(), .weight = w.q_a_layernorm.data, .y = q_latent.data(), .rows = T,
                       .dim = Q, .eps = static_cast<float>(kLatentNormEps)});
    ops::linear(ctx, {.x = q_latent.data(), .w = w.q_b_proj.data, .w_bf16 = w.q_b_proj.bf16, .y = q.data(), .M = T, .N = H * Dqk, .K = Q});
  } else {
    ops::linear(ctx, {.x = x, .w = w.q_proj.data, .w_bf16 = w.q_proj.bf16, .y = q.data(), .M = T, .N = H * Dqk, .K = D});
  }

  // Compressed KV: kv_a[T, C + R] = latent | shared rope key, written straight into fp32 cache rows
  // (one sequence), or into fresh fp32 rows then stored (rounded into a bf16 cache, or scattered to
  // each sequence's next row in a batched step); normalize the latent, rope the key.
  const bool batched = slots.write_rows != nullptr;
  const int64_t base = slots.first, seq = slots.sequence, width = cache.width;
  DSV_CHECK(seq >= 0 && seq < cache.sequences, "KV cache: sequence {} of {}", seq, cache.sequences);
  DSV_CHECK(batched || base + T <= cache.capacity, "KV cache full: {} + {} tokens exceed its capacity of {}", base, T,
            cache.capacity);
  DSV_CHECK(!batched || (T <= cache.sequences && mode != MlaMode::Expanded),
            "batched decode: {} rows for {} cached sequences, absorbed attention only", T, cache.sequences);
  ops::Buffer<float> fresh(be, cache.bf16 || batched ? T * width : 0);
  float* cache_rows = fresh.size() ? fresh.data() : cache.row(cache_layer, base, seq);
  ops::linear(kv_ctx, {.x = x, .w = w.kv_a_proj.data, .w_bf16 = w.kv_a_proj.bf16, .bias = w.kv_a_proj_bias.data,
                       .y = cache_rows, .M = T, .N = C + R, .K = D, .y_stride = width});
  // One op normalizes the latent and ropes the key: straight into the cache rows (in place for an fp32
  // single-sequence cache), or, when a tap wants the finished fp32 rows, in place in `fresh` and then
  // stored.
  const bool direct = !tap || fresh.size() == 0;
  float* y = !direct ? cache_rows : cache.bf16 ? nullptr : cache.row(cache_layer, 0, batched ? 0 : seq);
  uint16_t* y_bf16 = direct && cache.bf16 ? cache.row_bf16(cache_layer, 0, batched ? 0 : seq) : nullptr;
  ops::store_latent_rows(kv_ctx, {.x = cache_rows, .weight = w.kv_a_layernorm.data, .cos = slots.cos, .sin = slots.sin,
                                  .rows = direct && batched ? slots.write_rows : nullptr, .y = y, .y_bf16 = y_bf16,
                                  .n = T, .C = C, .R = R, .x_stride = width, .y_stride = width,
                                  .first = direct && !batched ? base : 0, .eps = static_cast<float>(kLatentNormEps),
                                  .layout = c.rope_layout});
  if (!direct && batched)
    ops::store_rows(kv_ctx, {.rows = slots.write_rows, .x = cache_rows, .y = cache.bf16 ? nullptr : cache.row(cache_layer, 0),
                             .y_bf16 = cache.bf16 ? cache.row_bf16(cache_layer, 0) : nullptr, .n = T, .D = width});
  else if (!direct)
    ops::cast(kv_ctx, {.x = cache_rows, .y = cache.row_bf16(cache_layer, base, seq), .n = T * width, .to_bf16 = true});

  const bool absorbed = batched || mode == MlaMode::Absorbed || (mode == MlaMode::Auto && T == 1);
  // Absorbed attention needs q's rope dims only inside q_lat: they are roped straight into it below
  // (one op instead of a rope and a copy) unless a tap wants to see the roped q itself.
  const bool rope_q_into_latent = absorbed && !tap;
  if (!rope_q_into_latent)
    ops::rope(ctx, {.x = q.data(), .cos = slots.cos, .sin = slots.sin, .tokens = T, .heads = H, .rope_dim = R,
                    .token_stride = H * Dqk, .head_stride = Dqk, .offset = Dn, .layout = c.rope_layout});

  // The chains meet before the attention reads the cache; taps see both results after it.
  const auto join_chains = [&] {
    kv_branch.join();
    emit(ctx, tap, "q", layer, q.data(), {T, H, Dqk});
    emit(ctx, tap, "kv_latent", layer, cache_rows, {T, C + R});
  };

  const int64_t S = base + T;
  const float scale = static_cast<float>(c.softmax_scale());
  ops::Buffer<float> attn(be, T * H * Dv);
  if (!absorbed) {
    join_chains();
    // Expanded attention re-makes keys from fp32 rows: a bf16 cache is widened (all S rows, as stored).
    ops::Buffer<float> widened(be, cache.bf16 ? S * width : 0);
    if (widened.size())
      ops::cast(ctx, {.x = cache.row_bf16(cache_layer, 0, seq), .y = widened.data(), .n = S * width, .to_bf16 = false});
    const float* rows = cache.bf16 ? widened.data() : cache.row(cache_layer, 0, seq);
    // Expanded: kv[S, H, Dn + Dv] = latent . kv_b^T; head h's key is [kv[s, h, :Dn] ; the shared roped key
    // rows[s, C:]] and its value kv[s, h, Dn:], handed to the attention as strides and a shared key tail
    // (a device packs its own bf16 copies from there; other backends get dense copies made).
    ops::Buffer<float> kv(be, S * H * (Dn + Dv));
    ops::linear(ctx, {.x = rows, .w = w.kv_b_proj.data, .w_bf16 = w.kv_b_proj.bf16, .y = kv.data(), .M = S, .N = H * (Dn + Dv), .K = C,
                      .x_stride = cache.width});
    ops::attention(ctx, {.q = q.data(), .k = kv.data(), .v = kv.data() + Dn, .out = attn.data(), .T = T, .S = S, .H = H,
                         .Dqk = Dqk, .Dv = Dv, .k_stride = H * (Dn + Dv), .v_stride = H * (Dn + Dv), .scale = scale,
                         .bf16_operands = w.kv_b_proj.bf16 != nullptr, .k_head_stride = Dn + Dv, .v_head_stride = Dn + Dv,
                         .k_shared = R > 0 ? rows + C : nullptr, .k_shared_stride = cache.width, .k_shared_dims = R});
  } else {
    // Absorbed (DeepSeek-V2 s2.1.2): fold W_UK into the query and W_UV after the attention, so all
    // heads attend over the cached rows [C + R] themselves, as one shared key/value head:
    //   q_lat[t, h] = [W_UK[h]^T q_nope[t, h] ; q_rope[t, h]]             [C + R]
    //   o_lat[t, h] = sum_s softmax_s(q_lat . row_s * scale) row_s[:C]    [C]
    //   out[t, h]   = W_UV[h] o_lat[t, h]                                  [Dv]
    ops::Buffer<float> q_lat(be, T * H * (C + R)), o_lat(be, T * H * C);
    // q's rope dims go straight into q_lat on a branch of their own (columns W_UK does not write), so
    // the query's two small ops and the latent rows' chain run side by side up to the attention.
    std::optional<ops::Branch> rope_branch;
    if (rope_q_into_latent) {
      rope_branch.emplace(ctx);
      ops::rope(rope_branch->side(), {.x = q.data(), .cos = slots.cos, .sin = slots.sin, .tokens = T, .heads = H,
                                      .rope_dim = R, .token_stride = H * Dqk, .head_stride = Dqk, .offset = Dn,
                                      .layout = c.rope_layout, .y = q_lat.data(), .y_token_stride = H * (C + R),
                                      .y_head_stride = C + R, .y_offset = C});
    }
    if (Dn > 0)  // per head: q_lat[:, h, :C] = q_nope[:, h] . W_UK[h], W_UK[h] = kv_b rows [h(Dn+Dv), +Dn) as [Dn, C]
      ops::linear(ctx, {.x = q.data(), .w = w.kv_b_proj.data, .w_bf16 = w.kv_b_proj.bf16, .y = q_lat.data(), .M = T, .N = C, .K = Dn,
                        .x_stride = H * Dqk, .y_stride = H * (C + R), .w_transposed = true, .batch = H,
                        .x_batch_stride = Dqk, .w_batch_stride = (Dn + Dv) * C, .y_batch_stride = C + R});
    else
      ops::copy2d(ctx, {.src = nullptr, .dst = q_lat.data(), .rows = T * H, .cols = C, .src_stride = C,
                        .dst_stride = C + R});
    if (!rope_q_into_latent)
      ops::copy2d(ctx, {.src = q.data() + Dn, .dst = q_lat.data() + C, .rows = T * H, .cols = R,
                        .src_stride = Dqk, .dst_stride = C + R});
    join_chains();
    if (rope_branch) rope_branch->join();
    // Joined right before the attention: every cache row it reads (this step's from the branch, the
    // rest from ops before the fork) was written by a completed op, so it may load them early.
    const bool keys_settled = kv_branch.forked();
    const float* rows = cache.bf16 ? nullptr : cache.row(cache_layer, 0, seq);
    const uint16_t* rows_bf16 = cache.bf16 ? cache.row_bf16(cache_layer, 0, seq) : nullptr;
    // Batched: T problems of one query each, over their own sequence's rows (kv_lengths of them).
    const int64_t stride = cache.capacity * width;
    ops::attention(ctx, {.q = q_lat.data(), .k = rows, .v = rows, .k_bf16 = rows_bf16, .v_bf16 = rows_bf16,
                         .out = o_lat.data(), .T = batched ? 1 : T, .S = batched ? cache.capacity : S, .H = H,
                         .Dqk = C + R, .Dv = C, .Hkv = 1, .k_stride = width, .v_stride = width, .scale = scale,
                         .batch = batched ? T : 1, .k_batch_stride = batched ? stride : 0,
                         .v_batch_stride = batched ? stride : 0, .kv_lengths = slots.kv_lengths,
                         .keys_settled = keys_settled});
    // per head: out[:, h] = o_lat[:, h] . W_UV[h]^T, W_UV[h] = kv_b rows [h(Dn+Dv) + Dn, +Dv) as [Dv, C]
    ops::linear(ctx, {.x = o_lat.data(), .w = w.kv_b_proj.f32_at(Dn * C), .w_bf16 = w.kv_b_proj.bf16_at(Dn * C), .y = attn.data(), .M = T, .N = Dv, .K = C,
                      .x_stride = H * C, .y_stride = H * Dv, .batch = H, .x_batch_stride = C,
                      .w_batch_stride = (Dn + Dv) * C, .y_batch_stride = Dv});
  }
  emit(ctx, tap, "attn_heads", layer, attn.data(), {T, H, Dv});
  ops::linear(ctx, {.x = attn.data(), .w = w.o_proj.data, .w_bf16 = w.o_proj.bf16, .bias = w.o_proj_bias.data, .y = out, .M = T, .N = D,
                    .K = H * Dv});
}

}  // namespace dsv::layers
