// GptDataset: pretraining samples packed from one or more Megatron indexed datasets, blended by
// weight (docs/DATA.md). Every step below is exact integer or IEEE double arithmetic, so a Python
// reference can reproduce the sample stream bit for bit:
//
// 1. Split (as Megatron's BlendedMegatronDatasetBuilder): data.split "a,b[,c]" is 1 to 3 non-negative
//    numbers (missing ones are 0, the sum must be > 0), normalized as s_i = x_i / (x_0 + x_1 + x_2) in
//    double. With c_1 = s_0 and c_2 = s_0 + s_1, a dataset of N documents gives
//      Train: documents [0, round(c_1 * N))      Valid: documents [round(c_1 * N), round(c_2 * N))
//    where round is round-half-to-even (Python's round); the third share ("test") is never read.
// 2. Packing: the split's documents are contiguous in the token stream (they end with EOD from
//    `dsv preprocess`), tokens [t0, t1). With S = seq_len there are n_d = (t1 - t0 - 1) / S samples;
//    sample j is the S + 1 tokens from t0 + j * S: inputs the first S, targets the last S (no -1).
//    A split with fewer than S + 1 tokens is an error naming the file.
// 3. Blending (Megatron's helpers.cpp build_blending_indices): w_d = weight_d / (sum of weights, added
//    in index order). Position p goes to the dataset d maximizing w_d * max(p, 1) - c_d(p), where c_d(p)
//    counts the positions q < p that went to d (ties: the lowest d; all in double). Position p reads
//    local sample k = c_d(p) of dataset d. (Note max(p, 1), Megatron's choice, not p + 1.)
// 4. Order within a dataset: epoch e = k / n_d, i = k mod n_d. Without shuffle the sample is i; with
//    shuffle it is perm[i] where perm = TokenData::epoch_permutation(seed ^ splitmix64(d), e, n_d)
//    (splitmix64 of src/ops/counter_rng.h). Each dataset wraps into its next epoch on its own.
//
// One dataset reads position p as sample p mod n_0 of epoch p / n_0, like TokenData (whose shuffled
// order differs: its permutation is keyed by the seed alone).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/indexed_dataset.h"
#include "train/sample_source.h"

namespace dsv::data {

// data.split as normalized shares (train, valid, test); errors name the string.
std::array<double, 3> parse_split(const std::string& split);
// The document range [begin, end) of `which` for a dataset of num_documents (step 1 above).
std::pair<int64_t, int64_t> split_document_range(const std::string& split, train::Split which, int64_t num_documents);

class GptDataset final : public train::SampleSource {
 public:
  // prefixes: PREFIX of PREFIX.bin/.idx each; weights: one positive weight per prefix, or empty for
  // equal weights; split: data.split ("98,2"); seq_len: S; vocab_size > 0 checks every token id.
  GptDataset(const std::vector<std::string>& prefixes, const std::vector<double>& weights, const std::string& split,
             train::Split which, int64_t seq_len, bool shuffle, uint64_t seed, int64_t vocab_size);

  // Sum of the datasets' sample counts n_d: the size of one pass over every split. It is a size, not a
  // period: each dataset wraps into its next epoch on its own, at its blend weight's pace.
  int64_t num_samples() const override { return total_samples_; }
  void sample(int64_t position, int32_t* inputs, int32_t* targets) override;
  std::string describe() const override;

  struct Pick {
    int64_t dataset;  // d
    int64_t sample;   // the sample (window) index j within dataset d's split, after shuffling
  };
  // Which dataset and sample position p reads (steps 3 and 4).
  Pick pick(int64_t position);

  int64_t num_datasets() const { return static_cast<int64_t>(sets_.size()); }
  int64_t dataset_samples(int64_t d) const { return sets_[static_cast<size_t>(d)].samples; }
  std::pair<int64_t, int64_t> dataset_documents(int64_t d) const {
    return {sets_[static_cast<size_t>(d)].doc_begin, sets_[static_cast<size_t>(d)].doc_end};
  }
  double normalized_weight(int64_t d) const { return sets_[static_cast<size_t>(d)].weight; }
  int64_t seq_len() const { return seq_len_; }

 private:
  struct Set {
    std::unique_ptr<IndexedDataset> data;
    double weight = 0;
    int64_t doc_begin = 0, doc_end = 0, token_begin = 0, tokens = 0, samples = 0;
    int64_t perm_epoch = -1;  // the epoch whose permutation is in perm
    std::vector<int64_t> perm;
  };
  // c_d(position) for every d, by walking the greedy blend from the nearest snapshot.
  int64_t blend_choice(int64_t position, const std::vector<int64_t>& counts) const;
  const std::vector<int64_t>& counts_before(int64_t position);

  std::vector<Set> sets_;
  std::string split_;
  train::Split which_;
  int64_t seq_len_ = 0, total_samples_ = 0;
  bool shuffle_ = false;
  uint64_t seed_ = 0;
  // Blend walk state: counts_ = c_d(cursor_); snapshots_[m] = c_d(m * kSnapshotEvery).
  static constexpr int64_t kSnapshotEvery = 4096;
  int64_t cursor_ = 0;
  std::vector<int64_t> counts_;
  std::vector<std::vector<int64_t>> snapshots_;
  std::vector<int32_t> window_;  // S + 1 tokens
};

}  // namespace dsv::data
