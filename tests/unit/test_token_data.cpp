// Token windows: file order, the shuffled order (deterministic, a permutation per epoch), and the
// errors at open.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <set>

#include "test_helpers.h"
#include "train/token_data.h"

namespace dsv::train {
namespace {

namespace fs = std::filesystem;

class TokenDataTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("tokens"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write_tokens(const std::string& name, const std::vector<int32_t>& ids) {
    const fs::path p = dir_ / name;
    test::write_raw(p, std::string(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int32_t)));
    return p.string();
  }
  std::string iota_file(int32_t n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    std::iota(ids.begin(), ids.end(), 0);
    return write_tokens("iota.bin", ids);
  }
  fs::path dir_;
};

// The window a filled row holds: rows are S + 1 consecutive ids of the iota file, starting at j * S.
int64_t window_of(const int32_t* row, int64_t S) { return row[0] / S; }

TEST_F(TokenDataTest, WindowsInFileOrder) {
  // 25 tokens, S = 4: n_win = (25 - 1) / 4 = 6; window j = tokens 4j .. 4j + 4.
  TokenData d(iota_file(25), /*seq_len=*/4, /*micro_batch=*/2, /*grad_accum=*/2, /*shuffle=*/false, 1, 100);
  EXPECT_EQ(d.num_tokens(), 25);
  EXPECT_EQ(d.num_windows(), 6);
  EXPECT_EQ(d.window(5)[4], 24);  // the last window ends on the last token
  std::vector<int32_t> out(2 * 5);
  // Step s, micro-batch a, row i reads window ((s * A + a) * B + i) mod n_win.
  const int64_t expected[3][2][2] = {{{0, 1}, {2, 3}}, {{4, 5}, {0, 1}}, {{2, 3}, {4, 5}}};
  for (int64_t s = 0; s < 3; ++s)
    for (int64_t a = 0; a < 2; ++a) {
      d.fill_step(s, a, out.data());
      for (int64_t i = 0; i < 2; ++i) {
        const int32_t* row = out.data() + i * 5;
        EXPECT_EQ(window_of(row, 4), expected[s][a][i]) << "step " << s << " micro-batch " << a << " row " << i;
        for (int k = 0; k < 5; ++k) EXPECT_EQ(row[k], row[0] + k);  // S + 1 consecutive tokens
      }
    }
  // 24 tokens: the 6th window would need token 24, so there are 5.
  TokenData short_file(write_tokens("short.bin", std::vector<int32_t>(24, 3)), 4, 1, 1, false, 1, 100);
  EXPECT_EQ(short_file.num_windows(), 5);
}

TEST_F(TokenDataTest, ShuffleIsADeterministicPermutationPerEpoch) {
  const int64_t S = 2, n_win = 50;
  const std::string path = iota_file(static_cast<int32_t>(n_win * S + 1));
  TokenData a(path, S, 5, 2, true, 1234, 1000), b(path, S, 5, 2, true, 1234, 1000), other(path, S, 5, 2, true, 99, 1000);
  ASSERT_EQ(a.num_windows(), n_win);
  // 3 epochs = 150 windows = 15 steps of 2 micro-batches of 5.
  std::vector<int64_t> order_a, order_b, order_other;
  std::vector<int32_t> out(5 * (S + 1));
  for (int64_t s = 0; s < 15; ++s)
    for (int64_t m = 0; m < 2; ++m) {
      a.fill_step(s, m, out.data());
      for (int i = 0; i < 5; ++i) order_a.push_back(window_of(out.data() + i * (S + 1), S));
      b.fill_step(s, m, out.data());
      for (int i = 0; i < 5; ++i) order_b.push_back(window_of(out.data() + i * (S + 1), S));
      other.fill_step(s, m, out.data());
      for (int i = 0; i < 5; ++i) order_other.push_back(window_of(out.data() + i * (S + 1), S));
    }
  EXPECT_EQ(order_a, order_b);      // same seed, same order
  EXPECT_NE(order_a, order_other);  // another seed, another order
  std::vector<int64_t> sorted_iota(static_cast<size_t>(n_win));
  std::iota(sorted_iota.begin(), sorted_iota.end(), 0);
  std::vector<std::vector<int64_t>> epochs;
  for (int e = 0; e < 3; ++e) {
    std::vector<int64_t> epoch(order_a.begin() + e * n_win, order_a.begin() + (e + 1) * n_win);
    EXPECT_NE(epoch, sorted_iota) << "epoch " << e << " is in file order";
    epochs.push_back(epoch);
    std::sort(epoch.begin(), epoch.end());
    EXPECT_EQ(epoch, sorted_iota) << "epoch " << e << " is not a permutation of the windows";
  }
  EXPECT_NE(epochs[0], epochs[1]);  // drawn anew each epoch
  EXPECT_NE(epochs[1], epochs[2]);
  // Random access agrees with the sequential read (the cached epoch is refreshed both ways).
  EXPECT_EQ(a.window_at(2 * n_win + 7), order_a[2 * n_win + 7]);
  EXPECT_EQ(a.window_at(3), order_a[3]);
}

TEST_F(TokenDataTest, EpochPermutationIsPinned) {
  // The algorithm is part of the data contract (a Python mirror of token_data.h gives these).
  EXPECT_EQ(TokenData::epoch_permutation(1234, 0, 8), (std::vector<int64_t>{5, 6, 1, 0, 2, 7, 3, 4}));
  EXPECT_EQ(TokenData::epoch_permutation(1234, 1, 8), (std::vector<int64_t>{6, 7, 1, 3, 5, 0, 2, 4}));
  EXPECT_EQ(TokenData::epoch_permutation(7, 0, 8), (std::vector<int64_t>{5, 6, 7, 2, 1, 3, 0, 4}));
  EXPECT_EQ(TokenData::epoch_permutation(7, 0, 1), (std::vector<int64_t>{0}));
  auto big = TokenData::epoch_permutation(42, 3, 10000);
  std::sort(big.begin(), big.end());
  for (int64_t i = 0; i < 10000; ++i) ASSERT_EQ(big[static_cast<size_t>(i)], i);
}

TEST_F(TokenDataTest, FromARecipe) {
  TrainConfig c;
  c.data_tokens = iota_file(41);
  c.seq_len = 8;
  c.micro_batch = 3;
  c.grad_accum = 1;
  TokenData d(c, 64);
  EXPECT_EQ(d.num_windows(), 5);
  std::vector<int32_t> out(3 * 9);
  d.fill_step(1, 0, out.data());  // windows 3, 4, 0
  EXPECT_EQ(out[0], 24);
  EXPECT_EQ(out[9], 32);
  EXPECT_EQ(out[18], 0);
}

TEST_F(TokenDataTest, Errors) {
  const std::string odd = (dir_ / "odd.bin").string();
  test::write_raw(odd, std::string(10, '\0'));
  test::expect_error([&] { TokenData(odd, 2, 1, 1, false, 1, 10); }, {"odd.bin", "multiple of 4", "10 bytes"});

  const std::string three = write_tokens("three.bin", {1, 2, 3});
  test::expect_error([&] { TokenData(three, 4, 1, 1, false, 1, 10); }, {"three.bin", "has 3 tokens", "at least 5"});
  const std::string empty = write_tokens("empty.bin", {});
  test::expect_error([&] { TokenData(empty, 4, 1, 1, false, 1, 10); }, {"has 0 tokens"});

  std::vector<int32_t> ids(20, 5);
  ids[7] = -1;
  ids[12] = 10;
  const std::string negative = write_tokens("neg.bin", ids);
  test::expect_error([&] { TokenData(negative, 4, 1, 1, false, 1, 10); },
                     {"neg.bin", "token 7", "is -1", "[0, 10)"});  // the first bad one
  ids[7] = 5;
  const std::string large = write_tokens("large.bin", ids);
  test::expect_error([&] { TokenData(large, 4, 1, 1, false, 1, 10); }, {"token 12", "is 10"});

  test::expect_error([&] { TokenData((dir_ / "missing.bin").string(), 4, 1, 1, false, 1, 10); },
                     {"missing.bin", "cannot open"});

  TokenData d(iota_file(9), 4, 1, 2, false, 1, 10);
  std::vector<int32_t> out(5);
  test::expect_error([&] { d.fill_step(0, 2, out.data()); }, {"micro-batch index in [0, 2)"});
  test::expect_error([&] { d.fill_step(-1, 0, out.data()); }, {"step >= 0"});
}

}  // namespace
}  // namespace dsv::train
