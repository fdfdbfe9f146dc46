// Training checkpoints: crash-safe save (temporary directory, fsync, rename, then the `latest`
// pointer), retention, and a load that checks everything before it touches the ParamStore.
#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace dsv::train {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kFormat = "dsv-train-checkpoint";
constexpr int64_t kVersion = 1;
constexpr const char* kLatest = "latest";
constexpr const char* kStateFile = "trainer_state.json";
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kConfigFile = "config.json";
// Names of leftovers a killed save may leave in SAVE_DIR (removed by the next successful save).
constexpr const char* kTempPrefix = ".tmp-";
constexpr const char* kOldPrefix = ".old-";

// The test hook documented in checkpoint.h.
void kill_point(const char* stage, int64_t step) {
  const char* want = std::getenv("DSV_TEST_KILL_DURING_SAVE");
  const char* at_step = std::getenv("DSV_TEST_KILL_DURING_SAVE_STEP");
  if (at_step && std::to_string(step) != at_step) return;
  if (want && std::strcmp(want, stage) == 0) std::raise(SIGKILL);
}

std::string step_name(int64_t step) { return fmt::format("step_{:08d}", step); }

// "step_" + at least 8 digits -> the step; anything else -> nullopt.
std::optional<int64_t> parse_step_name(const std::string& name) {
  if (!name.starts_with("step_") || name.size() < 13 || name.size() > 23) return std::nullopt;
  int64_t step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

[[noreturn]] void fail_errno(const fs::path& path, const char* what, int err) {
  DSV_FAIL("{}: {} ({})", path.string(), what, std::strerror(err));
}

// Writes a new file (it must not exist) and fsyncs it; no rename: the caller's directory is the
// temporary name. Short writes are retried; ENOSPC/EFBIG surface here or at fsync/close.
void write_new_file(const fs::path& path, const void* data, size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail_errno(path, "cannot create", errno);
  const char* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, p + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      fail_errno(path, "write failed", err);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    fail_errno(path, "fsync failed", err);
  }
  if (::close(fd) != 0) fail_errno(path, "close failed", errno);
}

void write_new_file(const fs::path& path, const std::string& text) { write_new_file(path, text.data(), text.size()); }

// A directory's entries (creations, renames) are durable only once the directory itself is fsynced.
void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail_errno(dir, "cannot open directory to fsync it", errno);
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    fail_errno(dir, "fsync of the directory failed", err);
  }
  ::close(fd);
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  DSV_CHECK(in.good(), "{}: cannot read ({})", path.string(), std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  DSV_CHECK(!in.bad(), "{}: read failed", path.string());
  return ss.str();
}

// Moves `from` to `to`, replacing an existing `to` so that at every instant `to` names either the
// old or the new directory (a `latest` naming it never dangles): an atomic exchange where the file
// system offers one, else the old one renamed away first. The old contents end up under a
// kOldPrefix/kTempPrefix name and are deleted only after the new directory is in place.
void install_dir(const fs::path& from, const fs::path& to, const fs::path& parked) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return;
  if (errno != EEXIST && errno != EINVAL) fail_errno(to, "cannot rename the new checkpoint into place", errno);
  if (errno == EEXIST && ::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) == 0) {
    std::error_code ec;
    fs::remove_all(from, ec);  // now holds the replaced checkpoint
    return;
  }
  // No renameat2 flags on this file system: plain renames.
  if (fs::exists(to)) {
    if (std::rename(to.c_str(), parked.c_str()) != 0) fail_errno(to, "cannot move the old checkpoint aside", errno);
  }
  if (std::rename(from.c_str(), to.c_str()) != 0) {
    const int err = errno;
    std::rename(parked.c_str(), to.c_str());  // put the old one back
    fail_errno(to, "cannot rename the new checkpoint into place", err);
  }
  std::error_code ec;
  fs::remove_all(parked, ec);
}

