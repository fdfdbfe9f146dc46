// TensorBoard event files: `tensorboard --logdir DIR` shows the training curves live.
//
// The file is a TFRecord stream of Event protocol buffers, encoded by hand (no protobuf library):
//   record  = u64 length (LE) | u32 masked CRC-32C of those 8 bytes | payload | u32 masked CRC-32C of payload
//   Event   = wall_time (1, double) | step (2, int64) | file_version (3, string) or summary (5, Summary)
//   Summary = repeated value (1, Value);  Value = tag (1, string) | simple_value (2, float)
// (field numbers from tensorboard/compat/proto/event.proto and summary.proto).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "train/trainer.h"

namespace dsv::train {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78); "123456789" -> 0xE3069283.
uint32_t crc32c(const void* data, size_t size);
// The TFRecord mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8, so CRCs of CRCs stay distinct.
uint32_t masked_crc32c(const void* data, size_t size);

// The Event payloads (exposed for tests).
std::string event_file_version(double wall_time);  // file_version "brain.Event:2"
std::string event_scalars(double wall_time, int64_t step, const std::vector<std::pair<std::string, float>>& values);
// One TFRecord around a payload.
std::string tfrecord(const std::string& payload);

// The scalar tags of one training step, in a fixed order:
// train/loss, train/mtp_loss, train/aux_loss, train/grad_norm, train/lr, train/tokens_per_second,
// train/mfu, train/expert_imbalance/layer_<i> (i: the i-th MoE layer, 0-based).
std::vector<std::pair<std::string, float>> step_scalars(const StepMetrics& m);

// Writes log_dir/events.out.tfevents.<unix seconds>.<hostname> (a ".<n>" suffix keeps an existing
// file of the same name). Every write() is flushed so a running TensorBoard sees the step at once.
class TensorBoardWriter {
 public:
  explicit TensorBoardWriter(const std::string& log_dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  void scalar(const std::string& tag, int64_t step, double value);  // buffered until flush()
  void write(const StepMetrics& m);                                  // one Event with all step_scalars, flushed
  void write_validation(int64_t step, double loss);                  // val/loss, flushed
  void flush();
  const std::string& path() const { return path_; }

 private:
  void append(const std::string& payload);
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace dsv::train
