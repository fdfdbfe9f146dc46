// The figures `dsv plot` draws from a metrics .jsonl file.
#pragma once
#include "train/metrics.h"
#include "train/plot.h"

namespace dsv::train {

// Loss over steps (train loss, smoothed when there are many steps; MTP loss when present; validation
// points) above a smaller learning-rate panel on the same step axis. Needs at least one step.
plot::Image render_loss_plot(const MetricsLog& log, int width, int height);

// True when some step carries per-layer expert imbalance values.
bool has_expert_data(const MetricsLog& log);
// Heatmap of expert imbalance (max expert load / mean load): x = step, y = MoE layer, with a colour
// bar; the colour scale starts at 1 (perfect balance). Needs has_expert_data(log).
plot::Image render_expert_load_plot(const MetricsLog& log, int width, int height);

// Text scale for an image of this size: 1 up to 749 pixels on the short side, 2 up to 1249, ...
int plot_text_scale(int width, int height);

}  // namespace dsv::train
