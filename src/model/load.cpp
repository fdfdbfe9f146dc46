// Checkpoint -> Weights through the name table: shape checks, dtype conversion, FP8 block dequant.
#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <map>
#include <set>

#include "core/error.h"
#include "io/hf_names.h"
#include "model/model.h"

namespace dsv {
namespace {

// The release stores FP8 weights with one fp32 `weight_scale_inv` per (rows x cols) block:
// w = fp8 * scale_inv[i / rows, j / cols].
void dequantize_fp8_blocks(const TensorEntry& w, const TensorEntry& s, int64_t block_rows, int64_t block_cols,
                           float* out) {
  const int64_t rows = w.shape[0], cols = w.shape[1];
  const int64_t srows = (rows + block_rows - 1) / block_rows, scols = (cols + block_cols - 1) / block_cols;
  DSV_CHECK(s.shape.size() == 2 && s.shape[0] == srows && s.shape[1] == scols,
            "{}: tensor \"{}\": expected shape [{}, {}] for {}x{} blocks of a [{}, {}] weight, found {}", *s.file,
            s.name, srows, scols, block_rows, block_cols, rows, cols, shape_string(s.shape));
  std::vector<float> scales(static_cast<size_t>(srows * scols));
  convert_to_f32(s.dtype, s.data, scales.data(), scales.size());
  const auto* q = w.data;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      out[i * cols + j] = e4m3_to_f32(q[i * cols + j]) * scales[(i / block_rows) * scols + j / block_cols];
}


}  // namespace

std::unique_ptr<Model> load_model(const std::string& dir) {
  auto m = std::make_unique<Model>();
  m->config = load_model_config(dir);
  const ModelConfig& c = m->config;
  m->checkpoint = std::make_unique<Checkpoint>(dir);
  const Checkpoint& ckpt = *m->checkpoint;

  const int64_t mtp_present = stored_mtp_modules(c, ckpt);
  // transformers writes num_nextn_predict_layers = 1 by default even without MTP weights: only
  // modules that are actually stored are loaded; more stored than declared is a mismatch.
  DSV_CHECK(mtp_present <= c.num_nextn_predict_layers,
            "{}: checkpoint holds {} MTP module(s) but config.json declares num_nextn_predict_layers = {}", dir,
            mtp_present, c.num_nextn_predict_layers);
  const std::vector<WeightSlot> slots = hf_weight_table(c, mtp_present, m->weights);

  // Pass 1: check names, shapes, dtypes; size the arena.
  std::vector<std::string> problems;
  std::set<std::string> consumed;
  std::map<std::string, int64_t> dtype_counts;
  int64_t arena_floats = 0;
  std::vector<const TensorEntry*> entries(slots.size(), nullptr);
  for (size_t i = 0; i < slots.size(); ++i) {
    const WeightSlot& s = slots[i];
    const TensorEntry* e = ckpt.find(s.hf_name);
    int64_t expected_numel = 1;
    for (int64_t d : s.shape) expected_numel *= d;
    if (!e && expected_numel == 0) continue;  // an empty tensor (no shared experts) may be omitted
    if (!e) {
      problems.push_back(fmt::format("missing tensor \"{}\" (expected shape {})", s.hf_name, shape_string(s.shape)));
      continue;
    }
    consumed.insert(s.hf_name);
    if (e->shape != s.shape) {
      problems.push_back(fmt::format("tensor \"{}\" has shape {}, expected {} (from config.json)", s.hf_name,
                                     shape_string(e->shape), shape_string(s.shape)));
      continue;
    }
    if (e->dtype == DType::I32 || e->dtype == DType::I64) {
      problems.push_back(fmt::format("tensor \"{}\" has integer dtype {}, expected a float type", s.hf_name,
                                     dtype_name(e->dtype)));
      continue;
    }
    if (e->dtype == DType::F8_E4M3) {
      const std::string scale_name = s.hf_name + "_scale_inv";
      if (s.shape.size() != 2 || !ckpt.find(scale_name)) {
        problems.push_back(fmt::format("FP8 tensor \"{}\" needs its block scales \"{}\"", s.hf_name, scale_name));
        continue;
      }
      consumed.insert(scale_name);
    }
    dtype_counts[std::string(dtype_name(e->dtype))]++;
    entries[i] = e;
    const bool aligned = reinterpret_cast<uintptr_t>(e->data) % alignof(float) == 0;
    if (e->dtype != DType::F32 || !aligned) arena_floats += e->numel();
  }
  for (const std::string& name : ckpt.names())
    if (!consumed.count(name) && !hf_name_is_ignored(c, name))
      problems.push_back(fmt::format("unexpected tensor \"{}\" {} (not part of a {} model with this config)", name,
                                     shape_string(ckpt.get(name).shape), c.model_type));
  if (!problems.empty()) {
    std::string msg = fmt::format("{}: checkpoint does not match config.json ({} problem(s)):", dir, problems.size());
    const size_t shown = std::min<size_t>(problems.size(), 20);
    for (size_t i = 0; i < shown; ++i) msg += "\n  " + problems[i];
    if (shown < problems.size()) msg += fmt::format("\n  ... and {} more", problems.size() - shown);
    DSV_FAIL("{}", msg);
  }

  // Pass 2: point at fp32 weights in place; convert the rest into the arena. Each converted tensor
  // owns a precomputed range of the arena, so tensors convert in parallel.
  m->arena.resize(static_cast<size_t>(arena_floats));
  std::vector<float*> destination(slots.size(), nullptr);
  float* next = m->arena.data();
  for (size_t i = 0; i < slots.size(); ++i) {
    const TensorEntry* e = entries[i];
    if (!e) continue;  // omitted empty tensor
    Tensor& t = *slots[i].target;
    t.shape = e->shape;
    const bool aligned = reinterpret_cast<uintptr_t>(e->data) % alignof(float) == 0;
    if (e->dtype == DType::F32 && aligned) {
      t.data = reinterpret_cast<const float*>(e->data);
      m->stats.zero_copy_bytes += static_cast<int64_t>(e->nbytes);
    } else {
      destination[i] = next;
      t.data = next;
      next += e->numel();
      m->stats.converted_bytes += e->numel() * 4;
      if (e->dtype == DType::F8_E4M3) m->stats.fp8_tensors++;
    }
    m->stats.tensors++;
  }
  const int64_t block_rows = c.fp8_block_rows > 0 ? c.fp8_block_rows : 128;
  const int64_t block_cols = c.fp8_block_cols > 0 ? c.fp8_block_cols : 128;
  // Progress for loads that take a while (more than 1 GiB to convert), on a terminal only.
  const bool progress = m->stats.converted_bytes > (int64_t{1} << 30) && ::isatty(STDERR_FILENO);
  std::atomic<size_t> cursor{0}, done{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto worker = [&] {
    for (size_t i = cursor++; i < slots.size(); i = cursor++) {
      if (!destination[i]) continue;
      try {
        const TensorEntry& e = *entries[i];
        if (e.dtype == DType::F8_E4M3)
          dequantize_fp8_blocks(e, ckpt.get(slots[i].hf_name + "_scale_inv"), block_rows, block_cols, destination[i]);
        else
          convert_to_f32(e.dtype, e.data, destination[i], static_cast<size_t>(e.numel()));
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (!failure) failure = std::current_exception();
      }
      const size_t d = ++done;
      if (progress && d % 64 == 0) fmt::print(stderr, "\rconverting weights: {}/{} tensors", d, slots.size());
    }
  };
  const unsigned threads = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (progress) fmt::print(stderr, "\rconverting weights: done ({} tensors)\n", slots.size());
  if (failure) std::rethrow_exception(failure);
  finish_weights(*m);
  for (const auto& [name, n] : dtype_counts) m->stats.dtype_counts.emplace_back(name, n);
  return m;
}

}  // namespace dsv
