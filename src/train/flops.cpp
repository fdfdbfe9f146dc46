#include "train/flops.h"

#include <algorithm>

namespace dsv::train {
namespace {

double d(int64_t v) { return static_cast<double>(v); }

// Parameters of one routed expert's SwiGLU (what params_* count per expert).
int64_t expert_params(const ModelConfig& c) {
  return 3 * c.hidden_size * c.moe_intermediate_size + (c.mlp_bias ? 2 * c.moe_intermediate_size + c.hidden_size : 0);
}

// An MTP module's parameters touched per token: params_mtp() counts every routed expert of its
// block; a token runs K of them.
int64_t mtp_active_params(const ModelConfig& c) {
  int64_t n = c.params_mtp();
  if (c.is_moe_layer(c.num_hidden_layers)) n -= (c.n_routed_experts - c.num_experts_per_tok) * expert_params(c);
  return n;
}

// Attention FLOPs of training, per query row, when the row attends to `keys` keys: forward q.k over
// Dqk and p.v over Dv, one multiply-add (2 FLOPs) each per (head, key): 2 * H * (Dqk + Dv) * keys;
// the backward costs twice the forward (dq, dk from the scores; dp, dv from the mixing): x3.
double attention_flops(const ModelConfig& c, double keys) {
  return 3.0 * 2.0 * d(c.num_attention_heads) * d(c.qk_head_dim() + c.v_head_dim) * keys;
}

}  // namespace

double train_flops_per_token(const ModelConfig& c, int64_t seq_len, int64_t mtp_depth) {
  const double S = d(seq_len), V = d(c.vocab_size), D = d(c.hidden_size);
  // Matrix products: 2 FLOPs per weight and token forward, 4 backward (input and weight
  // gradients): 6N. The embedding is a row lookup, not a product; with tied embeddings the one
  // matrix is the LM head and stays counted. Norm weights and biases are counted too (negligible).
  const double matmul = d(c.params_active()) - (c.tie_word_embeddings ? 0.0 : V * D);
  double flops = 6.0 * matmul;
  // Causal attention: query i sees i + 1 keys, (S + 1) / 2 on average over the S queries.
  flops += d(c.num_hidden_layers) * attention_flops(c, (S + 1.0) / 2.0);
  // MTP depth k runs its module and the shared LM head on S - k of the S rows, attending causally
  // among them ((S - k + 1) / 2 keys on average); per main-model token that is a (S - k) / S share.
  for (int64_t k = 1; k <= mtp_depth && k < seq_len; ++k) {
    const double rows = S - d(k);
    flops += rows / S * (6.0 * (d(mtp_active_params(c)) + V * D) + attention_flops(c, (rows + 1.0) / 2.0));
  }
  return flops;
}

double device_peak_flops(const std::string& device, const std::string& gpu_name) {
  if (device != "cuda") return 0.0;
  if (gpu_name.empty()) return 989e12;
  auto has = [&](const char* s) { return gpu_name.find(s) != std::string::npos; };
  if (has("H100")) return has("PCIe") ? 756e12 : 989e12;
  if (has("H200") || has("H800")) return 989e12;
  if (has("A100")) return 312e12;
  return 0.0;
}

int64_t trained_parameters(const ModelConfig& c, int64_t mtp_depth) {
  return c.params_total() + std::max<int64_t>(mtp_depth, 0) * c.params_mtp();
}

ActivationFloats activation_floats_per_token(const ModelConfig& c, int64_t seq_len, int64_t mtp_depth,
                                             const std::string& recompute) {
  const double D = d(c.hidden_size), H = d(c.num_attention_heads), Q = d(c.q_lora_rank), C = d(c.kv_lora_rank),
               R = d(c.qk_rope_head_dim), Dqk = d(c.qk_head_dim()), Dv = d(c.v_head_dim), E = d(c.n_routed_experts),
               K = d(c.num_experts_per_tok), Fe = d(c.moe_intermediate_size), F = d(c.intermediate_size),
               V = d(c.vocab_size);
  // Floats kept per token by one layer (LayerSaved): the residual stream and both norm outputs
  // (4D); MLA: q latent before/after its norm (2Q), roped q and expanded k (2 H Dqk), v and the
  // attention output (2 H Dv), its logsumexp per head (H), kv_a and the normed latent (2C + R).
  // Attention probabilities are recomputed in the backward, never stored. Dense FFN: gate and up (2F). MoE: router logits and
  // their balance-loss gradient (2E), top-K indices (K), per routed slot gate/up, the expert output
  // and three bookkeeping values (K (2Fe + D + 3)), the shared experts' gate and up (2 Fe n_shared).
  const double attn = 4 * D + 2 * Q + 2 * H * Dqk + 2 * H * Dv + H + 2 * C + R;
  // Selective recompute (drop_recomputable) keeps of these only the residual stream before each norm
  // (2D), the q latent before its norm (Q), kv_a (C + R) and the attention output and logsumexp
  // (H Dv + H).
  const double attn_selective = 2 * D + Q + C + R + H * Dv + H;
  const double dense_ffn = 2 * F, moe_ffn = 2 * E + K + K * (2 * Fe + D + 3) + 2 * Fe * d(c.n_shared_experts);
  ActivationFloats a;
  a.dense_working = attn + dense_ffn;
  a.moe_working = attn + moe_ffn;
  // Full recompute keeps only each layer's input; the backward re-runs the layer.
  const bool full = recompute == "full", selective = recompute == "selective";
  a.dense_layer = full ? D : selective ? attn_selective + dense_ffn : a.dense_working;
  a.moe_layer = full ? D : selective ? attn_selective + moe_ffn : a.moe_working;
  a.head = 2 * V;
  // Each MTP depth keeps a whole block (selective: what that keeps; full re-runs no MTP block) plus its
  // embedding, gathered state, concatenation, block output, normed output and its gradient (7D), over
  // (S - k) / S of the rows.
  const bool moe_block = c.is_moe_layer(c.num_hidden_layers);
  const double S = d(seq_len),
               mtp_block = selective ? (moe_block ? a.moe_layer : a.dense_layer)
                                     : (moe_block ? a.moe_working : a.dense_working);
  for (int64_t k = 1; k <= mtp_depth && k < seq_len; ++k) a.mtp += (S - d(k)) / S * (mtp_block + 7 * D);
  return a;
}

double activation_bytes_estimate(const ModelConfig& c, int64_t micro_batch, int64_t seq_len, int64_t mtp_depth,
                                 const std::string& recompute) {
  const ActivationFloats a = activation_floats_per_token(c, seq_len, mtp_depth, recompute);
  double per_token = 0.0, largest = 0.0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    per_token += c.is_moe_layer(l) ? a.moe_layer : a.dense_layer;
    largest = std::max(largest, c.is_moe_layer(l) ? a.moe_working : a.dense_working);
  }
  // The backward's working set: one layer's worth (re-made under full recompute, gradients otherwise);
  // the logits and their gradient at the LM head, alive while the loss is taken; the MTP depths.
  per_token += largest + a.head + a.mtp;
  return 4.0 * per_token * d(micro_batch) * d(seq_len);
}

}  // namespace dsv::train
