// CPU reference ops: plain fp32 loops (matrix products through OpenBLAS when built with it).
// They are the specification every CUDA op is tested against. Params are validated by src/ops.
#pragma once
#include "ops/ops.h"

namespace dsv::ops::cpu {

void linear(const LinearParams& p);
void rmsnorm(const RmsNormParams& p);
void add_rmsnorm(const AddRmsNormParams& p);
void rope(const RopeParams& p);
void rope_table(const RopeTableParams& p);
void attention(const AttentionParams& p);
void swiglu(const SwigluParams& p);
void gated_linear(const GatedLinearParams& p);
void route(const RouterParams& p);
void embed(const EmbedParams& p);
void add(const AddParams& p);
void copy2d(const Copy2dParams& p);
void gather_rows(const RowsParams& p);
void scatter_add_rows(const RowsParams& p);
void store_rows(const StoreRowsParams& p);
void store_latent_rows(const LatentRowsParams& p);
void argmax_rows(const ArgmaxParams& p);
void decode_feed(const DecodeFeedParams& p);
void fill_random(const FillRandomParams& p);
void moe_experts(const MoeExpertsParams& p);
void cast(const CastParams& p);

// Training ops.
void linear_weight_grad(const LinearWeightGradParams& p);
void linear_backward(const LinearBackwardParams& p);  // linear_weight_grad, then linear for dx
void rmsnorm_backward(const RmsNormBackwardParams& p);
void attention_backward(const AttentionBackwardParams& p);
void swiglu_backward(const SwigluBackwardParams& p);
void embed_backward(const EmbedBackwardParams& p);
void route_backward(const RouteBackwardParams& p);
void row_dots(const RowDotsParams& p);
void cross_entropy(const CrossEntropyParams& p);
void axpby(const AxpbyParams& p);
void sum_squares(const SumSquaresParams& p);
void adamw(const AdamWParams& p);
void moe_train_forward(const MoeTrainParams& p);
void moe_train_backward(const MoeTrainBackwardParams& p);

}  // namespace dsv::ops::cpu
