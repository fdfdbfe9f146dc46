// Learning-rate schedules of docs/TRAINING.md: linear warmup, then constant, cosine or WSD.
#pragma once
#include <cstdint>

#include "train/train_config.h"

namespace dsv::train {

// The learning rate of optimizer step `step` (1-based, 1..train.steps). Steps past train.steps keep
// the last step's rate (the decay does not turn around). Throws for step < 1.
double learning_rate(const TrainConfig& config, int64_t step);

}  // namespace dsv::train
