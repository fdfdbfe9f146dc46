// Learning-rate schedules at their boundary steps; expected values worked out by hand from
// docs/TRAINING.md (peak 1e-3, floor 1e-4, 10 warmup steps, 110 steps unless noted).
#include <gtest/gtest.h>

#include "test_helpers.h"
#include "train/schedule.h"

namespace dsv::train {
namespace {

TrainConfig schedule(const char* name, int64_t warmup = 10, int64_t steps = 110) {
  TrainConfig c;
  c.schedule = name;
  c.lr = 1e-3;
  c.min_lr = 1e-4;
  c.warmup_steps = warmup;
  c.steps = steps;
  return c;
}

constexpr double kTol = 1e-15;

TEST(Schedule, WarmupIsLinearFromZero) {
  for (const char* name : {"constant", "cosine", "wsd"}) {
    SCOPED_TRACE(name);
    const TrainConfig c = schedule(name);
    EXPECT_NEAR(learning_rate(c, 1), 1e-4, kTol);   // 1e-3 * 1/10
    EXPECT_NEAR(learning_rate(c, 5), 5e-4, kTol);   // 1e-3 * 5/10
    EXPECT_NEAR(learning_rate(c, 10), 1e-3, kTol);  // the last warmup step reaches the peak
  }
}

TEST(Schedule, Constant) {
  const TrainConfig c = schedule("constant");
  EXPECT_NEAR(learning_rate(c, 11), 1e-3, kTol);
  EXPECT_NEAR(learning_rate(c, 110), 1e-3, kTol);
}

TEST(Schedule, Cosine) {
  const TrainConfig c = schedule("cosine");
  // p = (s - 10) / 100; lr = 1e-4 + 9e-4 * (1 + cos(pi p)) / 2
  EXPECT_NEAR(learning_rate(c, 11), 1e-4 + 9e-4 * (1 + 0.99950656036573160) / 2, 1e-15);  // cos(0.01 pi)
  EXPECT_NEAR(learning_rate(c, 35), 1e-4 + 9e-4 * (1 + 0.70710678118654752) / 2, 1e-15);  // cos(pi / 4)
  EXPECT_NEAR(learning_rate(c, 60), 5.5e-4, 1e-15);                                    // cos(pi / 2) = 0
  EXPECT_NEAR(learning_rate(c, 110), 1e-4, 1e-15);                                     // cos(pi) = -1: the floor
  // Past the last step the rate stays at the floor.
  EXPECT_NEAR(learning_rate(c, 150), 1e-4, 1e-15);
  // Without warmup, step 1 is already a (1 / N) of the way down: p = 1/110.
  const TrainConfig no_warmup = schedule("cosine", 0);
  EXPECT_NEAR(learning_rate(no_warmup, 1), 1e-4 + 9e-4 * (1 + 0.99959219282818920) / 2, 1e-15);
  // N == W: max(1, N - W) keeps the division defined; every step is a warmup step.
  const TrainConfig all_warmup = schedule("cosine", 10, 10);
  EXPECT_NEAR(learning_rate(all_warmup, 10), 1e-3, kTol);
}

TEST(Schedule, WarmupStableDecay) {
  const TrainConfig c = schedule("wsd");  // decay_fraction 0.1: Dd = round(11) = 11, decay after step 99
  EXPECT_NEAR(learning_rate(c, 11), 1e-3, kTol);
  EXPECT_NEAR(learning_rate(c, 99), 1e-3, kTol);
  EXPECT_NEAR(learning_rate(c, 100), 1e-4 + 9e-4 * 10.0 / 11.0, 1e-15);
  EXPECT_NEAR(learning_rate(c, 105), 1e-4 + 9e-4 * 5.0 / 11.0, 1e-15);
  EXPECT_NEAR(learning_rate(c, 110), 1e-4, 1e-15);
  // Dd = round(0.25 * 10) = round(2.5) = 2 (half to even, as Python's round): stable through step 8.
  TrainConfig half = schedule("wsd", 0, 10);
  half.decay_fraction = 0.25;
  EXPECT_NEAR(learning_rate(half, 8), 1e-3, kTol);
  EXPECT_NEAR(learning_rate(half, 9), 1e-4 + 9e-4 * 0.5, 1e-15);
  // A decay share that rounds to 0 steps still decays over one: only the last step is at the floor.
  TrainConfig tiny = schedule("wsd", 0, 10);
  tiny.decay_fraction = 0.01;
  EXPECT_NEAR(learning_rate(tiny, 9), 1e-3, kTol);
  EXPECT_NEAR(learning_rate(tiny, 10), 1e-4, 1e-15);
}

TEST(Schedule, RejectsStepZeroAndUnknownSchedules) {
  test::expect_error([] { learning_rate(schedule("cosine"), 0); }, {"from 1"});
  test::expect_error([] { learning_rate(schedule("linear"), 20); }, {"optimizer.schedule", "linear"});
}

}  // namespace
}  // namespace dsv::train
