#include "io/hf_export.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/tensor.h"
#include "io/hf_names.h"
#include "io/npy.h"
#include "io/safetensors_writer.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace dsv {
namespace fs = std::filesystem;

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  DSV_CHECK(in.good(), "{}: cannot read", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The torch spelling config.json uses for a dtype.
const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::BF16: return "bfloat16";
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    default: DSV_FAIL("export dtype must be bf16 or fp32, found {}", dtype_name(t));
  }
}

// Every e4m3 byte's value, so dequantization is a lookup and one multiply per element.
const std::array<float, 256>& e4m3_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[static_cast<size_t>(i)] = e4m3_to_f32(static_cast<uint8_t>(i));
    return t;
  }();
  return table;
}

// Elements converted per step: bounds the conversion buffers (64 MiB of fp32) for any tensor size.
constexpr int64_t kChunkElements = int64_t{16} << 20;

// Writes one tensor's bytes in `out` dtype. Same dtype (not FP8): the stored bytes as they are, so an
// export in the stored dtype is bit-exact. Otherwise through fp32: bf16/f16/fp32 -> fp32 is exact,
// FP8 is dequantized exactly as the loader does (e4m3 value * its block's scale_inv, one fp32 product),
// and fp32 -> bf16 rounds to nearest even.
void stream_tensor(const ExportTensor& t, DType out, int64_t block_rows, int64_t block_cols,
                   SafetensorsStreamWriter& writer, std::vector<float>& f32, std::vector<uint16_t>& b16) {
  const TensorEntry* e = t.source;
  if (!e || e->numel() == 0) return;
  if (e->dtype == out) {
    writer.append(e->data, e->nbytes);
    return;
  }
  auto emit = [&](const float* values, size_t n) {
    if (out == DType::F32) {
      writer.append(values, n * sizeof(float));
      return;
    }
    b16.resize(n);
    for (size_t i = 0; i < n; ++i) b16[i] = f32_to_bf16(values[i]);
    writer.append(b16.data(), n * sizeof(uint16_t));
  };
  const int64_t n = e->numel();
  if (e->dtype != DType::F8_E4M3) {
    const size_t elem = dtype_size(e->dtype);
    for (int64_t begin = 0; begin < n; begin += kChunkElements) {
      const int64_t count = std::min(kChunkElements, n - begin);
      f32.resize(static_cast<size_t>(count));
      convert_to_f32(e->dtype, e->data + static_cast<size_t>(begin) * elem, f32.data(), static_cast<size_t>(count));
      emit(f32.data(), static_cast<size_t>(count));
    }
    return;
  }
  // FP8 [rows, cols] with scale_inv [ceil(rows / block_rows), ceil(cols / block_cols)] (checked by plan_export).
  const int64_t rows = e->shape[0], cols = e->shape[1];
  const int64_t scols = (cols + block_cols - 1) / block_cols;
  std::vector<float> scales(static_cast<size_t>(t.scale_inv->numel()));
  convert_to_f32(t.scale_inv->dtype, t.scale_inv->data, scales.data(), scales.size());
  const auto& lut = e4m3_table();
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkElements / std::max<int64_t>(cols, 1));
  for (int64_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
    const int64_t r1 = std::min(rows, r0 + rows_per_chunk);
    f32.resize(static_cast<size_t>((r1 - r0) * cols));
    for (int64_t i = r0; i < r1; ++i) {
      const uint8_t* q = e->data + i * cols;
      float* dst = f32.data() + (i - r0) * cols;
      const float* scale_row = scales.data() + (i / block_rows) * scols;
      for (int64_t j = 0; j < cols; ++j) dst[j] = lut[q[j]] * scale_row[j / block_cols];
    }
    emit(f32.data(), f32.size());
  }
}

bool is_within(const fs::path& inner, const fs::path& outer) {
  const fs::path a = fs::weakly_canonical(inner), b = fs::weakly_canonical(outer);
  auto ai = a.begin();
  for (auto bi = b.begin(); bi != b.end(); ++bi, ++ai) {
    if (bi->empty()) continue;  // a trailing separator
    if (ai == a.end() || *ai != *bi) return false;
  }
  return true;
}

