// GptDataset: split boundaries, packing, blending, shuffling and errors (the rules of src/data/gpt_dataset.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <set>

#include "data/gpt_dataset.h"
#include "data/indexed_dataset.h"
#include "test_helpers.h"

namespace dsv::data {
namespace {

namespace fs = std::filesystem;
using test::expect_error;
using train::Split;
using Range = std::pair<int64_t, int64_t>;

// A dataset whose token stream is base, base + 1, ... (mod 60000): documents of the given lengths.
std::string write_counting(const fs::path& dir, const std::string& name, const std::vector<int64_t>& doc_lengths,
                           int32_t base = 0) {
  const std::string prefix = (dir / name).string();
  IndexedDatasetBuilder b(prefix, TokenDtype::UInt16);
  int32_t next = base;
  for (const int64_t n : doc_lengths) {
    std::vector<int32_t> doc;
    for (int64_t i = 0; i < n; ++i) doc.push_back(next++ % 60000);
    b.add_document(doc);
  }
  b.finish();
  return prefix;
}

class GptDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("gpt"); }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST(GptSplit, DocumentRangesFollowMegatron) {
  EXPECT_EQ(split_document_range("98,2", Split::Train, 100), Range(0, 98));
  EXPECT_EQ(split_document_range("98,2", Split::Valid, 100), Range(98, 100));
  // round half to even, like Python's round: 2.5 -> 2, 3.5 -> 4
  EXPECT_EQ(split_document_range("1,1", Split::Train, 5), Range(0, 2));
  EXPECT_EQ(split_document_range("1,1", Split::Valid, 5), Range(2, 5));
  EXPECT_EQ(split_document_range("1,1", Split::Train, 7), Range(0, 4));
  // A third (test) share is carved off the end and never read.
  EXPECT_EQ(split_document_range("2,1,1", Split::Train, 8), Range(0, 4));
  EXPECT_EQ(split_document_range("2,1,1", Split::Valid, 8), Range(4, 6));
  EXPECT_EQ(split_document_range("100", Split::Valid, 9), Range(9, 9));
  EXPECT_EQ(split_document_range(" 99.5 , 0.5 ", Split::Train, 1000), Range(0, 995));
  expect_error([] { parse_split("a,b"); }, {"data.split \"a,b\"", "\"a\" is not a non-negative number"});
  expect_error([] { parse_split("1,2,3,4"); }, {"more than 3 shares"});
  expect_error([] { parse_split("0,0"); }, {"sum to 0"});
  expect_error([] { parse_split("-1,2"); }, {"\"-1\""});
  expect_error([] { parse_split("98,"); }, {"\"\" is not"});
}

TEST_F(GptDatasetTest, PacksTheSplitIntoWindowsOfSeqLenPlusOne) {
  // 10 documents of 7 tokens: split 8,2 gives train documents [0, 8) = tokens [0, 56), valid [56, 70).
  const auto p = write_counting(dir_, "a", std::vector<int64_t>(10, 7));
  const int64_t S = 5;
  GptDataset train({p}, {}, "8,2", Split::Train, S, false, 0, 60000);
  EXPECT_EQ(train.num_samples(), (56 - 1) / S);
  EXPECT_EQ(train.dataset_documents(0), Range(0, 8));
  std::vector<int32_t> in(S), tg(S);
  for (int64_t j = 0; j < train.num_samples(); ++j) {
    train.sample(j, in.data(), tg.data());
    for (int64_t i = 0; i < S; ++i) {
      EXPECT_EQ(in[static_cast<size_t>(i)], j * S + i) << "sample " << j;
      EXPECT_EQ(tg[static_cast<size_t>(i)], j * S + i + 1) << "sample " << j;
    }
  }
  // The last window ends inside the train split; position n wraps to sample 0 (file order).
  train.sample(train.num_samples(), in.data(), tg.data());
  EXPECT_EQ(in[0], 0);

  GptDataset valid({p}, {}, "8,2", Split::Valid, S, false, 0, 60000);
  EXPECT_EQ(valid.num_samples(), (14 - 1) / S);
  valid.sample(1, in.data(), tg.data());
  EXPECT_EQ(in[0], 56 + S);
  EXPECT_EQ(tg[S - 1], 56 + 2 * S);
  EXPECT_NE(valid.describe().find("valid split"), std::string::npos);
  EXPECT_NE(valid.describe().find("documents [8, 10) of 10"), std::string::npos) << valid.describe();
}

TEST_F(GptDatasetTest, ShuffleIsAPermutationPerEpochAndDeterministic) {
  const auto p = write_counting(dir_, "a", {400, 301});
  const int64_t S = 7;
  GptDataset a({p}, {}, "1", Split::Train, S, true, 1234, 0);
  GptDataset b({p}, {}, "1", Split::Train, S, true, 1234, 0);
  GptDataset other_seed({p}, {}, "1", Split::Train, S, true, 1235, 0);
  const int64_t n = a.num_samples();
  ASSERT_EQ(n, 700 / S);
  std::vector<int64_t> e0, e1, e0_other;
  for (int64_t k = 0; k < n; ++k) e0.push_back(a.pick(k).sample);
  for (int64_t k = 0; k < n; ++k) e1.push_back(a.pick(n + k).sample);
  for (int64_t k = 0; k < n; ++k) e0_other.push_back(other_seed.pick(k).sample);
  std::vector<int64_t> identity(static_cast<size_t>(n));
  std::iota(identity.begin(), identity.end(), 0);
  for (const auto* perm : {&e0, &e1, &e0_other}) {
    std::vector<int64_t> sorted = *perm;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, identity);
    EXPECT_NE(*perm, identity);
  }
  EXPECT_NE(e0, e1);
  EXPECT_NE(e0, e0_other);
  // Another instance, read backwards: the same samples (a pure function of the position).
  for (int64_t k = 2 * n - 1; k >= 0; --k) EXPECT_EQ(b.pick(k).sample, k < n ? e0[k] : e1[k - n]);
  // The tokens are those of the picked window.
  std::vector<int32_t> in(S), tg(S);
  a.sample(3, in.data(), tg.data());
  EXPECT_EQ(in[0], e0[3] * S);
  EXPECT_EQ(tg[S - 1], e0[3] * S + S);
}

