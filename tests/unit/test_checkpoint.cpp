// Training checkpoints (src/train/checkpoint.h): bit-exact round trip, `latest` and retention, the
// load errors, and the crash cases run for real in fork()ed children: a full disk (RLIMIT_FSIZE)
// and SIGKILL at each stage of a save.
#include "train/checkpoint.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/config.h"
#include "test_helpers.h"

namespace dsv::train {
namespace {
namespace fs = std::filesystem;

std::string tiny_dir() { return test::source_dir() + "/models/tiny"; }
std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
std::string tiny_config_text() { return read_file(fs::path(tiny_dir()) / "config.json"); }

// The tiny model (1 MTP module) with random weights, distinct Adam moments and a nonzero router
// bias, all derived from `seed`, so two seeds differ in every buffer.
ParamStore make_store(uint64_t seed, const std::string& config_text = tiny_config_text(), int64_t mtp = 1) {
  ParamStore s =
      ParamStore::random(parse_model_config(config_text, "test config"), mtp, ops::Backend::Cpu, seed, 0.02f);
  for (const ParamSlot& p : s.slots())  // the padding between slots stays 0, as a load leaves it
    for (int64_t i = p.offset; i < p.offset + p.numel; ++i) {
      s.adam_m()[i] = static_cast<float>(seed) + 1e-3f * static_cast<float>(i);
      s.adam_v()[i] = static_cast<float>(seed) * 0.5f + 1e-4f * static_cast<float>(i % 977);
      if (!p.trainable) s.params()[i] = 0.25f * static_cast<float>(seed + (i - p.offset) + 1);
    }
  return s;
}

struct Snapshot {
  std::vector<float> params, m, v;
  bool operator==(const Snapshot&) const = default;  // bit-exact for the finite values used here
};
Snapshot snapshot(const ParamStore& s) {
  const auto n = static_cast<size_t>(s.total());
  return {{s.params(), s.params() + n}, {s.adam_m(), s.adam_m() + n}, {s.adam_v(), s.adam_v() + n}};
}

TrainingState state_at(int64_t step) {
  TrainingState st;
  st.step = step;
  st.adam_steps = step - 1;
  st.consecutive_bad = 1;
  st.extra = {{"recipe", "[train]\nsteps = 9\n"}, {"seed", 42}};
  return st;
}

std::string latest_of(const fs::path& dir) { return read_file(dir / "latest"); }

std::vector<std::string> leftovers(const fs::path& dir) {  // names a killed or failed save may leave
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.starts_with(".tmp-") || n.starts_with(".old-")) out.push_back(n);
  }
  return out;
}

