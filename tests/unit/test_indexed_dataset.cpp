// Megatron indexed datasets: round trips through our builder and reader, every structural check at
// open, and a fixture written by megatron-core's own IndexedDatasetBuilder (tests/ref/make_megatron_fixture.py).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/indexed_dataset.h"
#include "test_helpers.h"

namespace dsv::data {
namespace {

namespace fs = std::filesystem;
using test::expect_error;

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

template <typename T>
void put(std::string& s, size_t offset, T v) {
  std::memcpy(s.data() + offset, &v, sizeof v);
}

// Three documents: [1 2 3 | 4 5] (two sequences), [] (no sequences), [6 7 8 9].
std::string write_small(const fs::path& dir, TokenDtype dtype, int32_t big = 9) {
  const std::string prefix = (dir / "small").string();
  IndexedDatasetBuilder b(prefix, dtype);
  const std::vector<int32_t> d0 = {1, 2, 3, 4, 5};
  const std::vector<int64_t> l0 = {3, 2};
  b.add_document(d0, l0);
  b.add_document(std::vector<int32_t>{});
  b.add_document(std::vector<int32_t>{6, 7, 8, big});
  EXPECT_EQ(b.num_documents(), 3);
  EXPECT_EQ(b.num_sequences(), 3);
  EXPECT_EQ(b.num_tokens(), 9);
  b.finish();
  return prefix;
}

TEST(IndexedDataset, RoundTripUint16) {
  const auto dir = test::temp_dir("idx_u16");
  const std::string prefix = write_small(dir, TokenDtype::UInt16, 65535);
  EXPECT_FALSE(fs::exists(prefix + ".bin.tmp"));
  EXPECT_FALSE(fs::exists(prefix + ".idx.tmp"));
  EXPECT_EQ(fs::file_size(prefix + ".bin"), 9u * 2);
  // Header + 3 lengths + 3 pointers + 4 document indices.
  EXPECT_EQ(fs::file_size(prefix + ".idx"), 34u + 3 * 4 + 3 * 8 + 4 * 8);

  IndexedDataset ds(prefix);
  EXPECT_EQ(ds.dtype(), TokenDtype::UInt16);
  EXPECT_EQ(ds.num_sequences(), 3);
  EXPECT_EQ(ds.num_documents(), 3);
  EXPECT_EQ(ds.num_tokens(), 9);
  EXPECT_EQ(ds.sequence(0), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(ds.sequence(1), (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(ds.sequence(2), (std::vector<int32_t>{6, 7, 8, 65535}));
  EXPECT_EQ(ds.document(0), (std::vector<int32_t>{1, 2, 3, 4, 5}));
  EXPECT_TRUE(ds.document(1).empty());
  EXPECT_EQ(ds.document(2), (std::vector<int32_t>{6, 7, 8, 65535}));
  EXPECT_EQ(ds.document_first_sequence(1), 2);
  EXPECT_EQ(ds.document_first_sequence(2), 2);
  EXPECT_EQ(ds.tokens(4, 3), (std::vector<int32_t>{5, 6, 7}));  // across a document boundary
  expect_error([&] { ds.tokens(7, 3); }, {"tokens [7, 10) outside [0, 9)"});
  fs::remove_all(dir);
}

TEST(IndexedDataset, RoundTripInt32AndIndexBytes) {
  const auto dir = test::temp_dir("idx_i32");
  const std::string prefix = write_small(dir, TokenDtype::Int32, 129279);
  IndexedDataset ds(prefix, 129280);
  EXPECT_EQ(ds.dtype(), TokenDtype::Int32);
  EXPECT_EQ(ds.document(2), (std::vector<int32_t>{6, 7, 8, 129279}));
  EXPECT_EQ(ds.sequence_begin(2), 5);
  // The exact layout, byte for byte.
  const std::string idx = read_all(prefix + ".idx");
  EXPECT_EQ(idx.substr(0, 9), std::string("MMIDIDX\0\0", 9));
  auto u64 = [&](size_t off) {
    uint64_t v;
    std::memcpy(&v, idx.data() + off, 8);
    return v;
  };
  EXPECT_EQ(u64(9), 1u);
  EXPECT_EQ(static_cast<uint8_t>(idx[17]), 4);  // int32
  EXPECT_EQ(u64(18), 3u);                       // sequences
  EXPECT_EQ(u64(26), 4u);                       // documents + 1
  int32_t lens[3];
  std::memcpy(lens, idx.data() + 34, 12);
  EXPECT_EQ(lens[0], 3);
  EXPECT_EQ(lens[1], 2);
  EXPECT_EQ(lens[2], 4);
  EXPECT_EQ(u64(46), 0u);  // pointers, in bytes
  EXPECT_EQ(u64(54), 12u);
  EXPECT_EQ(u64(62), 20u);
  EXPECT_EQ(u64(70), 0u);  // document indices
  EXPECT_EQ(u64(78), 2u);
  EXPECT_EQ(u64(86), 2u);
  EXPECT_EQ(u64(94), 3u);
  fs::remove_all(dir);
}

TEST(IndexedDataset, OptimalDtypeFollowsMegatron) {
  EXPECT_EQ(optimal_token_dtype(32000), TokenDtype::UInt16);
  EXPECT_EQ(optimal_token_dtype(65499), TokenDtype::UInt16);
  EXPECT_EQ(optimal_token_dtype(65500), TokenDtype::Int32);
  EXPECT_EQ(optimal_token_dtype(129280), TokenDtype::Int32);
}

TEST(IndexedDataset, BuilderRejectsIdsThatDoNotFit) {
  const auto dir = test::temp_dir("idx_fit");
  const std::string prefix = (dir / "x").string();
  {
    IndexedDatasetBuilder b(prefix, TokenDtype::UInt16);
    b.add_document(std::vector<int32_t>{1, 2});
    expect_error([&] { b.add_document(std::vector<int32_t>{3, 65536}); },
                 {"document 1", "token 1 is 65536", "uint16"});
    expect_error([&] { b.add_document(std::vector<int32_t>{-1}); }, {"token 0 is -1"});
    const std::vector<int32_t> t = {1, 2, 3};
    const std::vector<int64_t> l = {1, 1};
    expect_error([&] { b.add_document(t, l); }, {"sequence lengths sum to 2, it has 3 tokens"});
    // Never finished: nothing is left behind.
  }
  EXPECT_TRUE(fs::is_empty(dir));
  expect_error([&] { IndexedDatasetBuilder b(prefix, TokenDtype::Float32); }, {"integer dtype"});
  fs::remove_all(dir);
}

// Corruptions: each one rewrites a valid pair and expects the reader's message.
class IndexedDatasetCorrupt : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir("idx_bad");
    prefix_ = write_small(dir_, TokenDtype::Int32);
    idx_ = read_all(prefix_ + ".idx");
    bin_ = read_all(prefix_ + ".bin");
  }
  void TearDown() override { fs::remove_all(dir_); }
  void expect_open_error(const std::string& idx, const std::string& bin, std::initializer_list<std::string> needles,
                         int64_t vocab = 0) {
    test::write_raw(prefix_ + ".idx", idx);
    test::write_raw(prefix_ + ".bin", bin);
    expect_error([&] { IndexedDataset ds(prefix_, vocab); }, needles);
  }
  fs::path dir_;
  std::string prefix_, idx_, bin_;
};

TEST_F(IndexedDatasetCorrupt, TruncatedHeader) { expect_open_error(idx_.substr(0, 20), bin_, {"truncated index", "20 bytes"}); }

TEST_F(IndexedDatasetCorrupt, TruncatedArrays) {
  expect_open_error(idx_.substr(0, idx_.size() - 8), bin_, {"truncated index", "3 sequences and 4 document indices"});
}

TEST_F(IndexedDatasetCorrupt, HugeCountsDoNotOverflow) {
  std::string idx = idx_;
  put<uint64_t>(idx, 18, ~uint64_t{0} / 4);
  expect_open_error(idx, bin_, {"truncated index"});
}

TEST_F(IndexedDatasetCorrupt, TrailingBytes) { expect_open_error(idx_ + "xy", bin_, {"multimodal"}); }

TEST_F(IndexedDatasetCorrupt, BadMagic) {
  std::string idx = idx_;
  idx[0] = 'X';
  expect_open_error(idx, bin_, {".idx", "bad magic"});
}

TEST_F(IndexedDatasetCorrupt, WrongVersion) {
  std::string idx = idx_;
  put<uint64_t>(idx, 9, 2);
  expect_open_error(idx, bin_, {"unsupported index version 2"});
}

TEST_F(IndexedDatasetCorrupt, UnknownDtype) {
  std::string idx = idx_;
  idx[17] = 9;
  expect_open_error(idx, bin_, {"unknown dtype code 9"});
  idx[17] = 7;
  expect_open_error(idx, bin_, {"float32 holds no token ids"});
}

TEST_F(IndexedDatasetCorrupt, PointerPastBin) {
  std::string idx = idx_;
  put<int64_t>(idx, 62, 24);  // sequence 2 (4 int32 = 16 bytes) at byte 24 of a 36-byte .bin
  expect_open_error(idx, bin_, {"sequence 2", "runs past the end", ".bin (36 bytes)"});
}

TEST_F(IndexedDatasetCorrupt, LengthPastBin) {
  std::string idx = idx_;
  put<int32_t>(idx, 42, 5);  // sequence 2 now 5 tokens from byte 20: 40 > 36
  expect_open_error(idx, bin_, {"sequence 2 (5 tokens at byte 20) runs past the end"});
}

TEST_F(IndexedDatasetCorrupt, NegativeLength) {
  std::string idx = idx_;
  put<int32_t>(idx, 34, -1);
  expect_open_error(idx, bin_, {"sequence 0 has negative length -1"});
}

TEST_F(IndexedDatasetCorrupt, GapBetweenSequences) {
  std::string idx = idx_;
  put<int64_t>(idx, 54, 8);  // sequence 1 at byte 8 instead of 12
  expect_open_error(idx, bin_, {"sequence 1 starts at byte 8, expected 12"});
}

TEST_F(IndexedDatasetCorrupt, BinLongerThanIndex) {
  expect_open_error(idx_, bin_ + std::string(4, '\0'), {"40 bytes", "describes 36 bytes"});
}

TEST_F(IndexedDatasetCorrupt, BinTruncated) { expect_open_error(idx_, bin_.substr(0, 30), {"runs past the end"}); }

TEST_F(IndexedDatasetCorrupt, DocumentIndicesDecrease) {
  std::string idx = idx_;
  put<int64_t>(idx, 86, 1);  // 0, 2, 1, 3
  expect_open_error(idx, bin_, {"document index 2 is 1 after 2", "non-decreasing"});
}

TEST_F(IndexedDatasetCorrupt, DocumentIndicesDoNotStartAtZero) {
  std::string idx = idx_;
  put<int64_t>(idx, 70, 1);
  expect_open_error(idx, bin_, {"document indices start at 1, expected 0"});
}

TEST_F(IndexedDatasetCorrupt, DocumentIndicesEndEarly) {
  std::string idx = idx_;
  put<int64_t>(idx, 94, 2);
  expect_open_error(idx, bin_, {"the last document ends at sequence 2, expected 3"});
}

TEST_F(IndexedDatasetCorrupt, TokenOutsideVocabulary) {
  expect_open_error(idx_, bin_, {".bin: token 8 (byte offset 32) is 9, outside the vocabulary [0, 9)"}, 9);
  // The same file opens with a vocabulary that holds it.
  IndexedDataset ok(prefix_, 10);
  EXPECT_EQ(ok.num_tokens(), 9);
}

TEST_F(IndexedDatasetCorrupt, MissingBin) {
  fs::remove(prefix_ + ".bin");
  expect_error([&] { IndexedDataset ds(prefix_); }, {"small.bin", "cannot open"});
}

// Written by megatron-core's IndexedDatasetBuilder (tests/ref/make_megatron_fixture.py).
TEST(IndexedDataset, ReadsMegatronFixture) {
  const std::string dir = test::source_dir() + "/tests/fixtures/data/megatron";
  std::ifstream f(dir + "/expected.json");
  ASSERT_TRUE(f) << "missing " << dir << "/expected.json";
  const auto expected = nlohmann::json::parse(f);
  for (const auto& [name, want] : expected["datasets"].items()) {
    SCOPED_TRACE(name);
    IndexedDataset ds(dir + "/" + name, want["vocab_size"].get<int64_t>());
    EXPECT_EQ(dtype_name(ds.dtype()), want["dtype"].get<std::string>());
    const auto& docs = want["documents"];
    ASSERT_EQ(ds.num_documents(), static_cast<int64_t>(docs.size()));
    int64_t seq = 0;
    for (size_t d = 0; d < docs.size(); ++d) {
      std::vector<int32_t> all;
      for (const auto& s : docs[d]) {
        EXPECT_EQ(ds.sequence(seq), s.get<std::vector<int32_t>>()) << "document " << d << " sequence " << seq;
        const auto v = s.get<std::vector<int32_t>>();
        all.insert(all.end(), v.begin(), v.end());
        ++seq;
      }
      EXPECT_EQ(ds.document(static_cast<int64_t>(d)), all) << "document " << d;
    }
    EXPECT_EQ(ds.num_sequences(), seq);
  }
}

}  // namespace
}  // namespace dsv::data
