// Weights of a DeepSeek-V2/V3 model as plain structs of fp32 views. Shapes follow the HF layout
// ([out, in] for projections). Which fields exist for a config, their HF names and shapes come from
// one table: hf_weight_table() in src/io/hf_names.cpp.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace dsv {

struct MlaWeights {
  Tensor q_proj;           // [H*(Dn+R), D]   when Q == 0
  Tensor q_a_proj;         // [Q, D]          when Q > 0
  Tensor q_a_proj_bias;    // [Q]             attention_bias
  Tensor q_a_layernorm;    // [Q]
  Tensor q_b_proj;         // [H*(Dn+R), Q]
  Tensor kv_a_proj;        // [C+R, D]        kv_a_proj_with_mqa: latent then shared rope key
  Tensor kv_a_proj_bias;   // [C+R]           attention_bias
  Tensor kv_a_layernorm;   // [C]
  Tensor kv_b_proj;        // [H*(Dn+Dv), C]  per head: Dn key rows then Dv value rows
  Tensor o_proj;           // [D, H*Dv]
  Tensor o_proj_bias;      // [D]             attention_bias
};

struct MlpWeights {        // SwiGLU: down(silu(gate x) * up x)
  Tensor gate_proj;        // [F, D]
  Tensor up_proj;          // [F, D]
  Tensor down_proj;        // [D, F]
  Tensor gate_bias, up_bias, down_bias;  // [F], [F], [D]  (V2 mlp_bias only)
};

struct MoeWeights {
  Tensor router;                    // [E, D]  mlp.gate.weight
  Tensor score_correction_bias;     // [E]     V3 e_score_correction_bias (choice only)
  std::vector<MlpWeights> experts;  // E x {[Fe, D], [Fe, D], [D, Fe]}
  MlpWeights shared;                // [Fe*n_shared, D] ...; empty when n_shared_experts == 0
  // Tables of the E experts' gate/up/down pointers, on the model's backend, for ops::moe_experts
  // (filled by build_expert_tables; null until then).
  const float* const* gate_table = nullptr;
  const float* const* up_table = nullptr;
  const float* const* down_table = nullptr;
  const uint16_t* const* gate_table_bf16 = nullptr;  // the same for bf16 storage
  const uint16_t* const* up_table_bf16 = nullptr;
  const uint16_t* const* down_table_bf16 = nullptr;
};

struct LayerWeights {
  Tensor input_layernorm;           // [D]
  Tensor post_attention_layernorm;  // [D]
  MlaWeights attn;
  bool is_moe = false;
  MlpWeights mlp;                   // dense layers
  MoeWeights moe;                   // MoE layers
};

// One multi-token-prediction module (DeepSeek-V3 s2.2), stored as model.layers.{L + k}.*.
struct MtpWeights {
  Tensor enorm;             // [D]      RMSNorm of the next token's embedding
  Tensor hnorm;             // [D]      RMSNorm of the previous depth's hidden state
  Tensor eh_proj;           // [D, 2D]  on concat(enorm(emb), hnorm(h))
  LayerWeights block;       // a MoE decoder layer
  Tensor shared_head_norm;  // [D]      applied before the (shared) LM head
};

struct Weights {
  Tensor embed_tokens;  // [V, D]
  std::vector<LayerWeights> layers;
  Tensor norm;          // [D]
  Tensor lm_head;       // [V, D] (the embedding when tie_word_embeddings)
  std::vector<MtpWeights> mtp;  // empty when the checkpoint has no MTP modules
};

}  // namespace dsv