void fsync_dir(const fs::path& dir) {  // best effort: makes renames inside `dir` durable
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

// Files copied beside the weights. The tokenizer's come from --tokenizer when given, else the source;
// generation_config.json (sampling defaults, not a tokenizer file) from the source, else --tokenizer.

struct Companion {
  fs::path from;
  std::string name;
};

std::vector<Companion> companion_files(const fs::path& source, const std::string& tokenizer_dir,
                                       std::vector<std::string>& warnings) {
  std::vector<Companion> out;
  const fs::path tok = tokenizer_dir.empty() ? source : fs::path(tokenizer_dir);
  if (!tokenizer_dir.empty())
    DSV_CHECK(fs::is_directory(tok), "--tokenizer {}: not a directory", tokenizer_dir);
  for (const char* name : kTokenizerFiles)
    if (fs::is_regular_file(tok / name)) out.push_back({tok / name, name});
  const bool has_vocab = std::any_of(out.begin(), out.end(), [](const Companion& c) {
    return c.name == "tokenizer.json" || c.name == "tokenizer.model";
  });
  if (!tokenizer_dir.empty())
    DSV_CHECK(has_vocab, "--tokenizer {}: no tokenizer.json or tokenizer.model there", tokenizer_dir);
  else if (!has_vocab)
    warnings.push_back(fmt::format("{} has no tokenizer.json or tokenizer.model: the export has no tokenizer "
                                   "(pass --tokenizer DIR)",
                                   source.string()));
  for (const fs::path& dir : {source, tok})
    if (fs::is_regular_file(dir / "generation_config.json")) {
      out.push_back({dir / "generation_config.json", "generation_config.json"});
      break;
    }
  return out;
}

}  // namespace

int64_t ExportTensor::numel() const { return numel_of(shape); }

uint64_t parse_byte_size(const std::string& text) {
  const std::string s = trim(text);
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  const std::string number = s.substr(0, i), unit = lower(trim(s.substr(i)));
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1.0},         {"b", 1.0},           {"kb", 1e3},          {"mb", 1e6},
      {"gb", 1e9},       {"tb", 1e12},         {"kib", 1024.0},      {"mib", 1048576.0},
      {"gib", 1073741824.0}, {"tib", 1099511627776.0}};
  double scale = 0;
  for (const auto& [name, factor] : kUnits)
    if (unit == name) scale = factor;
  const bool number_ok = !number.empty() && number != "." && std::count(number.begin(), number.end(), '.') <= 1;
  DSV_CHECK(number_ok && scale > 0,
            "size \"{}\": expected a number of bytes with an optional unit (B, KB, MB, GB, TB = powers of 1000; "
            "KiB, MiB, GiB, TiB = powers of 1024), e.g. 5GB or 500MB",
            text);
  const double bytes = std::floor(std::stod(number) * scale);
  DSV_CHECK(bytes >= 1 && bytes < 1.8e19, "size \"{}\": must be at least 1 byte (and fit in 64 bits)", text);
  return static_cast<uint64_t>(bytes);
}

std::string resolve_checkpoint_dir(const std::string& path) {
  const fs::path p(path);
  DSV_CHECK(fs::is_directory(p), "--checkpoint {}: not a directory (expected a training save directory, a step "
            "directory or a Hugging Face model directory)", path);
  if (fs::exists(p / "config.json") || !fs::is_regular_file(p / "latest")) return path;
  std::string step = trim(read_text(p / "latest"));
  while (!step.empty() && step.back() == '/') step.pop_back();
  DSV_CHECK(!step.empty(), "{}: empty (expected the name of a step directory, e.g. step_00001000)",
            (p / "latest").string());
  const fs::path dir = p / step;
  DSV_CHECK(fs::is_directory(dir), "{}: names \"{}\", which is not a directory in {}", (p / "latest").string(), step,
            path);
  return dir.string();
}

