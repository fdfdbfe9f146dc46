// Whole-model training pass: embed -> layers -> final norm -> chunked head + cross-entropy, then the
// MTP modules (each fed the previous depth's normalized hidden state), then the backward in reverse.
#include "train/model_train.h"

#include <algorithm>

#include "core/error.h"
#include "ops/ops.h"
#include "train/param_store.h"

namespace dsv::train {
namespace {

// LM head + cross-entropy over h[n, D] in row chunks (the logits of the whole batch never exist at
// once): returns the summed loss, writes dh = d(grad_scale * sum loss)/dh and adds the head gradient.
// dh == nullptr: forward only (loss, no gradients).
//
// Chunks hold up to 1 GiB of fp32 logits, in equal parts: every chunk adds its part of the head's
// weight gradient to the whole fp32 [V, D] gradient (read and written once per chunk), so small chunks
// cost memory traffic (16b-l4, 8192 rows: 13 chunks of 256 MB moved 22 GB a step for that alone).
// The losses stay on the device until the last chunk (one readback, not one per chunk).
double head_cross_entropy(const ops::Context& ctx, const ModelConfig& c, const Weights& w, const Weights& g,
                          const float* h, const int32_t* targets, int64_t n, float grad_scale, float* dh) {
  const int64_t D = c.hidden_size, V = c.vocab_size;
  const int64_t max_rows = std::clamp<int64_t>((int64_t{1} << 28) / V, 1, std::max<int64_t>(n, 1));
  const int64_t chunks = (n + max_rows - 1) / max_rows;
  const int64_t chunk = chunks > 0 ? (n + chunks - 1) / chunks : 1;
  Buffer<float> logits(ctx.backend, chunk * V), loss(ctx.backend, n);
  // Bf16 products round the logits' gradient to bf16 anyway: the cross-entropy writes it so (half the
  // bytes, and no separate cast before the two products).
  const bool bf16_grad = dh && ops::matmul_precision() == ops::MatmulPrecision::Bf16;
  Buffer<uint16_t> dlogits16(ctx.backend, bf16_grad ? chunk * V : 0);
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t rows = std::min(chunk, n - r0);
    ops::linear(ctx, {.x = h + r0 * D, .w = w.lm_head.data, .y = logits.data(), .M = rows, .N = V, .K = D});
    ops::cross_entropy(ctx, {.logits = logits.data(), .targets = targets + r0, .loss = loss.data() + r0, .T = rows,
                             .V = V, .grad_scale = grad_scale,
                             .dlogits_bf16 = bf16_grad ? dlogits16.data() : nullptr});
    if (dh)
      ops::linear_backward(ctx, {.dy = bf16_grad ? nullptr : logits.data(), .x = h + r0 * D, .w = w.lm_head.data,
                                 .dx = dh + r0 * D, .dw = mut(g.lm_head), .M = rows, .N = V, .K = D,
                                 .accumulate_dw = true, .dy_bf16 = bf16_grad ? dlogits16.data() : nullptr});
  }
  double total = 0.0;
  for (const float l : loss.to_host(ctx)) total += l;
  return total;
}

struct MtpState {
  Batch batch;
  Buffer<int32_t> ids, prev_rows;  // [n] input token ids, rows of the previous depth's hidden state
  Buffer<float> emb, prev, cat;    // [n, D], [n, D], [n, 2D]
  Buffer<float> block_out, h, dh;  // [n, D] before / after shared_head.norm, and dL/dh
  Ropes ropes;
  LayerSaved block;
};

}  // namespace

TargetCounts count_targets(const int32_t* targets, Batch batch, int64_t mtp_depth) {
  const int64_t B = batch.sequences, S = batch.length;
  TargetCounts out;
  out.mtp.assign(static_cast<size_t>(std::max<int64_t>(mtp_depth, 0)), 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < S; ++i) {
      if (targets[b * S + i] < 0) continue;
      ++out.main;
      for (int64_t k = 1; k <= mtp_depth && k <= i; ++k) ++out.mtp[k - 1];  // row i - k of depth k
    }
  return out;
}

