// One AdamW step in torch.optim.AdamW's single-tensor order: decay, moments, bias-corrected update
// (the element update is shared with the CUDA twin: ops/adamw_element.h).
#include "backends/cpu/cpu_ops.h"
#include "ops/adamw_element.h"

namespace dsv::ops::cpu {

void adamw(const AdamWParams& p) {
  const AdamWScalars s = adamw_scalars(p);
  for (int64_t i = 0; i < p.n; ++i) adamw_element(p, s, i);
}

}  // namespace dsv::ops::cpu