ExportPlan plan_export(const ModelConfig& c, const Checkpoint& ckpt) {
  ExportPlan plan;
  std::vector<std::string> problems;
  std::set<std::string> consumed;
  const int64_t block_rows = c.fp8_block_rows > 0 ? c.fp8_block_rows : 128;
  const int64_t block_cols = c.fp8_block_cols > 0 ? c.fp8_block_cols : 128;

  plan.mtp_modules = stored_mtp_modules(c, ckpt);
  if (plan.mtp_modules > c.num_nextn_predict_layers)
    problems.push_back(fmt::format("{} MTP module(s) stored (model.layers.{}.eh_proj.weight, ...) but config.json "
                                   "declares num_nextn_predict_layers = {}",
                                   plan.mtp_modules, c.num_hidden_layers, c.num_nextn_predict_layers));
  Weights scratch;  // the table needs somewhere to point; nothing is loaded into it
  const std::vector<WeightSlot> table = hf_weight_table(c, plan.mtp_modules, scratch);

  // Checks one tensor the output will hold; `fallback` (an MTP copy's main-model original) stands
  // in when the source lacks it.
  auto add = [&](const std::string& name, const std::vector<int64_t>& shape, const std::string& fallback) {
    ExportTensor t{.name = name, .shape = shape};
    const TensorEntry* e = ckpt.find(name);
    if (!e && !fallback.empty()) {
      e = ckpt.find(fallback);
      t.copied = true;
      ++plan.copies_added;
      if (!e) return;  // the original is reported missing on its own
    }
    if (!e && numel_of(shape) == 0) {  // an empty tensor (no shared experts) some writers omit
      plan.tensors.push_back(std::move(t));
      return;
    }
    if (!e) {
      problems.push_back(fmt::format("missing tensor \"{}\" (expected shape {})", name, shape_string(shape)));
      return;
    }
    consumed.insert(e->name);
    if (e->shape != shape) {
      problems.push_back(fmt::format("tensor \"{}\" has shape {}, expected {} (from config.json)", e->name,
                                     shape_string(e->shape), shape_string(shape)));
      return;
    }
    if (e->dtype == DType::I32 || e->dtype == DType::I64) {
      problems.push_back(fmt::format("tensor \"{}\" has integer dtype {}, expected a float type", e->name,
                                     dtype_name(e->dtype)));
      return;
    }
    if (e->dtype == DType::F8_E4M3) {
      const std::string scale_name = e->name + "_scale_inv";
      const TensorEntry* s = ckpt.find(scale_name);
      if (shape.size() != 2 || !s) {
        problems.push_back(fmt::format("FP8 tensor \"{}\" needs its block scales \"{}\"", e->name, scale_name));
        return;
      }
      consumed.insert(scale_name);
      const std::vector<int64_t> expected{(shape[0] + block_rows - 1) / block_rows,
                                          (shape[1] + block_cols - 1) / block_cols};
      if (s->shape != expected || s->dtype == DType::I32 || s->dtype == DType::I64) {
        problems.push_back(fmt::format("FP8 block scales \"{}\" are {} {}, expected a float tensor of shape {} "
                                       "({}x{} blocks)",
                                       scale_name, dtype_name(s->dtype), shape_string(s->shape),
                                       shape_string(expected), block_rows, block_cols));
        return;
      }
      t.scale_inv = s;
      ++plan.fp8_tensors;
    }
    t.source = e;
    plan.tensors.push_back(std::move(t));
  };

  const std::string main_head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  const std::vector<int64_t> vocab_shape{c.vocab_size, c.hidden_size};
  for (const WeightSlot& s : table) {
    // The release stores each MTP module's own copy of the embedding (first) and of the LM head
    // (after shared_head.norm); sources without them get copies of the main model's.
    const bool enorm = s.hf_name.ends_with(".enorm.weight");
    const std::string prefix = s.hf_name.substr(0, s.hf_name.rfind(enorm ? "enorm." : "shared_head."));
    if (enorm) add(prefix + "embed_tokens.weight", vocab_shape, "model.embed_tokens.weight");
    add(s.hf_name, s.shape, "");
    if (s.hf_name.ends_with(".shared_head.norm.weight"))
      add(prefix + "shared_head.head.weight", vocab_shape, main_head);
  }
  for (const std::string& name : ckpt.names()) {
    if (consumed.count(name)) continue;
    if (c.tie_word_embeddings && name == "lm_head.weight") {
      plan.dropped.push_back(name);  // tied: transformers neither stores nor reads it
      continue;
    }
    problems.push_back(fmt::format("unexpected tensor \"{}\" {} (not part of a {} model with this config{})", name,
                                   shape_string(ckpt.get(name).shape), c.model_type,
                                   plan.mtp_modules ? fmt::format(" and {} MTP module(s)", plan.mtp_modules) : ""));
  }
  if (!problems.empty()) {
    std::string msg =
        fmt::format("{}: checkpoint does not match its config.json ({} problem(s)); nothing was written:", ckpt.dir(),
                    problems.size());
    const size_t shown = std::min<size_t>(problems.size(), 20);
    for (size_t i = 0; i < shown; ++i) msg += "\n  " + problems[i];
    if (shown < problems.size()) msg += fmt::format("\n  ... and {} more", problems.size() - shown);
    DSV_FAIL("{}", msg);
  }
  return plan;
}