TEST_F(GptDatasetTest, BlendingFollowsTheWeightsGreedily) {
  const auto p0 = write_counting(dir_, "a", {1000}, 0);
  const auto p1 = write_counting(dir_, "b", {1000}, 20000);
  const auto p2 = write_counting(dir_, "c", {1000}, 40000);
  const int64_t S = 10;
  GptDataset blend({p0, p1, p2}, {5, 3, 2}, "1", Split::Train, S, false, 0, 60000);
  EXPECT_DOUBLE_EQ(blend.normalized_weight(0), 0.5);
  EXPECT_DOUBLE_EQ(blend.normalized_weight(1), 0.3);
  EXPECT_DOUBLE_EQ(blend.normalized_weight(2), 0.2);
  EXPECT_EQ(blend.num_samples(), 3 * (999 / S));

  // Reference: the greedy rule written out plainly, walked from 0.
  const int64_t P = 10000;  // past several snapshots (every 4096) and several epochs of each dataset
  const double w[3] = {0.5, 0.3, 0.2};
  int64_t c[3] = {0, 0, 0};
  std::vector<GptDataset::Pick> expected;
  for (int64_t p = 0; p < P; ++p) {
    const double x = std::max<double>(static_cast<double>(p), 1.0);
    int best = 0;
    for (int d = 1; d < 3; ++d)
      if (w[d] * x - static_cast<double>(c[d]) > w[best] * x - static_cast<double>(c[best])) best = d;
    expected.push_back({best, c[best] % blend.dataset_samples(best)});
    ++c[best];
    // The counts never stray more than one sample from the weights.
    for (int d = 0; d < 3; ++d) EXPECT_LE(std::abs(static_cast<double>(c[d]) - w[d] * (p + 1)), 1.0) << p;
  }
  EXPECT_EQ(c[0], 5000);
  EXPECT_EQ(c[1], 3000);
  EXPECT_EQ(c[2], 2000);
  // Read sequentially, then at random places (as a resumed run would): always the same picks.
  for (int64_t p = 0; p < P; ++p) {
    const auto got = blend.pick(p);
    ASSERT_EQ(got.dataset, expected[p].dataset) << p;
    ASSERT_EQ(got.sample, expected[p].sample) << p;
  }
  GptDataset fresh({p0, p1, p2}, {5, 3, 2}, "1", Split::Train, S, false, 0, 60000);
  for (const int64_t p : {9000, 17, 4095, 4096, 8193, 0, 9999, 5000}) {
    const auto got = fresh.pick(p);
    EXPECT_EQ(got.dataset, expected[p].dataset) << p;
    EXPECT_EQ(got.sample, expected[p].sample) << p;
  }
  // Tokens come from the picked dataset (each counts from its own base).
  std::vector<int32_t> in(S), tg(S);
  for (const int64_t p : {0, 1, 2, 3, 4}) {
    fresh.sample(p, in.data(), tg.data());
    const auto e = expected[p];
    EXPECT_EQ(in[0], 20000 * e.dataset + e.sample * S) << p;
  }
}