// The tensors of one flat backend buffer (fp32 or bf16) under `prefix` + HF name, read back to the host.
struct HostTensors {
  std::deque<std::vector<uint8_t>> buffers;  // a deque: adding a buffer moves none of the others
  std::vector<TensorToWrite> tensors;
};
void add_buffer(HostTensors& out, const ParamStore& store, const void* buffer, DType dtype,
                const std::string& prefix) {
  const size_t element = dtype_size(dtype);
  std::vector<uint8_t>& bytes = out.buffers.emplace_back(static_cast<size_t>(store.total()) * element);
  ops::copy_to_host(store.model().context(), bytes.data(), buffer, bytes.size());
  for (const ParamSlot& p : store.slots())
    out.tensors.push_back({.name = prefix + p.hf_name, .dtype = dtype, .shape = p.shape,
                           .data = bytes.data() + static_cast<size_t>(p.offset) * element});
}

void write_state(const fs::path& dir, const TrainingState& state) {
  nlohmann::ordered_json files = nlohmann::ordered_json::array();
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  for (const std::string& n : names) files.push_back({{"name", n}, {"bytes", fs::file_size(dir / n)}});
  const nlohmann::ordered_json doc = {{"format", kFormat},
                    {"version", kVersion},
                    {"step", state.step},
                    {"adam_steps", state.adam_steps},
                    {"consecutive_bad", state.consecutive_bad},
                    {"extra", nlohmann::ordered_json::parse(state.extra.dump())},
                    {"files", files}};
  write_new_file(dir / kStateFile, doc.dump(2) + "\n");
}

// Step directories in SAVE_DIR, by step.
std::map<int64_t, std::string> list_steps(const fs::path& save_dir) {
  std::map<int64_t, std::string> steps;
  for (const auto& e : fs::directory_iterator(save_dir)) {
    const std::string name = e.path().filename().string();
    if (auto step = parse_step_name(name); step && e.is_directory()) steps[*step] = name;
  }
  return steps;
}

// Keeps the `keep_last` highest steps and `latest`; a deleted directory is renamed away first, so a
// kill in the middle never leaves a half-deleted step_ directory. Then removes what killed saves
// left behind. Failures here do not fail the save (the checkpoint is already complete).
void clean_up(const fs::path& save_dir, const std::string& latest, int64_t keep_last) {
  std::error_code ec;
  if (keep_last > 0) {
    const std::map<int64_t, std::string> steps = list_steps(save_dir);
    int64_t kept = 0;
    for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
      if (it->second == latest || kept < keep_last) {
        kept += 1;
        continue;
      }
      const fs::path parked = save_dir / fmt::format("{}{}-{}", kOldPrefix, it->second, ::getpid());
      fs::rename(save_dir / it->second, parked, ec);
      if (!ec) fs::remove_all(parked, ec);
    }
  }
  for (const auto& e : fs::directory_iterator(save_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with(kTempPrefix) || name.starts_with(kOldPrefix)) fs::remove_all(e.path(), ec);
  }
  fsync_dir(save_dir);
}

