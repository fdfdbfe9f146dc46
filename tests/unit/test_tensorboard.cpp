// TensorBoard event files, read back by a small independent reader: TFRecord framing, both masked
// CRC-32C values (a bitwise CRC here, checked against published test vectors), and the protobuf fields.
// tests/ref/check_tensorboard.py reads the ReferenceRun file with TensorBoard's own EventAccumulator.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "test_helpers.h"
#include "train/metrics.h"
#include "train/tensorboard.h"

namespace dsv::train {
namespace {

namespace fs = std::filesystem;

// Bit-at-a-time CRC-32C, independent of the table-driven one under test.
uint32_t crc32c_bitwise(const std::string& s) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char byte : s) {
    crc ^= byte;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}
uint32_t mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

template <typename T>
T read_le(const std::string& s, size_t at) {
  T v;
  std::memcpy(&v, s.data() + at, sizeof(T));
  return v;
}

// A decoded protobuf message: field number -> raw values (varints as integers, fixed as bytes, strings).
struct Field {
  int wire = 0;
  uint64_t varint = 0;
  std::string bytes;  // wire 1, 2, 5
};
std::multimap<int, Field> decode(const std::string& msg) {
  std::multimap<int, Field> out;
  size_t at = 0;
  auto varint = [&] {
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      EXPECT_LT(at, msg.size());
      if (at >= msg.size()) return v;
      const auto b = static_cast<uint8_t>(msg[at++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
  };
  while (at < msg.size()) {
    const uint64_t key = varint();
    Field f;
    f.wire = static_cast<int>(key & 7);
    if (f.wire == 0) {
      f.varint = varint();
    } else {
      const size_t n = f.wire == 1 ? 8 : f.wire == 5 ? 4 : f.wire == 2 ? varint() : 0;
      EXPECT_TRUE(f.wire == 1 || f.wire == 2 || f.wire == 5) << "wire type " << f.wire;
      EXPECT_LE(at + n, msg.size());
      if (at + n > msg.size()) return out;
      f.bytes = msg.substr(at, n);
      at += n;
    }
    out.emplace(static_cast<int>(key >> 3), f);
  }
  return out;
}

struct Event {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  std::vector<std::pair<std::string, float>> values;
};

// Reads every record, checking the framing and both CRCs, and decodes the Event fields we write.
std::vector<Event> read_events(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string file = ss.str();
  std::vector<Event> events;
  size_t at = 0;
  while (at < file.size()) {
    EXPECT_LE(at + 12, file.size());
    if (at + 12 > file.size()) break;
    const auto len = read_le<uint64_t>(file, at);
    EXPECT_EQ(read_le<uint32_t>(file, at + 8), mask(crc32c_bitwise(file.substr(at, 8)))) << "length CRC at " << at;
    EXPECT_LE(at + 12 + len + 4, file.size());
    if (at + 12 + len + 4 > file.size()) break;
    const std::string payload = file.substr(at + 12, len);
    EXPECT_EQ(read_le<uint32_t>(file, at + 12 + len), mask(crc32c_bitwise(payload))) << "payload CRC at " << at;
    at += 12 + len + 4;

    Event e;
    for (const auto& [field, f] : decode(payload)) {
      if (field == 1) {
        EXPECT_EQ(f.wire, 1);
        e.wall_time = read_le<double>(f.bytes, 0);
      } else if (field == 2) {
        EXPECT_EQ(f.wire, 0);
        e.step = static_cast<int64_t>(f.varint);
      } else if (field == 3) {
        EXPECT_EQ(f.wire, 2);
        e.file_version = f.bytes;
      } else if (field == 5) {
        EXPECT_EQ(f.wire, 2);
        for (const auto& [vf, value] : decode(f.bytes)) {
          EXPECT_EQ(vf, 1);  // Summary.value
          std::string tag;
          float simple = NAN;
          for (const auto& [k, x] : decode(value.bytes)) {
            if (k == 1) tag = x.bytes;
            if (k == 2) {
              EXPECT_EQ(x.wire, 5);
              simple = read_le<float>(x.bytes, 0);
            }
          }
          e.values.emplace_back(tag, simple);
        }
      } else {
        ADD_FAILURE() << "unexpected Event field " << field;
      }
    }
    events.push_back(e);
  }
  return events;
}

std::vector<fs::path> event_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().rfind("events.out.tfevents.", 0) == 0) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

StepMetrics sample_step(int64_t step) {
  StepMetrics m;
  m.step = step;
  m.loss = 10.0 / static_cast<double>(step) + 0.125;
  m.mtp_loss = m.loss * 1.5;
  m.aux_loss = 0.001 * static_cast<double>(step);
  m.grad_norm = 2.0 + static_cast<double>(step);
  m.lr = 3e-4 * static_cast<double>(step) / 4.0;
  m.tokens = 2048;
  m.tokens_per_second = 1000.0 * static_cast<double>(step);
  m.mfu = 0.01 * static_cast<double>(step);
  m.expert_imbalance = {1.0 + 0.5 * static_cast<double>(step), 2.0, 1.25};
  return m;
}

TEST(TensorBoard, Crc32cMatchesPublishedVectors) {
  // RFC 3720 (iSCSI) B.4 and the classic check value.
  const std::string zeros(32, '\0'), ones(32, '\xff');
  std::string ascending;
  for (int i = 0; i < 32; ++i) ascending.push_back(static_cast<char>(i));
  EXPECT_EQ(crc32c_bitwise("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c_bitwise(zeros), 0x8A9136AAu);
  EXPECT_EQ(crc32c_bitwise(ones), 0x62A8AB43u);
  EXPECT_EQ(crc32c_bitwise(ascending), 0x46DD794Eu);
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(crc32c(ascending.data(), ascending.size()), 0x46DD794Eu);
  EXPECT_EQ(masked_crc32c("123456789", 9), mask(0xE3069283u));
}

TEST(TensorBoard, WritesFramedEventsWithStepScalars) {
  const fs::path dir = test::temp_dir("tensorboard") / "run";  // created by the writer
  const double before = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::string path;
  {
    TensorBoardWriter w(dir.string());
    path = w.path();
    w.write(sample_step(1));
    w.write(sample_step(2));
    w.write_validation(2, 3.5);
    w.scalar("custom/value", -3, 0.75);
    w.flush();
  }
  const std::vector<fs::path> files = event_files(dir);
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].string(), path);
  // events.out.tfevents.<unix seconds>.<hostname>
  const std::string name = files[0].filename().string();
  const std::string rest = name.substr(std::strlen("events.out.tfevents."));
  const auto seconds = std::stoll(rest.substr(0, rest.find('.')));
  EXPECT_NEAR(static_cast<double>(seconds), before, 5.0);
  EXPECT_GT(rest.size(), rest.find('.') + 1) << "no host name in " << name;

  const std::vector<Event> events = read_events(path);
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_TRUE(events[0].values.empty());
  for (const Event& e : events) EXPECT_NEAR(e.wall_time, before, 60.0);

  for (int i = 1; i <= 2; ++i) {
    const Event& e = events[static_cast<size_t>(i)];
    const StepMetrics m = sample_step(i);
    EXPECT_EQ(e.step, i);
    const std::vector<std::pair<std::string, double>> want = {
        {"train/loss", m.loss},
        {"train/mtp_loss", m.mtp_loss},
        {"train/aux_loss", m.aux_loss},
        {"train/grad_norm", m.grad_norm},
        {"train/lr", m.lr},
        {"train/tokens_per_second", m.tokens_per_second},
        {"train/mfu", m.mfu},
        {"train/expert_imbalance/layer_0", m.expert_imbalance[0]},
        {"train/expert_imbalance/layer_1", m.expert_imbalance[1]},
        {"train/expert_imbalance/layer_2", m.expert_imbalance[2]}};
    ASSERT_EQ(e.values.size(), want.size());
    for (size_t k = 0; k < want.size(); ++k) {
      EXPECT_EQ(e.values[k].first, want[k].first);
      EXPECT_EQ(e.values[k].second, static_cast<float>(want[k].second)) << want[k].first;
    }
  }
  EXPECT_EQ(events[3].step, 2);
  ASSERT_EQ(events[3].values.size(), 1u);
  EXPECT_EQ(events[3].values[0].first, "val/loss");
  EXPECT_EQ(events[3].values[0].second, 3.5f);
  EXPECT_EQ(events[4].step, -3);  // a negative int64 is a ten-byte varint
  EXPECT_EQ(events[4].values[0].first, "custom/value");
  EXPECT_EQ(events[4].values[0].second, 0.75f);
  fs::remove_all(dir.parent_path());
}

TEST(TensorBoard, NonFiniteValuesStayNonFinite) {
  StepMetrics m = sample_step(7);
  m.loss = std::numeric_limits<double>::quiet_NaN();
  m.grad_norm = std::numeric_limits<double>::infinity();
  const auto s = step_scalars(m);
  EXPECT_TRUE(std::isnan(s[0].second));
  EXPECT_TRUE(std::isinf(s[3].second));
}

TEST(TensorBoard, EachEventIsOneRecordFlushedAtOnce) {
  // A live TensorBoard reads the file while we write: after write() the step is on disk.
  const fs::path dir = test::temp_dir("tensorboard_live");
  TensorBoardWriter w(dir.string());
  w.write(sample_step(1));
  EXPECT_EQ(read_events(w.path()).size(), 2u);
  w.write(sample_step(2));
  EXPECT_EQ(read_events(w.path()).size(), 3u);
  fs::remove_all(dir);
}

TEST(TensorBoard, SecondWriterInTheSameDirectoryGetsItsOwnFile) {
  const fs::path dir = test::temp_dir("tensorboard_two");
  TensorBoardWriter a(dir.string()), b(dir.string());
  EXPECT_NE(a.path(), b.path());
  EXPECT_EQ(event_files(dir).size(), 2u);
  fs::remove_all(dir);
}

TEST(TensorBoard, ClearErrorWhenTheDirectoryCannotBeMade) {
  const fs::path dir = test::temp_dir("tensorboard_bad");
  test::write_raw(dir / "file", "x");
  test::expect_error([&] { TensorBoardWriter w((dir / "file").string()); }, {"TensorBoard log directory", "file"});
  test::expect_error([&] { TensorBoardWriter w((dir / "file" / "sub").string()); }, {"cannot create"});
  fs::remove_all(dir);
}

// The same steps through MetricsWriter and TensorBoardWriter. With DSV_TB_REF_DIR set the files stay
// there for tests/ref/check_tensorboard.py, which compares TensorBoard's reading with the JSONL.
TEST(TensorBoard, ReferenceRun) {
  const char* keep = std::getenv("DSV_TB_REF_DIR");
  const fs::path dir = keep ? fs::path(keep) : test::temp_dir("tensorboard_ref");
  fs::create_directories(dir);
  for (const fs::path& old : event_files(dir)) fs::remove(old);
  {
    MetricsWriter jsonl((dir / "metrics.jsonl").string());
    TensorBoardWriter board(dir.string());
    for (int64_t s = 1; s <= 6; ++s) {
      const StepMetrics m = sample_step(s);
      jsonl.write(m);
      board.write(m);
      if (s % 3 == 0) {
        jsonl.write_validation(s, 4.0 - 0.25 * static_cast<double>(s));
        board.write_validation(s, 4.0 - 0.25 * static_cast<double>(s));
      }
    }
  }
  const MetricsLog log = read_metrics_jsonl((dir / "metrics.jsonl").string());
  ASSERT_EQ(log.steps.size(), 6u);
  ASSERT_EQ(log.validation.size(), 2u);
  const std::vector<Event> events = read_events(event_files(dir).at(0).string());
  ASSERT_EQ(events.size(), 1u + 6u + 2u);
  EXPECT_EQ(events.back().values.at(0).second, static_cast<float>(log.validation[1].loss));
  if (!keep) fs::remove_all(dir);
}

}  // namespace
}  // namespace dsv::train
