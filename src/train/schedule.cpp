#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace dsv::train {

double learning_rate(const TrainConfig& c, int64_t step) {
  DSV_CHECK(step >= 1, "learning_rate: optimizer steps count from 1, got {}", step);
  const int64_t n = c.steps, w = c.warmup_steps;
  const int64_t s = std::min(step, std::max<int64_t>(n, 1));
  if (s <= w) return c.lr * static_cast<double>(s) / static_cast<double>(w);
  if (c.schedule == "constant") return c.lr;
  if (c.schedule == "cosine") {
    const double p = static_cast<double>(s - w) / static_cast<double>(std::max<int64_t>(1, n - w));
    return c.min_lr + (c.lr - c.min_lr) * (1.0 + std::cos(std::numbers::pi * p)) / 2.0;
  }
  if (c.schedule == "wsd") {
    // Warmup, stable at lr, then a linear decay to min_lr over the last Dd steps. Dd rounds half to
    // even (llrint in the default rounding mode), as Python's round() in the reference does.
    const int64_t dd = std::max<int64_t>(1, std::llrint(c.decay_fraction * static_cast<double>(n)));
    if (s <= n - dd) return c.lr;
    return c.min_lr + (c.lr - c.min_lr) * static_cast<double>(n - s) / static_cast<double>(dd);
  }
  DSV_FAIL("optimizer.schedule: expected \"constant\", \"cosine\" or \"wsd\", found \"{}\"", c.schedule);
}

}  // namespace dsv::train