std::string shape_str(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

// The config.json fields that change the tensors or the math of a step, saved vs current.
std::vector<std::string> config_differences(const ModelConfig& a, const ModelConfig& b) {
  std::vector<std::string> out;
  auto cmp = [&](const char* key, const auto& x, const auto& y) {
    if (!(x == y)) out.push_back(fmt::format("{} {} in the checkpoint vs {} in this model", key, x, y));
  };
  cmp("model_type", a.model_type, b.model_type);
  cmp("vocab_size", a.vocab_size, b.vocab_size);
  cmp("hidden_size", a.hidden_size, b.hidden_size);
  cmp("intermediate_size", a.intermediate_size, b.intermediate_size);
  cmp("moe_intermediate_size", a.moe_intermediate_size, b.moe_intermediate_size);
  cmp("num_hidden_layers", a.num_hidden_layers, b.num_hidden_layers);
  cmp("num_attention_heads", a.num_attention_heads, b.num_attention_heads);
  cmp("q_lora_rank", a.q_lora_rank, b.q_lora_rank);
  cmp("kv_lora_rank", a.kv_lora_rank, b.kv_lora_rank);
  cmp("qk_nope_head_dim", a.qk_nope_head_dim, b.qk_nope_head_dim);
  cmp("qk_rope_head_dim", a.qk_rope_head_dim, b.qk_rope_head_dim);
  cmp("v_head_dim", a.v_head_dim, b.v_head_dim);
  cmp("n_routed_experts", a.n_routed_experts, b.n_routed_experts);
  cmp("n_shared_experts", a.n_shared_experts, b.n_shared_experts);
  cmp("num_experts_per_tok", a.num_experts_per_tok, b.num_experts_per_tok);
  cmp("n_group", a.n_group, b.n_group);
  cmp("topk_group", a.topk_group, b.topk_group);
  cmp("first_k_dense_replace", a.first_k_dense_replace, b.first_k_dense_replace);
  cmp("norm_topk_prob", a.norm_topk_prob, b.norm_topk_prob);
  cmp("routed_scaling_factor", a.routed_scaling_factor, b.routed_scaling_factor);
  cmp("topk_method", static_cast<int>(a.router), static_cast<int>(b.router));
  cmp("hidden_act", a.hidden_act, b.hidden_act);
  cmp("rms_norm_eps", a.rms_norm_eps, b.rms_norm_eps);
  cmp("attention_bias", a.attention_bias, b.attention_bias);
  cmp("mlp_bias", a.mlp_bias, b.mlp_bias);
  cmp("tie_word_embeddings", a.tie_word_embeddings, b.tie_word_embeddings);
  cmp("rope_interleave", a.rope_layout == RopeLayout::Interleaved, b.rope_layout == RopeLayout::Interleaved);
  cmp("rope type", a.rope.type, b.rope.type);
  cmp("rope_theta", a.rope.theta, b.rope.theta);
  cmp("rope factor", a.rope.factor, b.rope.factor);
  cmp("rope original_max_position_embeddings", a.rope.original_max_position_embeddings,
      b.rope.original_max_position_embeddings);
  cmp("rope beta_fast", a.rope.beta_fast, b.rope.beta_fast);
  cmp("rope beta_slow", a.rope.beta_slow, b.rope.beta_slow);
  cmp("rope mscale", a.rope.mscale, b.rope.mscale);
  cmp("rope mscale_all_dim", a.rope.mscale_all_dim, b.rope.mscale_all_dim);
  cmp("rope attention_factor", a.rope.attention_factor, b.rope.attention_factor);
  return out;
}

// The first way `file` (a tensor `prefix` + HF name per slot and prefix) fails to match the store's
// slots, or "".
// `moments`: exp_avg / exp_avg_sq may be F32 or BF16 (optimizer.bf16_moments), whatever the store
// keeps; load_checkpoint converts. Weights must be F32.
std::string first_tensor_difference(const SafetensorsFile& file, const ParamStore& store,
                                    const std::vector<std::string>& prefixes, bool moments = false) {
  const auto& tensors = file.tensors();
  std::set<std::string> expected;
  for (const std::string& prefix : prefixes) {
    for (const ParamSlot& p : store.slots()) {
      const std::string name = prefix + p.hf_name;
      expected.insert(name);
      const auto it = tensors.find(name);
      if (it == tensors.end())
        return fmt::format("{} (shape {}) is missing from the checkpoint", name, shape_str(p.shape));
      if (it->second.shape != p.shape)
        return fmt::format("{}: shape {} in the checkpoint vs {} in this model", name, shape_str(it->second.shape),
                           shape_str(p.shape));
      if (it->second.dtype != DType::F32 && !(moments && it->second.dtype == DType::BF16))
        return fmt::format("{}: dtype {} in the checkpoint, expected {}", name, dtype_name(it->second.dtype),
                           moments ? "F32 or BF16" : "F32");
    }
  }
  for (const auto& [name, entry] : tensors)
    if (!expected.count(name))
      return fmt::format("{} (shape {}) is in the checkpoint but not in this model", name, shape_str(entry.shape));
  return {};
}

int64_t state_int(const json& doc, const char* key, const fs::path& path) {
  DSV_CHECK(doc.contains(key) && doc[key].is_number_integer() && doc[key].get<int64_t>() >= 0,
            "{}: expected \"{}\" as an integer >= 0, found {}", path.string(), key,
            doc.contains(key) ? doc[key].dump() : std::string("nothing"));
  return doc[key].get<int64_t>();
}

}  // namespace