TEST(TrainCheckpoint, RoundTripIsBitExact) {
  const auto dir = test::temp_dir("ckpt_roundtrip");
  const ParamStore a = make_store(1);
  const std::string step_dir =
      save_checkpoint(dir.string(), a, state_at(7), tiny_config_text(), tiny_dir(), /*keep_last=*/2);
  EXPECT_EQ(step_dir, (dir / "step_00000007").string());
  EXPECT_EQ(latest_of(dir), "step_00000007\n");
  // The tokenizer files present in the source directory travel with the checkpoint; config.json verbatim.
  EXPECT_EQ(read_file(fs::path(step_dir) / "tokenizer.json"), read_file(fs::path(tiny_dir()) / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(fs::path(step_dir) / "tokenizer_config.json"));
  EXPECT_FALSE(fs::exists(fs::path(step_dir) / "special_tokens_map.json"));
  EXPECT_EQ(read_file(fs::path(step_dir) / "config.json"), tiny_config_text());

  const ParamStore b = make_store(2);
  ASSERT_NE(snapshot(a), snapshot(b));
  const TrainingState st = load_checkpoint(step_dir, b);
  EXPECT_EQ(snapshot(a), snapshot(b));
  EXPECT_EQ(st.step, 7);
  EXPECT_EQ(st.adam_steps, 6);
  EXPECT_EQ(st.consecutive_bad, 1);
  EXPECT_EQ(st.extra, state_at(7).extra);

  // The router bias buffer is among what came back (it is no trainable parameter).
  bool saw_bias = false;
  for (const ParamSlot& p : b.slots())
    if (!p.trainable) {
      saw_bias = true;
      EXPECT_EQ(b.params()[p.offset + 3], 0.25f * 5.0f) << p.hf_name;
    }
  EXPECT_TRUE(saw_bias);

  // A step directory is an HF checkpoint directory: the ordinary loader reads the same weights.
  const ParamStore hf = ParamStore::from_checkpoint(step_dir, ops::Backend::Cpu, -1);
  ASSERT_EQ(hf.total(), a.total());
  EXPECT_TRUE(std::equal(a.params(), a.params() + a.total(), hf.params()));
  fs::remove_all(dir);
}

// bf16 moments (optimizer.bf16_moments) are stored as BF16 and come back bit for bit; a checkpoint
// written with the other setting converts: bf16 -> fp32 exactly, fp32 -> bf16 rounded to nearest.
TEST(TrainCheckpoint, Bf16MomentsRoundTripAndConvert) {
  const auto dir = test::temp_dir("ckpt_bf16_moments");
  const ModelConfig config = parse_model_config(tiny_config_text(), "test config");
  const ParamStore a = ParamStore::random(config, 1, ops::Backend::Cpu, 5, 0.02f, /*bf16_moments=*/true);
  ASSERT_TRUE(a.bf16_moments());
  EXPECT_EQ(a.adam_m(), nullptr);
  for (const ParamSlot& p : a.slots())
    for (int64_t i = p.offset; i < p.offset + p.numel; ++i) {
      a.adam_m_bf16()[i] = f32_to_bf16(-0.01f * static_cast<float>(i % 311));
      a.adam_v_bf16()[i] = f32_to_bf16(1e-5f * static_cast<float>(i % 97));
    }
  const std::string step_dir = save_checkpoint(dir.string(), a, state_at(3), tiny_config_text(), "", 1);
  const auto n = static_cast<size_t>(a.total());

  const ParamStore b = ParamStore::random(config, 1, ops::Backend::Cpu, 6, 0.02f, true);
  load_checkpoint(step_dir, b);
  EXPECT_TRUE(std::equal(a.adam_m_bf16(), a.adam_m_bf16() + n, b.adam_m_bf16()));
  EXPECT_TRUE(std::equal(a.adam_v_bf16(), a.adam_v_bf16() + n, b.adam_v_bf16()));
  EXPECT_TRUE(std::equal(a.params(), a.params() + n, b.params()));

  const ParamStore wide = make_store(7);  // fp32 moments
  load_checkpoint(step_dir, wide);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(wide.adam_m()[i], bf16_to_f32(a.adam_m_bf16()[i])) << i;
    ASSERT_EQ(wide.adam_v()[i], bf16_to_f32(a.adam_v_bf16()[i])) << i;
  }

  const ParamStore f32 = make_store(8);
  const std::string f32_dir = save_checkpoint((dir / "f32").string(), f32, state_at(4), tiny_config_text(), "", 1);
  load_checkpoint(f32_dir, b);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(b.adam_m_bf16()[i], f32_to_bf16(f32.adam_m()[i])) << i;
    ASSERT_EQ(b.adam_v_bf16()[i], f32_to_bf16(f32.adam_v()[i])) << i;
  }
  fs::remove_all(dir);
}

TEST(TrainCheckpoint, LatestPointerAndRetention) {
  const auto dir = test::temp_dir("ckpt_retention");
  ParamStore s = make_store(3);
  std::vector<Snapshot> saved;
  for (int64_t step : {10, 20, 30, 40}) {
    s.params()[0] = static_cast<float>(step);  // each checkpoint distinct
    saved.push_back(snapshot(s));
    save_checkpoint(dir.string(), s, state_at(step), tiny_config_text(), "", /*keep_last=*/2);
    EXPECT_EQ(latest_of(dir), fmt::format("step_{:08d}\n", step));
  }
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step_00000030", "step_00000040"}));

  EXPECT_EQ(find_checkpoint(dir.string()), (dir / "step_00000040").string());
  EXPECT_EQ(find_checkpoint((dir / "step_00000030").string()), (dir / "step_00000030").string());
  const ParamStore b = make_store(4);
  EXPECT_EQ(load_checkpoint(find_checkpoint(dir.string()), b).step, 40);
  EXPECT_EQ(snapshot(b), saved[3]);
  EXPECT_EQ(load_checkpoint((dir / "step_00000030").string(), b).step, 30);
  EXPECT_EQ(snapshot(b), saved[2]);

  // Resuming from an older step and saving: `latest` (step 35) is kept even though 40 is newer.
  save_checkpoint(dir.string(), s, state_at(35), tiny_config_text(), "", /*keep_last=*/1);
  EXPECT_TRUE(fs::exists(dir / "step_00000040"));
  EXPECT_TRUE(fs::exists(dir / "step_00000035"));
  EXPECT_FALSE(fs::exists(dir / "step_00000030"));
  EXPECT_EQ(latest_of(dir), "step_00000035\n");

  // keep_last 0 keeps everything; saving the same step again replaces it.
  s.params()[0] = -1.0f;
  save_checkpoint(dir.string(), s, state_at(35), tiny_config_text(), "", /*keep_last=*/0);
  save_checkpoint(dir.string(), s, state_at(36), tiny_config_text(), "", /*keep_last=*/0);
  EXPECT_TRUE(fs::exists(dir / "step_00000040"));
  load_checkpoint((dir / "step_00000035").string(), b);
  EXPECT_EQ(b.params()[0], -1.0f);
  EXPECT_TRUE(leftovers(dir).empty());
  fs::remove_all(dir);
}

