// Training forward and backward of the decoder's layer kinds (legend in model/config.h). The
// forward is the inference math (src/model/layers) in the expanded MLA form, over B sequences of
// S tokens packed as T = B * S rows, keeping what the backward needs; the backward adds weight
// gradients into a Weights-shaped set of gradient views (always +=, so micro-batches accumulate)
// and returns the input gradient. Everything goes through ops, so it runs on any backend.
#pragma once
#include <vector>

#include "model/layers/layers.h"
#include "model/model.h"
#include "ops/memory.h"

namespace dsv::train {

using ops::Buffer;

struct Batch {
  int64_t sequences = 1, length = 1;  // B, S
  int64_t tokens() const { return sequences * length; }
};

// RoPE tables for the T rows (position = index within the sequence + offset) and their inverse.
struct Ropes {
  layers::RopeTable forward, backward;
};
Ropes make_ropes(const ops::Context& ctx, const ModelConfig& c, Batch batch, int64_t first_position);

struct MlaSaved {
  Buffer<float> q_latent_raw, q_latent;  // [T, Q] before / after q_a_layernorm (Q > 0)
  Buffer<float> q;                       // [T, H, Dn + R] roped
  Buffer<float> kv_a;                    // [T, C + R] before norm and rope
  Buffer<float> latent;                  // [T, C] normalized
  Buffer<float> k, v;                    // [T, H, Dn + R], [T, H, Dv]
  Buffer<float> attn;                    // [T, H, Dv]
  Buffer<float> lse;                     // [T, H] attention logsumexp: its backward skips the forward
};

struct MlpSaved {
  Buffer<float> gate, up;  // [T, F] before the SwiGLU
};

struct ExpertSaved {
  int64_t n = 0;                 // tokens routed to this expert
  int64_t offset = 0;            // of its n entries in MoeSaved::rows / scales
  std::vector<int32_t> pairs;    // [n] (token, slot) pair index t * K + k
  MlpSaved mlp;
  Buffer<float> y;               // [n, D] expert output before scaling
};

// What the balance losses need (docs/TRAINING.md); alpha 0 switches one off.
struct AuxSpec {
  double seq_aux_alpha = 0.0;     // V3 sequence-wise
  double expert_aux_alpha = 0.0;  // V2 expert-level
  double sequence_weight = 1.0;   // 1 / (sequences in the whole optimizer step)
};

struct MoeSaved {
  Buffer<float> logits;            // [T, E]
  Buffer<int32_t> indices;         // [T, K]
  Buffer<int32_t> rows;            // [T * K] token rows, grouped by expert (one upload per layer)
  Buffer<float> scales;            // [T * K] their combine weights, same order
  std::vector<ExpertSaved> experts;
  MlpSaved shared;
  Buffer<float> aux_dlogits;       // [T, E] balance-loss gradient (empty when off)
  // All experts at once (ops::moe_train_forward: CUDA, bf16 products): the row plan and saved rows.
  bool grouped = false;
  int64_t grouped_rows = 0;
  Buffer<const uint16_t*> weight_tables;           // [3E] bf16 gate, up, down copies (forward and backward)
  Buffer<int32_t> offsets, row_pair, slot_of_pair;  // [E + 1], [rows], [T * K]
  Buffer<float> pair_weights;                       // [T * K] combine weights, pair order
  Buffer<uint16_t> xs, h;                           // [rows, D], [rows, F] bf16
  Buffer<float> gu, y;                              // [rows, 2F], [rows, D]
};

struct LayerSaved {
  Buffer<float> x_in, xn1, x_mid, xn2;  // [T, D]
  MlaSaved attn;
  MlpSaved mlp;
  MoeSaved moe;
};

// Per-layer routing statistics of one forward.
struct MoeStats {
  std::vector<int64_t> load;  // [E] (token, slot) assignments per expert
  double aux_loss = 0.0;      // weighted balance loss, already times sequence_weight
};

void mla_forward(const ops::Context& ctx, const ModelConfig& c, const MlaWeights& w, const float* xn, Batch batch,
                 const Ropes& ropes, float* out, MlaSaved& saved);
// The two halves of mla_forward after its down-projections, also used by selective recomputation:
// queries (s.q, and s.q_latent with a q LoRA) from s.q_latent_raw or xn; s.latent, s.k and s.v from s.kv_a.
void mla_make_queries(const ops::Context& ctx, const ModelConfig& c, const MlaWeights& w, const float* xn, Batch batch,
                      const Ropes& ropes, MlaSaved& s);
void mla_make_keys_values(const ops::Context& ctx, const ModelConfig& c, const MlaWeights& w, Batch batch,
                          const Ropes& ropes, MlaSaved& s);
// dxn is overwritten.
void mla_backward(const ops::Context& ctx, const ModelConfig& c, const MlaWeights& w, const MlaWeights& g,
                  const float* xn, Batch batch, const Ropes& ropes, const MlaSaved& saved, const float* dout, float* dxn);

void mlp_forward(const ops::Context& ctx, const MlpWeights& w, const float* x, int64_t T, int64_t D, float* out,
                 bool accumulate, MlpSaved& saved);
void mlp_backward(const ops::Context& ctx, const MlpWeights& w, const MlpWeights& g, const float* x, int64_t T,
                  int64_t D, const MlpSaved& saved, const float* dy, float* dx, bool accumulate_dx);

void moe_forward(const ops::Context& ctx, const ModelConfig& c, const MoeWeights& w, const float* xn, Batch batch,
                 const AuxSpec& aux, float* out, MoeSaved& saved, MoeStats& stats);
// dxn is overwritten; so are the routed experts' weight gradients with overwrite_expert_grads
// (accumulated otherwise, like every other gradient).
void moe_backward(const ops::Context& ctx, const ModelConfig& c, const MoeWeights& w, const MoeWeights& g,
                  const float* xn, Batch batch, const MoeSaved& saved, const float* dout, float* dxn,
                  bool overwrite_expert_grads = false);
// Zeroes the routed experts' weight gradients of g.
void zero_expert_grads(const ops::Context& ctx, const MoeWeights& g);

// dst[0, n) = src[0, n) on the backend.
void copy_values(const ops::Context& ctx, const float* src, float* dst, int64_t n);

// Selective recomputation (train.recompute = selective): after the forward, drop_recomputable frees
// what is cheap to re-make (both norm outputs, MLA's normalized latents, its queries, keys and
// values: about 2D + Q + C + H (2 Dqk + Dv) floats per token); before the backward,
// recompute_dropped re-makes them from what stays (x_in, x_mid, q_latent_raw, kv_a) with the
// forward's own ops, so the gradients are bit-identical to keeping everything.
void drop_recomputable(LayerSaved& s);
void recompute_dropped(const ops::Context& ctx, const ModelConfig& c, const LayerWeights& w, Batch batch,
                       const Ropes& ropes, LayerSaved& s);

// x[T, D]: the residual stream, updated in place (x += attn(norm x); x += ffn(norm x)).
void layer_forward(const ops::Context& ctx, const ModelConfig& c, const LayerWeights& w, float* x, Batch batch,
                   const Ropes& ropes, const AuxSpec& aux, LayerSaved& saved, MoeStats& stats);
// dx: in, the gradient of the layer output; out, of its input. overwrite_expert_grads: see moe_backward.
void layer_backward(const ops::Context& ctx, const ModelConfig& c, const LayerWeights& w, const LayerWeights& g,
                    Batch batch, const Ropes& ropes, const LayerSaved& saved, float* dx,
                    bool overwrite_expert_grads = false);

}  // namespace dsv::train