std::string save_checkpoint(const std::string& save_dir, const ParamStore& store, const TrainingState& state,
                            const std::string& config_json_text, const std::string& tokenizer_dir,
                            int64_t keep_last) {
  DSV_CHECK(state.step >= 0 && state.adam_steps >= 0 && state.consecutive_bad >= 0,
            "save_checkpoint: expected non-negative counters, found step {}, adam_steps {}, consecutive_bad {}",
            state.step, state.adam_steps, state.consecutive_bad);
  DSV_CHECK(keep_last >= 0, "checkpoint.keep_last: expected >= 0 (0 = keep all), found {}", keep_last);
  if (!tokenizer_dir.empty())
    DSV_CHECK(fs::exists(fs::path(tokenizer_dir) / "tokenizer.json"),
              "{}: expected a tokenizer directory with tokenizer.json", tokenizer_dir);
  const fs::path dir(save_dir);
  std::error_code ec;
  const bool created = fs::create_directories(dir, ec);
  DSV_CHECK(!ec && fs::is_directory(dir), "checkpoint.save {}: cannot create the directory ({})", save_dir,
            ec ? ec.message() : "a file of that name exists");
  if (created) {  // its entry in the parent must be durable too
    fs::path abs = fs::absolute(dir).lexically_normal();
    if (!abs.has_filename()) abs = abs.parent_path();  // "a/b/" -> "a/b"
    fsync_dir(abs.parent_path());
  }
  const std::string name = step_name(state.step);
  const fs::path final_dir = dir / name;
  const fs::path tmp = dir / fmt::format("{}{}-{}", kTempPrefix, name, ::getpid());
  const fs::path parked = dir / fmt::format("{}{}-{}", kOldPrefix, name, ::getpid());
  const fs::path latest = dir / kLatest;
  const std::string previous = fs::exists(latest) ? "`latest` and the checkpoints it had are untouched"
                                                  : "no checkpoint was written";
  try {
    fs::remove_all(tmp);  // left by an earlier process with our pid
    fs::create_directory(tmp);
    {
      HostTensors weights;
      add_buffer(weights, store, store.params(), DType::F32, "");
      // Same bytes as ParamStore::save_hf, so the step directory reads as an HF checkpoint.
      write_safetensors((tmp / kModelFile).string(), weights.tensors, {{"format", "pt"}});
    }
    kill_point("after_model", state.step);
    {
      HostTensors moments;
      if (store.bf16_moments()) {
        add_buffer(moments, store, store.adam_m_bf16(), DType::BF16, "exp_avg.");
        add_buffer(moments, store, store.adam_v_bf16(), DType::BF16, "exp_avg_sq.");
      } else {
        add_buffer(moments, store, store.adam_m(), DType::F32, "exp_avg.");
        add_buffer(moments, store, store.adam_v(), DType::F32, "exp_avg_sq.");
      }
      write_safetensors((tmp / kOptimizerFile).string(), moments.tensors, {{"format", "dsv-adamw"}});
    }
    write_new_file(tmp / kConfigFile, config_json_text);
    if (!tokenizer_dir.empty())
      for (const char* f : kTokenizerFiles)
        if (fs::exists(fs::path(tokenizer_dir) / f)) write_new_file(tmp / f, read_text(fs::path(tokenizer_dir) / f));
    write_state(tmp, state);
    fsync_dir(tmp);
    kill_point("before_rename", state.step);
    install_dir(tmp, final_dir, parked);
    fsync_dir(dir);
  } catch (const std::exception& e) {
    fs::remove_all(tmp, ec);
    DSV_FAIL("saving checkpoint {} failed: {}; {}", final_dir.string(), e.what(), previous);
  }
  kill_point("before_latest", state.step);
  // `latest`: its own temporary name, fsync, rename, fsync the directory.
  const fs::path latest_tmp = dir / fmt::format("{}latest-{}", kTempPrefix, ::getpid());
  try {
    fs::remove(latest_tmp);
    write_new_file(latest_tmp, name + "\n");
    if (std::rename(latest_tmp.c_str(), latest.c_str()) != 0) fail_errno(latest, "cannot rename into place", errno);
    fsync_dir(dir);
  } catch (const std::exception& e) {
    fs::remove(latest_tmp, ec);
    DSV_FAIL("saving checkpoint {}: the step directory is complete but {} could not be updated: {}",
             final_dir.string(), latest.string(), e.what());
  }
  try {
    clean_up(dir, name, keep_last);
  } catch (const std::exception&) {
    // Retention is housekeeping: the new checkpoint is complete and `latest` names it.
  }
  return final_dir.string();
}