TEST(TrainCheckpoint, FindCheckpointErrors) {
  const auto dir = test::temp_dir("ckpt_find");
  test::expect_error([&] { find_checkpoint((dir / "nope").string()); }, {"nope", "no such directory"});
  test::expect_error([&] { find_checkpoint(dir.string()); }, {dir.string(), "`latest`", "trainer_state.json"});
  test::write_raw(dir / "latest", "../../etc\n");
  test::expect_error([&] { find_checkpoint(dir.string()); }, {"latest", "step_NNNNNNNN", "../../etc"});
  test::write_raw(dir / "latest", "step_00000005\n");
  test::expect_error([&] { find_checkpoint(dir.string()); }, {"latest", "step_00000005", "does not exist"});
  if (::geteuid() != 0) {  // root reads regardless of permissions
    fs::permissions(dir / "latest", fs::perms::none);
    test::expect_error([&] { find_checkpoint(dir.string()); }, {"latest", "cannot read"});
  }
  fs::remove_all(dir);
}

TEST(TrainCheckpoint, DamagedCheckpointsAreRejectedAndLeaveTheStoreUntouched) {
  const auto dir = test::temp_dir("ckpt_damaged");
  const ParamStore a = make_store(5);
  const ParamStore b = make_store(6);
  const Snapshot before = snapshot(b);
  auto fresh = [&](const std::string& name) {
    return fs::path(save_checkpoint((dir / name).string(), a, state_at(3), tiny_config_text(), "", 0));
  };

  for (const char* file : {"model.safetensors", "optimizer.safetensors", "config.json"}) {
    const fs::path step = fresh(std::string("trunc_") + file);
    fs::resize_file(step / file, fs::file_size(step / file) - 4);
    test::expect_error([&] { load_checkpoint(step.string(), b); }, {file, "truncated"});
    fs::remove(step / file);
    test::expect_error([&] { load_checkpoint(step.string(), b); }, {file, "missing"});
  }
  {
    const fs::path step = fresh("version");
    auto doc = nlohmann::json::parse(read_file(step / "trainer_state.json"));
    doc["version"] = 99;
    test::write_raw(step / "trainer_state.json", doc.dump());
    test::expect_error([&] { load_checkpoint(step.string(), b); }, {"unknown checkpoint format version 99", "1"});
    const std::string text = read_file(step / "trainer_state.json");
    test::write_raw(step / "trainer_state.json", text.substr(0, text.size() / 2));
    test::expect_error([&] { load_checkpoint(step.string(), b); }, {"trainer_state.json", "not valid JSON"});
    fs::remove(step / "trainer_state.json");
    test::expect_error([&] { load_checkpoint(step.string(), b); }, {"not a training checkpoint"});
  }
  EXPECT_EQ(snapshot(b), before);
  fs::remove_all(dir);
}

TEST(TrainCheckpoint, CheckpointOfAnotherModelIsRejected) {
  const auto dir = test::temp_dir("ckpt_other");
  auto cfg = nlohmann::json::parse(tiny_config_text());
  cfg["hidden_size"] = 32;
  const std::string narrow_text = cfg.dump(2);
  const ParamStore narrow = make_store(7, narrow_text);
  const ParamStore tiny = make_store(8);
  const Snapshot before = snapshot(tiny);
  const std::string narrow_step = save_checkpoint((dir / "narrow").string(), narrow, state_at(1), narrow_text, "", 0);
  test::expect_error([&] { load_checkpoint(narrow_step, tiny); },
                     {"another model", "hidden_size 32 in the checkpoint vs 64 in this model",
                      "model.embed_tokens.weight: shape [523, 32] in the checkpoint vs [523, 64] in this model"});

  // Same config, different MTP depth: the tensors tell.
  const ParamStore no_mtp = make_store(9, tiny_config_text(), /*mtp=*/0);
  const std::string no_mtp_step =
      save_checkpoint((dir / "no_mtp").string(), no_mtp, state_at(1), tiny_config_text(), "", 0);
  test::expect_error([&] { load_checkpoint(no_mtp_step, tiny); },
                     {"config.json matches", "model.layers.2.", "missing from the checkpoint"});
  const std::string tiny_step = save_checkpoint((dir / "tiny").string(), tiny, state_at(1), tiny_config_text(), "", 0);
  test::expect_error([&] { load_checkpoint(tiny_step, no_mtp); },
                     {"model.layers.2.", "is in the checkpoint but not in this model"});
  EXPECT_EQ(snapshot(tiny), before);
  fs::remove_all(dir);
}

