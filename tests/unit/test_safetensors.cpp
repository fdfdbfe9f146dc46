// Bad input to the safetensors reader: each case gives one clear error naming the file or tensor.
#include <gtest/gtest.h>

#include <cstring>

#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "test_helpers.h"

namespace dsv {
namespace {

std::string file_with_header(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  const uint64_t len = header.size();
  std::memcpy(out.data(), &len, 8);
  return out + header + std::string(data_bytes, '\x01');
}

}  // namespace

TEST(Safetensors, ReadsWhatTheWriterWrote) {
  auto dir = test::temp_dir("st_ok");
  const float a[6] = {1, 2, 3, 4, 5, 6};
  const uint16_t b[2] = {0x3f80, 0xc000};
  write_safetensors((dir / "x.safetensors").string(),
                    {{"a", DType::F32, {2, 3}, a}, {"b", DType::BF16, {2}, b}}, {{"format", "pt"}});
  SafetensorsFile f((dir / "x.safetensors").string());
  ASSERT_EQ(f.tensors().size(), 2u);
  const TensorEntry& ta = f.tensors().at("a");
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(ta.data, a, sizeof a), 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ta.data) % 4, 0u) << "data block must stay aligned for zero-copy fp32";
  EXPECT_EQ(f.tensors().at("b").dtype, DType::BF16);
}

TEST(Safetensors, TruncatedFile) {
  auto dir = test::temp_dir("st_trunc");
  test::write_raw(dir / "short.safetensors", "abc");
  test::expect_error([&] { SafetensorsFile((dir / "short.safetensors").string()); }, {"short.safetensors", "truncated"});
  // A header length that points past the end of the file.
  std::string bytes = file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
  bytes.resize(bytes.size() - 20);
  test::write_raw(dir / "cut.safetensors", bytes);
  test::expect_error([&] { SafetensorsFile((dir / "cut.safetensors").string()); }, {"cut.safetensors", "truncated"});
}

TEST(Safetensors, HeaderIsNotJson) {
  auto dir = test::temp_dir("st_json");
  test::write_raw(dir / "bad.safetensors", file_with_header("{not json at all", 0));
  test::expect_error([&] { SafetensorsFile((dir / "bad.safetensors").string()); }, {"bad.safetensors", "not valid JSON"});
}

TEST(Safetensors, OffsetsOutsideFile) {
  auto dir = test::temp_dir("st_off");
  test::write_raw(dir / "o.safetensors",
                  file_with_header(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8));
  test::expect_error([&] { SafetensorsFile((dir / "o.safetensors").string()); }, {"\"w\"", "outside the data block"});
  test::write_raw(dir / "m.safetensors",
                  file_with_header(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})", 16));
  test::expect_error([&] { SafetensorsFile((dir / "m.safetensors").string()); }, {"\"w\"", "need 16 bytes"});
}

TEST(Safetensors, UnknownDtype) {
  auto dir = test::temp_dir("st_dtype");
  test::write_raw(dir / "d.safetensors",
                  file_with_header(R"({"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", 1));
  test::expect_error([&] { SafetensorsFile((dir / "d.safetensors").string()); }, {"\"w\"", "unsupported dtype \"F4\""});
}

TEST(Safetensors, MalformedEntries) {
  auto dir = test::temp_dir("st_entries");
  test::write_raw(dir / "s.safetensors",
                  file_with_header(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4));
  test::expect_error([&] { SafetensorsFile((dir / "s.safetensors").string()); }, {"\"w\"", "non-negative"});
  test::write_raw(dir / "n.safetensors", file_with_header(R"({"w":{"dtype":"F32"}})", 0));
  test::expect_error([&] { SafetensorsFile((dir / "n.safetensors").string()); }, {"\"w\"", "data_offsets"});
  test::write_raw(dir / "big.safetensors", std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}");
  test::expect_error([&] { SafetensorsFile((dir / "big.safetensors").string()); }, {"header length"});
}

TEST(Checkpoint, ShardedIndex) {
  auto dir = test::temp_dir("ckpt_shards");
  const float a[2] = {1, 2}, b[3] = {3, 4, 5};
  write_safetensors((dir / "model-00001-of-00002.safetensors").string(), {{"a", DType::F32, {2}, a}});
  write_safetensors((dir / "model-00002-of-00002.safetensors").string(), {{"b", DType::F32, {3}, b}});
  test::write_raw(dir / "model.safetensors.index.json",
                  R"({"metadata":{}, "weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
  Checkpoint ck(dir.string());
  EXPECT_EQ(ck.file_count(), 2u);
  EXPECT_EQ(ck.get("b").shape, (std::vector<int64_t>{3}));
  test::expect_error([&] { ck.get("c"); }, {"\"c\"", "missing"});
}

TEST(Checkpoint, IndexNamesMissingShard) {
  auto dir = test::temp_dir("ckpt_missing_shard");
  test::write_raw(dir / "model.safetensors.index.json", R"({"weight_map":{"a":"gone.safetensors"}})");
  test::expect_error([&] { Checkpoint c(dir.string()); }, {"gone.safetensors", "missing"});
  test::write_raw(dir / "model.safetensors.index.json", R"({"weight_map": 3})");
  test::expect_error([&] { Checkpoint c(dir.string()); }, {"weight_map"});
}

TEST(Checkpoint, EmptyDirectory) {
  auto dir = test::temp_dir("ckpt_empty");
  test::expect_error([&] { Checkpoint c(dir.string()); }, {"no safetensors files"});
}

}  // namespace dsv