std::vector<std::vector<size_t>> plan_shards(const std::vector<uint64_t>& sizes, uint64_t max_bytes) {
  std::vector<std::vector<size_t>> shards;
  uint64_t current = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const bool fits = !shards.empty() && current + sizes[i] <= max_bytes;
    if (!fits || sizes[i] > max_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    current += sizes[i];
    if (sizes[i] > max_bytes) current = max_bytes + 1;  // an oversized tensor keeps its shard to itself
  }
  return shards;
}

std::string export_config_json(const std::string& text, DType dtype, const std::string& origin) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    DSV_FAIL("{}: not valid JSON ({})", origin, e.what());
  }
  DSV_CHECK(j.is_object(), "{}: expected a JSON object", origin);
  const char* name = torch_dtype_name(dtype);
  j["torch_dtype"] = name;
  if (j.contains("dtype")) j["dtype"] = name;
  j.erase("quantization_config");
  return j.dump(2) + "\n";
}

ExportResult export_hf(const ExportOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  DSV_CHECK(o.dtype == DType::BF16 || o.dtype == DType::F32, "--dtype: expected bf16 or fp32, found {}",
            dtype_name(o.dtype));
  DSV_CHECK(o.max_shard_bytes > 0, "--max-shard-size must be at least 1 byte");
  DSV_CHECK(!o.out_dir.empty(), "--out: empty path");
  ExportResult r;
  r.source_dir = resolve_checkpoint_dir(o.checkpoint);
  const fs::path source(r.source_dir);

  // The output: refuse to clobber anything (or to replace the source) before reading a byte.
  fs::path out = fs::path(o.out_dir).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();  // "dir/" -> "dir"
  DSV_CHECK(!out.empty() && out.filename() != "." && out.filename() != "..", "--out {}: not a usable directory name",
            o.out_dir);
  r.out_dir = out.string();
  const bool out_exists = fs::exists(fs::symlink_status(out));
  const bool out_empty_dir = out_exists && fs::is_directory(out) && fs::is_empty(out);
  DSV_CHECK(!out_exists || out_empty_dir || o.force,
            "--out {}: already exists and is not empty; pass --force to replace it", r.out_dir);
  DSV_CHECK(!is_within(source, out), "--out {}: holds the checkpoint being exported ({}); choose another directory",
            r.out_dir, r.source_dir);
  DSV_CHECK(o.tokenizer_dir.empty() || !is_within(o.tokenizer_dir, out),
            "--out {}: holds the --tokenizer directory {}; choose another directory", r.out_dir, o.tokenizer_dir);

  // The source: config, tensors against the name table, companion files. Headers only so far.
  const ModelConfig config = load_model_config(r.source_dir);
  const std::string config_text = export_config_json(read_text(source / "config.json"), o.dtype,
                                                     (source / "config.json").string());
  const Checkpoint ckpt(r.source_dir);
  r.plan = plan_export(config, ckpt);
  const std::vector<Companion> companions = companion_files(source, o.tokenizer_dir, r.warnings);
  const int64_t block_rows = config.fp8_block_rows > 0 ? config.fp8_block_rows : 128;
  const int64_t block_cols = config.fp8_block_cols > 0 ? config.fp8_block_cols : 128;

  std::vector<uint64_t> sizes;
  for (const ExportTensor& t : r.plan.tensors) {
    sizes.push_back(static_cast<uint64_t>(t.numel()) * dtype_size(o.dtype));
    r.total_bytes += sizes.back();
  }
  const std::vector<std::vector<size_t>> shards = plan_shards(sizes, o.max_shard_bytes);
  r.shards = static_cast<int64_t>(shards.size());
  const bool progress = o.progress && r.total_bytes >= (uint64_t{1} << 30);

  if (!out.parent_path().empty()) fs::create_directories(out.parent_path());
  const std::string pid = std::to_string(::getpid());
  const fs::path tmp = out.parent_path() / (out.filename().string() + ".tmp-" + pid);
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    std::vector<float> f32;
    std::vector<uint16_t> b16;
    uint64_t written = 0;
    size_t tensors_done = 0;
    for (size_t s = 0; s < shards.size(); ++s) {
      const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
      std::vector<TensorToWrite> header;
      for (size_t i : shards[s]) {
        const ExportTensor& t = r.plan.tensors[i];
        header.push_back({.name = t.name, .dtype = o.dtype, .shape = t.shape});
        weight_map[t.name] = file;
      }
      SafetensorsStreamWriter writer((tmp / file).string(), header, {{"format", "pt"}});
      for (size_t i : shards[s]) stream_tensor(r.plan.tensors[i], o.dtype, block_rows, block_cols, writer, f32, b16);
      writer.finish();
      written += writer.data_bytes();
      tensors_done += shards[s].size();
      if (progress) {
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        fmt::print(stderr, "export: {} ({}/{}): {}/{} tensors, {:.2f}/{:.2f} GB, {:.0f} MB/s\n", file, s + 1,
                   shards.size(), tensors_done, r.plan.tensors.size(), static_cast<double>(written) / 1e9,
                   static_cast<double>(r.total_bytes) / 1e9, static_cast<double>(written) / 1e6 / std::max(secs, 1e-9));
      }
    }
    nlohmann::ordered_json index = {{"metadata", {{"total_size", r.total_bytes}}}, {"weight_map", weight_map}};
    write_file_atomic((tmp / "model.safetensors.index.json").string(), index.dump(2) + "\n");
    write_file_atomic((tmp / "config.json").string(), config_text);
    for (const Companion& c : companions) {
      write_file_atomic((tmp / c.name).string(), read_text(c.from));
      r.companion_files.push_back(c.name);
    }
    fsync_dir(tmp);

    // Into place. An existing directory is moved aside first and removed only once the new one is in.
    if (out_exists) {
      const fs::path old = out.parent_path() / (out.filename().string() + ".old-" + pid);
      fs::remove_all(old);
      fs::rename(out, old);
      try {
        fs::rename(tmp, out);
      } catch (...) {
        fs::rename(old, out);  // put the original back
        throw;
      }
      fs::remove_all(old);
    } else {
      fs::rename(tmp, out);
    }
    fsync_dir(out.parent_path().empty() ? fs::path(".") : out.parent_path());
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
  // The plan's source pointers die with `ckpt`: keep the names and counts only.
  for (ExportTensor& t : r.plan.tensors) t.source = t.scale_inv = nullptr;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace dsv