// Runs `child` in a fork()ed process (it must end with _exit or a signal); returns the wait status.
template <typename Fn>
int in_child(Fn&& child) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    child();
    ::_exit(99);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

TEST(TrainCheckpoint, FullDiskFailsCleanlyAndKeepsThePreviousCheckpoint) {
  const auto dir = test::temp_dir("ckpt_full");
  const ParamStore a = make_store(10);
  const ParamStore b = make_store(11);
  save_checkpoint(dir.string(), a, state_at(10), tiny_config_text(), "", 2);
  const auto model_bytes = fs::file_size(dir / "step_00000010" / "model.safetensors");
  // A limit below the weights file, then one between it and the (twice as large) optimizer file;
  // each against a new step and against the step `latest` names (the replace path).
  for (const rlim_t limit : {rlim_t{4096}, static_cast<rlim_t>(model_bytes + 4096)})
    for (const int64_t step : {20, 10}) {
      int fds[2];
      ASSERT_EQ(::pipe(fds), 0);
      const int status = in_child([&] {
        ::close(fds[0]);
        std::signal(SIGXFSZ, SIG_IGN);  // a write past the limit fails with EFBIG instead of killing
        const rlimit rl{limit, limit};
        if (::setrlimit(RLIMIT_FSIZE, &rl) != 0) ::_exit(3);
        try {
          save_checkpoint(dir.string(), b, state_at(step), tiny_config_text(), "", 2);
        } catch (const Error& e) {
          const std::string msg = e.what();
          [[maybe_unused]] const auto n = ::write(fds[1], msg.data(), msg.size());
          ::_exit(0);
        }
        ::_exit(1);
      });
      ::close(fds[1]);
      std::string msg;
      char buf[512];
      for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) msg.append(buf, static_cast<size_t>(n));
      ::close(fds[0]);
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status << " limit " << limit;
      EXPECT_NE(msg.find(std::strerror(EFBIG)), std::string::npos) << msg;
      EXPECT_NE(msg.find(limit == 4096 ? "model.safetensors" : "optimizer.safetensors"), std::string::npos) << msg;
      EXPECT_NE(msg.find("untouched"), std::string::npos) << msg;
      EXPECT_EQ(latest_of(dir), "step_00000010\n");
      EXPECT_TRUE(leftovers(dir).empty());
      EXPECT_FALSE(fs::exists(dir / "step_00000020"));
      const ParamStore c = make_store(12);
      EXPECT_EQ(load_checkpoint(find_checkpoint(dir.string()), c).step, 10);
      EXPECT_EQ(snapshot(c), snapshot(a));
    }
  fs::remove_all(dir);
}

TEST(TrainCheckpoint, KillDuringSaveKeepsThePreviousCheckpoint) {
  const ParamStore a = make_store(13);
  const ParamStore b = make_store(14);
  for (const char* stage : {"after_model", "before_rename", "before_latest"}) {
    SCOPED_TRACE(stage);
    const auto dir = test::temp_dir("ckpt_kill");
    save_checkpoint(dir.string(), a, state_at(10), tiny_config_text(), "", 2);
    const int status = in_child([&] {
      ::setenv("DSV_TEST_KILL_DURING_SAVE", stage, 1);
      try {
        save_checkpoint(dir.string(), b, state_at(20), tiny_config_text(), "", 2);
      } catch (...) {
      }
      ::_exit(0);
    });
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
    // The kill left its traces: a temporary directory, or a complete step_20 that `latest` does not name.
    if (std::string(stage) == "before_latest") EXPECT_TRUE(fs::exists(dir / "step_00000020" / "trainer_state.json"));
    else EXPECT_EQ(leftovers(dir).size(), 1u);
    EXPECT_EQ(latest_of(dir), "step_00000010\n");
    const ParamStore c = make_store(15);
    EXPECT_EQ(load_checkpoint(find_checkpoint(dir.string()), c).step, 10);
    EXPECT_EQ(snapshot(c), snapshot(a));

    // The resumed run saves the same step again: it succeeds and sweeps up the stale temp dir.
    save_checkpoint(dir.string(), b, state_at(20), tiny_config_text(), "", 2);
    EXPECT_EQ(latest_of(dir), "step_00000020\n");
    EXPECT_TRUE(leftovers(dir).empty());
    EXPECT_EQ(load_checkpoint(find_checkpoint(dir.string()), c).step, 20);
    EXPECT_EQ(snapshot(c), snapshot(b));
    fs::remove_all(dir);
  }
}

}  // namespace
}  // namespace dsv::train