PassResult forward_backward(const Model& m, const Weights& grads, const int32_t* windows, Batch batch,
                            const PassOptions& opt) {
  const int64_t B = batch.sequences, S = batch.length;
  std::vector<int32_t> inputs(static_cast<size_t>(B * S)), targets(static_cast<size_t>(B * S));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < S; ++i) {
      inputs[b * S + i] = windows[b * (S + 1) + i];
      targets[b * S + i] = windows[b * (S + 1) + i + 1];
    }
  return forward_backward(m, grads, inputs.data(), targets.data(), batch, opt);
}

PassResult forward_backward(const Model& m, const Weights& grads, const int32_t* inputs, const int32_t* targets,
                            Batch batch, const PassOptions& opt) {
  const ModelConfig& c = m.config;
  const Weights& w = m.weights;
  const ops::Context ctx = m.context();
  const ops::Backend be = ctx.backend;
  const int64_t D = c.hidden_size, V = c.vocab_size, B = batch.sequences, S = batch.length, T = batch.tokens();
  const int64_t L = c.num_hidden_layers, A = opt.micro_batches;
  DSV_CHECK(opt.mtp_depth <= static_cast<int64_t>(w.mtp.size()), "training {} MTP modules, the model has {}",
            opt.mtp_depth, w.mtp.size());
  for (int64_t i = 0; i < T; ++i) {
    DSV_CHECK(inputs[i] >= 0 && inputs[i] < V, "token id {} at index {} is outside the vocabulary [0, {})",
              inputs[i], i, V);
    DSV_CHECK(targets[i] < V, "target id {} at index {} is outside the vocabulary [0, {})", targets[i], i, V);
  }
  const TargetCounts counts = count_targets(targets, batch, opt.mtp_depth);
  const bool backward = !opt.forward_only;
  // The embedding backward's tokens grouped by id, made before the first upload (which waits for the
  // device to finish the previous step) and uploaded with the ids.
  const ops::EmbedGroups embed_groups = backward ? ops::embed_backward_groups(inputs, T) : ops::EmbedGroups{};
  const Buffer<int32_t> ids(ctx, inputs, static_cast<size_t>(T)), tgt(ctx, targets, static_cast<size_t>(T));
  const Buffer<int32_t> grouped_tokens(ctx, embed_groups.tokens.data(), embed_groups.tokens.size()),
      group_start(ctx, embed_groups.start.data(), embed_groups.start.size());

  PassResult result;
  result.load.resize(static_cast<size_t>(L));

  // ---- main model forward ----
  Buffer<float> x(be, T * D);
  ops::embed(ctx, {.ids = ids.data(), .table = w.embed_tokens.data, .out = x.data(), .T = T, .D = D});
  const Ropes ropes = make_ropes(ctx, c, batch, 0);
  std::vector<LayerSaved> saved(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    MoeStats stats;
    layer_forward(ctx, c, w.layers[l], x.data(), batch, ropes, opt.aux, saved[l], stats);
    result.load[l] = std::move(stats.load);
    result.aux_loss += stats.aux_loss;
    if (opt.recompute == Recompute::Full) {  // keep only the layer input; the backward re-runs the layer
      Buffer<float> keep = std::move(saved[l].x_in);
      saved[l] = LayerSaved{};
      saved[l].x_in = std::move(keep);
    }
    if (opt.recompute == Recompute::Selective) drop_recomputable(saved[l]);
  }
  Buffer<float> h(be, T * D), dh(be, backward ? T * D : 0);
  ops::rmsnorm(ctx, {.x = x.data(), .weight = w.norm.data, .y = h.data(), .rows = T, .dim = D,
                     .eps = static_cast<float>(c.rms_norm_eps)});
  const int64_t main_norm = std::max<int64_t>(1, opt.loss_targets > 0 ? opt.loss_targets : T * A);
  result.loss_sum = head_cross_entropy(ctx, c, w, grads, h.data(), tgt.data(), T,
                                       static_cast<float>(1.0 / static_cast<double>(main_norm)),
                                       backward ? dh.data() : nullptr);
  result.loss_count = counts.main;
  if (!backward) return result;

  // ---- MTP forward: depth k sees rows i < S - k of each sequence ----
  std::vector<MtpState> mtp(static_cast<size_t>(opt.mtp_depth));
  const float* prev = h.data();
  for (int64_t k = 1; k <= opt.mtp_depth && S - k > 0; ++k) {
    MtpState& st = mtp[k - 1];
    const MtpWeights& mw = w.mtp[k - 1];
    st.batch = Batch{B, S - k};
    const int64_t n = st.batch.tokens();
    std::vector<int32_t> in(static_cast<size_t>(n)), tg(static_cast<size_t>(n)), rows(static_cast<size_t>(n));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < S - k; ++i) {
        in[b * (S - k) + i] = inputs[b * S + i + k];
        tg[b * (S - k) + i] = targets[b * S + i + k];
        rows[b * (S - k) + i] = static_cast<int32_t>(b * (S - k + 1) + i);  // previous depth has S-k+1 rows
      }
    st.ids = Buffer<int32_t>(ctx, in.data(), in.size());
    st.prev_rows = Buffer<int32_t>(ctx, rows.data(), rows.size());
    const Buffer<int32_t> mtp_targets(ctx, tg.data(), tg.size());
    st.emb = Buffer<float>(be, n * D);
    st.prev = Buffer<float>(be, n * D);
    st.cat = Buffer<float>(be, n * 2 * D);
    ops::embed(ctx, {.ids = st.ids.data(), .table = w.embed_tokens.data, .out = st.emb.data(), .T = n, .D = D});
    ops::gather_rows(ctx, {.rows = st.prev_rows.data(), .x = prev, .y = st.prev.data(), .n = n, .D = D});
    const float eps = static_cast<float>(c.rms_norm_eps);
    ops::rmsnorm(ctx, {.x = st.emb.data(), .weight = mw.enorm.data, .y = st.cat.data(), .rows = n, .dim = D,
                       .y_stride = 2 * D, .eps = eps});
    ops::rmsnorm(ctx, {.x = st.prev.data(), .weight = mw.hnorm.data, .y = st.cat.data() + D, .rows = n, .dim = D,
                       .y_stride = 2 * D, .eps = eps});
    st.block_out = Buffer<float>(be, n * D);
    ops::linear(ctx, {.x = st.cat.data(), .w = mw.eh_proj.data, .y = st.block_out.data(), .M = n, .N = D, .K = 2 * D});
    st.ropes = make_ropes(ctx, c, st.batch, k);
    MoeStats ignored;
    layer_forward(ctx, c, mw.block, st.block_out.data(), st.batch, st.ropes, AuxSpec{}, st.block, ignored);
    if (opt.recompute == Recompute::Selective) drop_recomputable(st.block);  // (full keeps MTP blocks whole)
    st.h = Buffer<float>(be, n * D);
    st.dh = Buffer<float>(be, n * D);
    ops::rmsnorm(ctx, {.x = st.block_out.data(), .weight = mw.shared_head_norm.data, .y = st.h.data(), .rows = n,
                       .dim = D, .eps = eps});
    const size_t depth_slot = static_cast<size_t>(k - 1);
    const int64_t norm = std::max<int64_t>(
        1, depth_slot < opt.mtp_targets.size() && opt.mtp_targets[depth_slot] > 0 ? opt.mtp_targets[depth_slot]
                                                                                  : n * A);
    const float scale = static_cast<float>(opt.mtp_lambda / static_cast<double>(opt.mtp_depth * norm));
    result.mtp_sum.push_back(
        head_cross_entropy(ctx, c, w, grads, st.h.data(), mtp_targets.data(), n, scale, st.dh.data()));
    result.mtp_count.push_back(counts.mtp[depth_slot]);
    prev = st.h.data();
  }

  // MTP modules without a backward this pass still owe their expert gradients when overwriting.
  if (opt.overwrite_expert_grads)
    for (size_t k = result.mtp_count.size(); k < grads.mtp.size(); ++k) zero_expert_grads(ctx, grads.mtp[k].block.moe);

  // ---- MTP backward, deepest first: each depth's input gradient joins the previous depth's dh ----
  for (int64_t k = static_cast<int64_t>(result.mtp_count.size()); k >= 1; --k) {
    MtpState& st = mtp[k - 1];
    const MtpWeights& mw = w.mtp[k - 1];
    const MtpWeights& mg = grads.mtp[k - 1];
    const int64_t n = st.batch.tokens();
    const float eps = static_cast<float>(c.rms_norm_eps);
    Buffer<float> dx(be, n * D), dcat(be, n * 2 * D), dpart(be, n * D);
    ops::rmsnorm_backward(ctx, {.x = st.block_out.data(), .weight = mw.shared_head_norm.data, .dy = st.dh.data(),
                                .dx = dx.data(), .dweight = mut(mg.shared_head_norm), .rows = n, .dim = D, .eps = eps});
    // block_out was overwritten in place by the block; its input is the block's saved x_in.
    if (opt.recompute == Recompute::Selective) recompute_dropped(ctx, c, mw.block, st.batch, st.ropes, st.block);
    layer_backward(ctx, c, mw.block, mg.block, st.batch, st.ropes, st.block, dx.data(), opt.overwrite_expert_grads);
    ops::linear_backward(ctx, {.dy = dx.data(), .x = st.cat.data(), .w = mw.eh_proj.data, .dx = dcat.data(),
                               .dw = mut(mg.eh_proj), .M = n, .N = D, .K = 2 * D, .accumulate_dw = true});
    ops::rmsnorm_backward(ctx, {.x = st.emb.data(), .weight = mw.enorm.data, .dy = dcat.data(), .dx = dpart.data(),
                                .dweight = mut(mg.enorm), .rows = n, .dim = D, .dy_stride = 2 * D, .eps = eps});
    ops::embed_backward(ctx, {.ids = st.ids.data(), .dout = dpart.data(), .dtable = mut(grads.embed_tokens), .T = n,
                              .D = D});
    ops::rmsnorm_backward(ctx, {.x = st.prev.data(), .weight = mw.hnorm.data, .dy = dcat.data() + D,
                                .dx = dpart.data(), .dweight = mut(mg.hnorm), .rows = n, .dim = D, .dy_stride = 2 * D,
                                .eps = eps});
    float* dprev = k == 1 ? dh.data() : mtp[k - 2].dh.data();
    ops::scatter_add_rows(ctx, {.rows = st.prev_rows.data(), .x = dpart.data(), .y = dprev, .n = n, .D = D});
  }

  // ---- main model backward ----
  Buffer<float> dx(be, T * D);
  ops::rmsnorm_backward(ctx, {.x = x.data(), .weight = w.norm.data, .dy = dh.data(), .dx = dx.data(),
                              .dweight = mut(grads.norm), .rows = T, .dim = D,
                              .eps = static_cast<float>(c.rms_norm_eps)});
  for (int64_t l = L - 1; l >= 0; --l) {
    if (opt.recompute == Recompute::Full) {
      Buffer<float> x_again(be, T * D);
      copy_values(ctx, saved[l].x_in.data(), x_again.data(), T * D);
      MoeStats ignored;
      layer_forward(ctx, c, w.layers[l], x_again.data(), batch, ropes, opt.aux, saved[l], ignored);
    }
    if (opt.recompute == Recompute::Selective) recompute_dropped(ctx, c, w.layers[l], batch, ropes, saved[l]);
    layer_backward(ctx, c, w.layers[l], grads.layers[l], batch, ropes, saved[l], dx.data(),
                   opt.overwrite_expert_grads);
    saved[l] = LayerSaved{};  // free as we go
  }
  ops::embed_backward(ctx, {.ids = ids.data(), .dout = dx.data(), .dtable = mut(grads.embed_tokens), .T = T, .D = D,
                            .grouped_tokens = grouped_tokens.data(), .group_start = group_start.data(),
                            .groups = embed_groups.groups()});
  return result;
}

}  // namespace dsv::train
