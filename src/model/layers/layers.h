// Layer kinds of the DeepSeek-V2/V3 decoder (legend in model/config.h). Each takes normalized input
// rows x[T, D] and writes out[T, D]; the residual adds happen in decoder_layer(). All pointers live
// on the backend of `ctx`; the code only calls ops, so it runs unchanged on the CPU and the GPU.
#pragma once
#include <vector>

#include "core/tap.h"
#include "model/config.h"
#include "model/model.h"
#include "model/weights.h"
#include "ops/memory.h"

namespace dsv::layers {

// cos/sin of each rotary pair at T consecutive positions, times the YaRN attention factor.
struct RopeTable {
  int64_t tokens = 0, half = 0;
  ops::Buffer<float> cos, sin;  // [T, R/2]
};
// With `sequences` > 1, that many copies one after another (rows s * T + t, a training batch);
// negate_sin gives the inverse rotation (the backward of rope).
RopeTable make_rope_table(const ops::Context& ctx, const ModelConfig& c, int64_t first_position, int64_t T,
                          int64_t sequences = 1, bool negate_sin = false);

// The same angles on the host: cos/sin [positions.size(), R/2].
void rope_angles(const ModelConfig& c, const std::vector<int64_t>& positions, float* cos, float* sin,
                 bool negate_sin = false);

// Where the T rows of one pass sit in the latent cache, and their rope angles (cos/sin [T, R/2] on the
// backend). Either one sequence (prefill, or a step of one sequence): rows at positions first ..
// first + T - 1 of sequence `sequence`, causal over its positions [0, first + T). Or a batched decode
// step (write_rows set): row t is the next token of sequence t, stored at row write_rows[t] of the
// layer's rows (t * capacity + its position) and attending over kv_lengths[t] rows of sequence t;
// both int32 [T] on the backend, read when the ops run (so a captured graph replays with new values).
struct TokenSlots {
  const float* cos = nullptr;
  const float* sin = nullptr;
  int64_t sequence = 0, first = 0;
  const int32_t* write_rows = nullptr;
  const int32_t* kv_lengths = nullptr;
};

// MLA: stores the T new latent rows in cache layer `cache_layer` and attends (see TokenSlots).
void mla(const ops::Context& ctx, const ModelConfig& c, const MlaWeights& w, const float* x, int64_t T,
         KvCache& cache, int64_t cache_layer, const TokenSlots& slots, MlaMode mode, float* out, const TapFn& tap,
         int64_t layer);

// out[T, D] = down(silu(gate x) * up x).
void mlp(const ops::Context& ctx, const ModelConfig& c, const MlpWeights& w, const float* x, int64_t T, float* out);

void moe(const ops::Context& ctx, const ModelConfig& c, const MoeWeights& w, const float* x, int64_t T, float* out,
         const TapFn& tap, int64_t layer);

// x[T, D] is the residual stream, updated in place: x += attn(norm(x)); x += ffn(norm(x)).
// Deferred residual adds (decode steps; no tap): with ffn_out the FFN output is left there [T, D]
// instead of added to x, and with pending (x + pending being the true input, pending the previous
// layer's ffn_out, which may be the same buffer) the add is folded into the input norm
// (ops::add_rmsnorm). The caller folds the last ffn_out into the final norm the same way.
void decoder_layer(const ops::Context& ctx, const ModelConfig& c, const LayerWeights& w, float* x, int64_t T,
                   KvCache& cache, int64_t cache_layer, const TokenSlots& slots, MlaMode mode, const TapFn& tap,
                   int64_t layer, const float* pending = nullptr, float* ffn_out = nullptr);

void rmsnorm_rows(const ops::Context& ctx, const float* x, const Tensor& weight, int64_t rows, double eps, float* y,
                  int64_t y_stride = 0);

// Passes a tensor to the tap hook, copied to the host first when it lives on a device.
void emit(const ops::Context& ctx, const TapFn& tap, std::string_view name, int64_t layer, const float* data,
          std::vector<int64_t> shape);

}  // namespace dsv::layers