std::string find_checkpoint(const std::string& dir) {
  const fs::path d(dir);
  DSV_CHECK(fs::is_directory(d), "checkpoint.load {}: no such directory", dir);
  const fs::path latest = d / kLatest;
  if (fs::exists(latest)) {
    std::ifstream in(latest);
    DSV_CHECK(in.good(), "{}: cannot read ({})", latest.string(), std::strerror(errno));
    std::string name;
    std::getline(in, name);
    while (!name.empty() && (name.back() == '\r' || name.back() == ' ')) name.pop_back();
    DSV_CHECK(parse_step_name(name).has_value(),
              "{}: expected the name of a step directory (step_NNNNNNNN), found \"{}\"", latest.string(), name);
    const fs::path step_dir = d / name;
    DSV_CHECK(fs::is_directory(step_dir), "{} names {}, which does not exist", latest.string(), step_dir.string());
    return step_dir.string();
  }
  if (fs::exists(d / kStateFile)) return d.string();
  DSV_FAIL("checkpoint.load {}: not a checkpoint: expected a save directory (with a `latest` file) or a step "
           "directory (with {})",
           dir, kStateFile);
}

namespace {
// One Adam moment tensor into the store's moment buffer of whichever dtype it keeps: a checkpoint
// written with the other optimizer.bf16_moments setting converts (bf16 -> fp32 exactly, fp32 -> bf16
// rounded to nearest).
void load_moment(const ops::Context& ctx, const ParamStore& store, const ParamSlot& p, const TensorEntry& t,
                 float* f32_buffer, uint16_t* bf16_buffer) {
  const size_t n = static_cast<size_t>(p.numel);
  if (store.bf16_moments()) {
    if (t.dtype == DType::BF16) {
      ops::copy_to_backend(ctx, bf16_buffer + p.offset, t.data, n * sizeof(uint16_t));
      return;
    }
    std::vector<uint16_t> rounded(n);
    for (size_t i = 0; i < n; ++i) {
      float x;  // the mapped file promises no alignment
      std::memcpy(&x, t.data + i * sizeof(float), sizeof(float));
      rounded[i] = f32_to_bf16(x);
    }
    ops::copy_to_backend(ctx, bf16_buffer + p.offset, rounded.data(), n * sizeof(uint16_t));
    return;
  }
  if (t.dtype == DType::F32) {
    ops::copy_to_backend(ctx, f32_buffer + p.offset, t.data, n * sizeof(float));
    return;
  }
  std::vector<float> widened(n);
  convert_to_f32(DType::BF16, t.data, widened.data(), n);
  ops::copy_to_backend(ctx, f32_buffer + p.offset, widened.data(), n * sizeof(float));
}
}  // namespace