TEST_F(GptDatasetTest, EqualWeightsByDefaultAndShuffledBlendIsPerDatasetPermutation) {
  const auto p0 = write_counting(dir_, "a", {300});
  const auto p1 = write_counting(dir_, "b", {500});
  const int64_t S = 10;
  GptDataset blend({p0, p1}, {}, "1", Split::Train, S, true, 7, 0);
  EXPECT_DOUBLE_EQ(blend.normalized_weight(0), 0.5);
  const int64_t n0 = blend.dataset_samples(0), n1 = blend.dataset_samples(1);
  std::vector<int64_t> seen0, seen1;
  for (int64_t p = 0; p < 2 * n0; ++p) {  // n0 samples of each dataset
    const auto k = blend.pick(p);
    (k.dataset == 0 ? seen0 : seen1).push_back(k.sample);
  }
  ASSERT_EQ(static_cast<int64_t>(seen0.size()), n0);
  ASSERT_EQ(static_cast<int64_t>(seen1.size()), n0);
  std::sort(seen0.begin(), seen0.end());
  for (int64_t i = 0; i < n0; ++i) EXPECT_EQ(seen0[static_cast<size_t>(i)], i);  // one full epoch of dataset 0
  EXPECT_EQ(std::set<int64_t>(seen1.begin(), seen1.end()).size(), seen1.size());  // no repeats within dataset 1's epoch
  for (const int64_t s : seen1) EXPECT_LT(s, n1);
}

TEST_F(GptDatasetTest, ShortSplitIsAClearError) {
  const auto p = write_counting(dir_, "tiny", {6, 4});
  expect_error([&] { GptDataset({p}, {}, "1", Split::Train, 16, false, 0, 0); },
               {"tiny.bin", "has 10 tokens", "train.seq_len 16 + 1"});
  // 50/50 split: the valid half is one document of 4 tokens.
  expect_error([&] { GptDataset({p}, {}, "1,1", Split::Valid, 4, false, 0, 0); },
               {"tiny.bin", "valid split", "documents [1, 2) of 2", "has 4 tokens"});
  // No valid share at all: an empty split.
  expect_error([&] { GptDataset({p}, {}, "100,0", Split::Valid, 4, false, 0, 0); }, {"has 0 tokens"});
  GptDataset ok({p}, {}, "1", Split::Train, 9, false, 0, 0);  // exactly S + 1 tokens: one sample
  EXPECT_EQ(ok.num_samples(), 1);
}

TEST_F(GptDatasetTest, BadArgumentsAreClearErrors) {
  const auto p = write_counting(dir_, "a", {100});
  expect_error([&] { GptDataset({p, p}, {1}, "1", Split::Train, 4, false, 0, 0); }, {"1 weights for 2 data.paths"});
  expect_error([&] { GptDataset({p, p}, {1, 0}, "1", Split::Train, 4, false, 0, 0); },
               {"data.weights[1]", "positive weight"});
  expect_error([&] { GptDataset({p}, {}, "x", Split::Train, 4, false, 0, 0); }, {"data.split \"x\""});
  expect_error([&] { GptDataset({}, {}, "1", Split::Train, 4, false, 0, 0); }, {"data.paths"});
  expect_error([&] { GptDataset({p}, {}, "1", Split::Train, 4, false, 0, 50); }, {"a.bin", "outside the vocabulary [0, 50)"});
  expect_error([&] { GptDataset({(dir_ / "missing").string()}, {}, "1", Split::Train, 4, false, 0, 0); },
               {"missing.idx", "cannot open"});
}

}  // namespace
}  // namespace dsv::data
