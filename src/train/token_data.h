// Training samples from a flat file of little-endian int32 token ids (docs/TRAINING.md, Samples).
//
// Window j is the S + 1 tokens starting at token j * S (inputs: the first S, targets: the last S);
// there are n_win = (N - 1) / S windows. Position p of the sample stream (p = (s * A + a) * B + i for
// optimizer step s, micro-batch a, row i) reads window p mod n_win in file order, or, with shuffle,
// window perm_e[p mod n_win] where e = p / n_win is the epoch and perm_e is a Fisher-Yates shuffle of
// 0..n_win-1 driven by splitmix64 (see epoch_permutation; a Python reference can mirror it exactly).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/mapped_file.h"
#include "train/train_config.h"

namespace dsv::train {

class TokenData {
 public:
  // Maps the file and checks it once: whole int32s, at least one window, every id in [0, vocab_size).
  TokenData(const std::string& path, int64_t seq_len, int64_t micro_batch, int64_t grad_accum, bool shuffle,
            uint64_t seed, int64_t vocab_size);
  // data.tokens, train.seq_len/micro_batch/grad_accum, data.shuffle and model.seed from a recipe.
  TokenData(const TrainConfig& config, int64_t vocab_size);

  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_windows() const { return num_windows_; }
  int64_t seq_len() const { return seq_len_; }
  const std::string& path() const { return file_.path(); }

  // The S + 1 tokens of window j (0 <= j < num_windows()), read in place from the map.
  const int32_t* window(int64_t j) const;
  // Which window position p of the sample stream reads (see the header comment).
  int64_t window_at(int64_t position) { return window_in(position, 0, num_windows_); }
  // The same rule over the windows [first, first + count) only (a train or validation split):
  // first + (p mod count) in order, or first + perm_e[p mod count] with e = p / count.
  int64_t window_in(int64_t position, int64_t first, int64_t count);
  // Fills `out` with the micro-batch's B windows, row-major [B, S + 1]; step is 0-based.
  void fill_step(int64_t step, int64_t micro_batch_index, int32_t* out);

  // The window order of one epoch when shuffling: a permutation of 0..n-1, a pure function of (seed, epoch).
  static std::vector<int64_t> epoch_permutation(uint64_t seed, int64_t epoch, int64_t n);

 private:
  MappedFile file_;
  const int32_t* tokens_ = nullptr;
  int64_t num_tokens_ = 0, num_windows_ = 0, seq_len_ = 0, micro_batch_ = 0, grad_accum_ = 0;
  bool shuffle_ = false;
  uint64_t seed_ = 0;
  int64_t cached_epoch_ = -1, cached_count_ = -1;  // the permutation in perm_: its epoch and length
  std::vector<int64_t> perm_;
};

}  // namespace dsv::train