TrainingState load_checkpoint(const std::string& step_dir, const ParamStore& store) {
  const fs::path d(step_dir);
  const fs::path state_path = d / kStateFile;
  DSV_CHECK(fs::exists(state_path), "{}: not a training checkpoint (no {})", step_dir, kStateFile);
  json doc;
  try {
    doc = json::parse(read_text(state_path));
  } catch (const json::exception& e) {
    DSV_FAIL("{}: not valid JSON ({}); the file is damaged or truncated", state_path.string(), e.what());
  }
  DSV_CHECK(doc.is_object() && doc.value("format", "") == kFormat, "{}: expected \"format\": \"{}\", found {}",
            state_path.string(), kFormat, doc.is_object() && doc.contains("format") ? doc["format"].dump() : "none");
  DSV_CHECK(doc.contains("version") && doc["version"] == kVersion,
            "{}: unknown checkpoint format version {} (this build reads version {})", state_path.string(),
            doc.contains("version") ? doc["version"].dump() : "none", kVersion);

  // Every file at the size recorded when it was written: a truncated copy is caught before parsing.
  DSV_CHECK(doc.contains("files") && doc["files"].is_array(), "{}: expected a \"files\" list", state_path.string());
  std::set<std::string> listed;
  for (const json& f : doc["files"]) {
    DSV_CHECK(f.is_object() && f.contains("name") && f["name"].is_string() && f.contains("bytes") &&
                  f["bytes"].is_number_unsigned(),
              "{}: expected {{\"name\", \"bytes\"}} entries in \"files\", found {}", state_path.string(), f.dump());
    const std::string name = f["name"].get<std::string>();
    DSV_CHECK(name.find('/') == std::string::npos && name != ".." && name != ".", "{}: bad file name \"{}\"",
              state_path.string(), name);
    const fs::path p = d / name;
    std::error_code ec;
    const uintmax_t size = fs::file_size(p, ec);
    DSV_CHECK(!ec, "{}: missing or unreadable ({}); {} lists it", p.string(), ec.message(), kStateFile);
    DSV_CHECK(size == f["bytes"].get<uintmax_t>(), "{}: {} bytes, but {} records {}: the file is truncated or damaged",
              p.string(), size, kStateFile, f["bytes"].get<uintmax_t>());
    listed.insert(name);
  }
  for (const char* required : {kModelFile, kOptimizerFile, kConfigFile})
    DSV_CHECK(listed.count(required), "{}: {} does not list {}", state_path.string(), kStateFile, required);

  TrainingState state;
  state.step = state_int(doc, "step", state_path);
  state.adam_steps = state_int(doc, "adam_steps", state_path);
  state.consecutive_bad = state_int(doc, "consecutive_bad", state_path);
  DSV_CHECK(state.adam_steps <= state.step, "{}: adam_steps {} exceeds step {}", state_path.string(),
            state.adam_steps, state.step);
  state.extra = doc.value("extra", json::object());

  // Same model: config.json fields, then tensor names, shapes and dtypes.
  const ModelConfig saved = parse_model_config(read_text(d / kConfigFile), (d / kConfigFile).string());
  const std::vector<std::string> config_diff = config_differences(saved, store.model().config);
  const SafetensorsFile weights((d / kModelFile).string());
  const std::string tensor_diff = first_tensor_difference(weights, store, {""});
  if (!config_diff.empty() || !tensor_diff.empty())
    DSV_FAIL("{}: checkpoint of another model: {}{}{}", step_dir,
             config_diff.empty() ? std::string("config.json matches")
                                 : "config.json differs: " + fmt::format("{}", fmt::join(config_diff, "; ")),
             tensor_diff.empty() ? "" : "; first differing tensor: ", tensor_diff);
  const SafetensorsFile moments((d / kOptimizerFile).string());
  const std::string moments_diff = first_tensor_difference(moments, store, {"exp_avg.", "exp_avg_sq."}, true);
  DSV_CHECK(moments_diff.empty(), "{}: optimizer state does not match the model: {}", moments.path(), moments_diff);

  // Everything matched: now (and only now) overwrite the store.
  const ops::Context ctx = store.model().context();
  for (const ParamSlot& p : store.slots()) {
    if (!p.numel) continue;
    const size_t bytes = static_cast<size_t>(p.numel) * sizeof(float);
    ops::copy_to_backend(ctx, store.params() + p.offset, weights.tensors().at(p.hf_name).data, bytes);
    load_moment(ctx, store, p, moments.tensors().at("exp_avg." + p.hf_name), store.adam_m(), store.adam_m_bf16());
    load_moment(ctx, store, p, moments.tensors().at("exp_avg_sq." + p.hf_name), store.adam_v(),
                store.adam_v_bf16());
  }
  return state;
}

}  // namespace dsv::train
