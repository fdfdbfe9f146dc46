#include "train/recipe.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string_view>
#include <toml++/toml.h>
#include <variant>

#include "core/error.h"

namespace dsv::train {
namespace {

namespace fs = std::filesystem;

// One row per recipe key; the member pointer's type is the key's type.
using Member = std::variant<int64_t TrainConfig::*, uint64_t TrainConfig::*, double TrainConfig::*,
                            bool TrainConfig::*, std::string TrainConfig::*, std::vector<std::string> TrainConfig::*,
                            std::vector<double> TrainConfig::*>;
struct Field {
  std::string_view section, key;
  Member member;
  bool is_path = false;  // relative values resolve against the recipe's directory
};

const std::array kFields = {
    Field{"model", "config", &TrainConfig::model_config, true},
    Field{"model", "init_from", &TrainConfig::init_from, true},
    Field{"model", "seed", &TrainConfig::seed},
    Field{"model", "init_std", &TrainConfig::init_std},
    Field{"data", "tokens", &TrainConfig::data_tokens, true},
    Field{"data", "shuffle", &TrainConfig::shuffle},
    Field{"data", "paths", &TrainConfig::data_paths, true},
    Field{"data", "weights", &TrainConfig::data_weights},
    Field{"data", "split", &TrainConfig::data_split},
    Field{"data", "sft", &TrainConfig::sft_jsonl, true},
    Field{"data", "tokenizer", &TrainConfig::data_tokenizer, true},
    Field{"train", "micro_batch", &TrainConfig::micro_batch},
    Field{"train", "seq_len", &TrainConfig::seq_len},
    Field{"train", "grad_accum", &TrainConfig::grad_accum},
    Field{"train", "steps", &TrainConfig::steps},
    Field{"train", "device", &TrainConfig::device},
    Field{"train", "recompute", &TrainConfig::recompute},
    Field{"train", "max_bad_steps", &TrainConfig::max_bad_steps},
    Field{"train", "tf32", &TrainConfig::tf32},
    Field{"train", "bf16", &TrainConfig::bf16},
    Field{"train", "eval_interval", &TrainConfig::eval_interval},
    Field{"train", "eval_iters", &TrainConfig::eval_iters},
    Field{"optimizer", "lr", &TrainConfig::lr},
    Field{"optimizer", "min_lr", &TrainConfig::min_lr},
    Field{"optimizer", "beta1", &TrainConfig::beta1},
    Field{"optimizer", "beta2", &TrainConfig::beta2},
    Field{"optimizer", "eps", &TrainConfig::eps},
    Field{"optimizer", "weight_decay", &TrainConfig::weight_decay},
    Field{"optimizer", "clip_grad", &TrainConfig::clip_grad},
    Field{"optimizer", "schedule", &TrainConfig::schedule},
    Field{"optimizer", "warmup_steps", &TrainConfig::warmup_steps},
    Field{"optimizer", "decay_fraction", &TrainConfig::decay_fraction},
    Field{"optimizer", "bf16_moments", &TrainConfig::bf16_moments},
    Field{"loss", "mtp_depth", &TrainConfig::mtp_depth},
    Field{"loss", "mtp_lambda", &TrainConfig::mtp_lambda},
    Field{"loss", "seq_aux_alpha", &TrainConfig::seq_aux_alpha},
    Field{"loss", "expert_aux_alpha", &TrainConfig::expert_aux_alpha},
    Field{"loss", "bias_update_gamma", &TrainConfig::bias_update_gamma},
    Field{"parallel", "gpus", &TrainConfig::gpus},
    Field{"parallel", "tp", &TrainConfig::tp},
    Field{"parallel", "pp", &TrainConfig::pp},
    Field{"parallel", "ep", &TrainConfig::ep},
    Field{"checkpoint", "save", &TrainConfig::save_dir, true},
    Field{"checkpoint", "save_interval", &TrainConfig::save_interval},
    Field{"checkpoint", "load", &TrainConfig::load_dir, true},
    Field{"checkpoint", "keep_last", &TrainConfig::keep_last},
    Field{"output", "metrics_jsonl", &TrainConfig::metrics_jsonl, true},
    Field{"output", "out_dir", &TrainConfig::out_dir, true},
    Field{"output", "tokenizer", &TrainConfig::tokenizer, true},
    Field{"output", "log_interval", &TrainConfig::log_interval},
    Field{"output", "tensorboard", &TrainConfig::tensorboard, true},
};
constexpr std::array<std::string_view, 8> kSections = {"model", "data",     "train",      "optimizer",
                                                       "loss",  "parallel", "checkpoint", "output"};

std::string full_key(const Field& f) { return fmt::format("{}.{}", f.section, f.key); }

const Field* find_field(std::string_view section, std::string_view key) {
  for (const Field& f : kFields)
    if (f.section == section && f.key == key) return &f;
  return nullptr;
}

std::string keys_of(std::string_view section) {
  std::string out;
  for (const Field& f : kFields)
    if (f.section == section) out += fmt::format("{}{}", out.empty() ? "" : ", ", f.key);
  return out;
}

std::string sections_list() {
  std::string out;
  for (auto s : kSections) out += fmt::format("{}[{}]", out.empty() ? "" : ", ", s);
  return out;
}

const char* type_name(const Member& m) {
  switch (m.index()) {
    case 0: return "an integer";
    case 1: return "a non-negative integer";
    case 2: return "a number";
    case 3: return "a boolean (true or false)";
    case 4: return "a string";
    case 5: return "an array of strings";
    default: return "an array of numbers";
  }
}

std::string found_toml(const toml::node& n) {
  if (auto v = n.as_integer()) return fmt::format("the integer {}", v->get());
  if (auto v = n.as_floating_point()) return fmt::format("the float {}", v->get());
  if (auto v = n.as_boolean()) return fmt::format("the boolean {}", v->get());
  if (auto v = n.as_string()) return fmt::format("the string \"{}\"", v->get());
  if (n.is_table()) return "a table";
  if (n.is_array()) return "an array";
  return "a date/time";
}

std::string resolve(const std::string& value, const std::string& base_dir) {
  if (value.empty() || base_dir.empty() || fs::path(value).is_absolute()) return value;
  return (fs::path(base_dir) / value).lexically_normal().string();
}

// Where each key's value came from, for validation errors: "file:line" or "file (override k=v)".
using Origins = std::map<std::string, std::string>;

struct Parser {
  TrainConfig& c;
  const std::string& origin;
  Origins& origins;

  void set_from_toml(const Field& f, const toml::node& n, const std::string& base_dir) {
    const std::string key = full_key(f);
    const std::string where = fmt::format("{}:{}", origin, n.source().begin.line);
    origins[key] = where;
    auto bad = [&]() { DSV_FAIL("{}: {}: expected {}, found {}", where, key, type_name(f.member), found_toml(n)); };
    std::visit(
        [&](auto member) {
          using T = std::remove_cvref_t<decltype(c.*member)>;
          if constexpr (std::is_same_v<T, int64_t>) {
            if (!n.is_integer()) bad();
            c.*member = n.as_integer()->get();
          } else if constexpr (std::is_same_v<T, uint64_t>) {
            if (!n.is_integer() || n.as_integer()->get() < 0) bad();
            c.*member = static_cast<uint64_t>(n.as_integer()->get());
          } else if constexpr (std::is_same_v<T, double>) {
            // TOML writes 0 and 1 as integers; a number is a number here.
            if (n.is_integer()) c.*member = static_cast<double>(n.as_integer()->get());
            else if (n.is_floating_point()) c.*member = n.as_floating_point()->get();
            else bad();
          } else if constexpr (std::is_same_v<T, bool>) {
            if (!n.is_boolean()) bad();
            c.*member = n.as_boolean()->get();
          } else if constexpr (std::is_same_v<T, std::string>) {
            if (!n.is_string()) bad();
            c.*member = f.is_path ? resolve(n.as_string()->get(), base_dir) : n.as_string()->get();
          } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
            if (!n.is_array()) bad();
            T values;
            for (const toml::node& e : *n.as_array()) {
              if (!e.is_string()) bad();
              values.push_back(f.is_path ? resolve(e.as_string()->get(), base_dir) : e.as_string()->get());
            }
            c.*member = values;
          } else {
            if (!n.is_array()) bad();
            T values;
            for (const toml::node& e : *n.as_array()) {
              if (e.is_integer()) values.push_back(static_cast<double>(e.as_integer()->get()));
              else if (e.is_floating_point()) values.push_back(e.as_floating_point()->get());
              else bad();
            }
            c.*member = values;
          }
        },
        f.member);
  }

  void apply_override(const std::string& text) {
    const size_t eq = text.find('=');
    DSV_CHECK(eq != std::string::npos, "{}: override \"{}\": expected section.key=value, found no '='", origin, text);
    const std::string key = text.substr(0, eq), value = text.substr(eq + 1);
    const size_t dot = key.find('.');
    DSV_CHECK(dot != std::string::npos, "{}: override \"{}\": expected section.key=value, found the key \"{}\"",
              origin, text, key);
    const std::string section = key.substr(0, dot), name = key.substr(dot + 1);
    const Field* f = find_field(section, name);
    if (!f) {
      const bool known_section = std::find(kSections.begin(), kSections.end(), section) != kSections.end();
      DSV_CHECK(!known_section, "{}: override \"{}\": unknown key {} (expected one of [{}]: {})", origin, text, key,
                section, keys_of(section));
      DSV_FAIL("{}: override \"{}\": unknown section \"{}\" (expected one of {})", origin, text, section,
               sections_list());
    }
    const std::string where = fmt::format("{} (override {})", origin, text);
    origins[key] = where;
    // The data sources exclude each other: overriding one replaces whichever the recipe named.
    if (key == "data.tokens" || key == "data.paths" || key == "data.sft") {
      c.data_tokens.clear();
      c.data_paths.clear();
      c.sft_jsonl.clear();
    }
    auto bad = [&]() { DSV_FAIL("{}: {}: expected {}, found \"{}\"", where, key, type_name(f->member), value); };
    std::visit(
        [&](auto member) {
          using T = std::remove_cvref_t<decltype(c.*member)>;
          if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, uint64_t>) {
            T v{};
            const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
            if (value.empty() || ec != std::errc() || end != value.data() + value.size()) bad();
            c.*member = v;
          } else if constexpr (std::is_same_v<T, double>) {
            char* end = nullptr;
            const double v = value.empty() ? 0.0 : std::strtod(value.c_str(), &end);
            if (value.empty() || end != value.c_str() + value.size()) bad();
            c.*member = v;
          } else if constexpr (std::is_same_v<T, bool>) {
            if (value != "true" && value != "false") bad();
            c.*member = value == "true";
          } else if constexpr (std::is_same_v<T, std::string>) {
            // Quotes are optional: train.device=cuda and train.device="cuda" are the same.
            std::string v = value;
            if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
            c.*member = v;
          } else {
            // Arrays in an override are comma-separated: data.paths=a,b data.weights=0.3,0.7
            T values;
            size_t start = 0;
            while (start <= value.size() && !value.empty()) {
              const size_t comma = std::min(value.find(',', start), value.size());
              const std::string item = value.substr(start, comma - start);
              if constexpr (std::is_same_v<T, std::vector<std::string>>) {
                if (item.empty()) bad();
                values.push_back(item);
              } else {
                char* end = nullptr;
                const double v = item.empty() ? 0.0 : std::strtod(item.c_str(), &end);
                if (item.empty() || end != item.c_str() + item.size()) bad();
                values.push_back(v);
              }
              start = comma + 1;
            }
            c.*member = values;
          }
        },
        f->member);
  }
};

void validate(const TrainConfig& c, const std::string& origin, const Origins& origins) {
  // Comparisons are written so that NaN fails them.
  auto where = [&](const char* key) {
    auto it = origins.find(key);
    return it != origins.end() ? it->second : fmt::format("{} (default)", origin);
  };
  auto check_int = [&](const char* key, int64_t v, int64_t min) {
    DSV_CHECK(v >= min, "{}: {}: expected an integer >= {}, found {}", where(key), key, min, v);
  };
  auto check_range = [&](const char* key, double v, bool ok, const char* expected) {
    DSV_CHECK(ok, "{}: {}: expected {}, found {}", where(key), key, expected, v);
  };
  auto check_name = [&](const char* key, const std::string& v, std::initializer_list<const char*> names) {
    std::string list;
    for (const char* n : names) {
      if (v == n) return;
      list += fmt::format("{}\"{}\"", list.empty() ? "" : ", ", n);
    }
    DSV_FAIL("{}: {}: expected one of {}, found \"{}\"", where(key), key, list, v);
  };

  DSV_CHECK(!c.model_config.empty() || !c.init_from.empty(),
            "{}: expected model.config (a config.json, random init) or model.init_from (a checkpoint directory), "
            "found neither",
            origin);
  const int sources = int(!c.data_tokens.empty()) + int(!c.data_paths.empty()) + int(!c.sft_jsonl.empty());
  DSV_CHECK(sources == 1,
            "{}: expected exactly one data source: data.tokens (flat int32 token file), data.paths (Megatron "
            ".bin/.idx prefixes) or data.sft (chat JSONL); found {}",
            origin, sources);
  DSV_CHECK(c.data_weights.empty() || c.data_weights.size() == c.data_paths.size(),
            "{}: data.weights: expected one weight per data.paths entry ({}), found {}", where("data.weights"),
            c.data_paths.size(), c.data_weights.size());
  for (double w : c.data_weights)
    check_range("data.weights", w, w > 0 && std::isfinite(w), "finite numbers > 0");
  DSV_CHECK(c.sft_jsonl.empty() || !c.data_tokenizer.empty(),
            "{}: data.sft needs data.tokenizer (a directory with tokenizer.json and a chat template), found none",
            origin);
  check_range("model.init_std", c.init_std, c.init_std > 0 && std::isfinite(c.init_std), "a finite number > 0");
  check_int("train.micro_batch", c.micro_batch, 1);
  check_int("train.seq_len", c.seq_len, 2);
  check_int("train.grad_accum", c.grad_accum, 1);
  check_int("train.steps", c.steps, 1);
  check_int("train.max_bad_steps", c.max_bad_steps, 1);
  check_name("train.device", c.device, {"cpu", "cuda"});
  check_name("train.recompute", c.recompute, {"none", "selective", "full"});
  check_range("optimizer.lr", c.lr, c.lr >= 0 && std::isfinite(c.lr), "a finite number >= 0");
  check_range("optimizer.min_lr", c.min_lr, c.min_lr >= 0 && c.min_lr <= c.lr,
              "a number in [0, optimizer.lr]");
  check_range("optimizer.beta1", c.beta1, c.beta1 >= 0 && c.beta1 < 1, "a number in [0, 1)");
  check_range("optimizer.beta2", c.beta2, c.beta2 >= 0 && c.beta2 < 1, "a number in [0, 1)");
  check_range("optimizer.eps", c.eps, c.eps > 0 && std::isfinite(c.eps), "a finite number > 0");
  check_range("optimizer.weight_decay", c.weight_decay, c.weight_decay >= 0 && std::isfinite(c.weight_decay),
              "a finite number >= 0");
  check_range("optimizer.clip_grad", c.clip_grad, c.clip_grad >= 0, "a number >= 0 (0 disables clipping)");
  check_name("optimizer.schedule", c.schedule, {"constant", "cosine", "wsd"});
  check_int("optimizer.warmup_steps", c.warmup_steps, 0);
  check_range("optimizer.decay_fraction", c.decay_fraction, c.decay_fraction >= 0 && c.decay_fraction <= 1,
              "a number in [0, 1]");
  check_int("loss.mtp_depth", c.mtp_depth, -1);
  check_range("loss.mtp_lambda", c.mtp_lambda, c.mtp_lambda >= 0 && std::isfinite(c.mtp_lambda),
              "a finite number >= 0");
  check_range("loss.seq_aux_alpha", c.seq_aux_alpha, c.seq_aux_alpha >= 0 && std::isfinite(c.seq_aux_alpha),
              "a finite number >= 0");
  check_range("loss.expert_aux_alpha", c.expert_aux_alpha,
              c.expert_aux_alpha >= 0 && std::isfinite(c.expert_aux_alpha), "a finite number >= 0");
  check_range("loss.bias_update_gamma", c.bias_update_gamma,
              c.bias_update_gamma >= 0 && std::isfinite(c.bias_update_gamma), "a finite number >= 0");
  check_int("output.log_interval", c.log_interval, 1);
  check_int("train.eval_interval", c.eval_interval, 0);
  check_int("train.eval_iters", c.eval_iters, 1);
  check_int("parallel.gpus", c.gpus, 1);
  check_int("parallel.tp", c.tp, 1);
  check_int("parallel.pp", c.pp, 1);
  check_int("parallel.ep", c.ep, 1);
  DSV_CHECK(c.gpus % (c.tp * c.pp) == 0,
            "{}: parallel.gpus: expected a multiple of tp * pp = {} (data parallel = gpus / (tp * pp)), found {}",
            where("parallel.gpus"), c.tp * c.pp, c.gpus);
  check_int("checkpoint.save_interval", c.save_interval, 0);
  check_int("checkpoint.keep_last", c.keep_last, 0);
}

std::string toml_string(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(ch));
      continue;
    }
    out += ch;
  }
  return out + "\"";
}

std::string toml_float(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::string s = fmt::format("{}", v);  // shortest round-trip form
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

}  // namespace

TrainConfig parse_recipe(const std::string& toml_text, const std::string& origin, const std::string& base_dir,
                         const std::vector<std::string>& overrides) {
  toml::table root;
  try {
    root = toml::parse(toml_text, origin);
  } catch (const toml::parse_error& e) {
    DSV_FAIL("{}:{}:{}: not valid TOML ({})", origin, e.source().begin.line, e.source().begin.column,
             e.description());
  }
  TrainConfig c;
  Origins origins;
  Parser p{c, origin, origins};
  for (auto&& [section_key, section_node] : root) {
    const std::string section(section_key.str());
    const int64_t line = static_cast<int64_t>(section_node.source().begin.line);
    const bool known = std::find(kSections.begin(), kSections.end(), section) != kSections.end();
    DSV_CHECK(known, "{}:{}: unknown section \"{}\" (expected one of {})", origin, line, section, sections_list());
    DSV_CHECK(section_node.is_table(), "{}:{}: {}: expected a section (table), found {}", origin, line, section,
              found_toml(section_node));
    for (auto&& [key, node] : *section_node.as_table()) {
      const Field* f = find_field(section, key.str());
      DSV_CHECK(f, "{}:{}: unknown key {}.{} (expected one of [{}]: {})", origin, node.source().begin.line, section,
                key.str(), section, keys_of(section));
      p.set_from_toml(*f, node, base_dir);
    }
  }
  for (const std::string& o : overrides) p.apply_override(o);
  validate(c, origin, origins);
  return c;
}

TrainConfig load_recipe(const std::string& toml_path, const std::vector<std::string>& overrides) {
  std::ifstream in(toml_path, std::ios::binary);
  DSV_CHECK(in.good(), "{}: cannot open the recipe", toml_path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string base = fs::absolute(fs::path(toml_path)).parent_path().string();
  return parse_recipe(ss.str(), toml_path, base, overrides);
}

std::string describe(const TrainConfig& c) {
  std::string out;
  std::string_view section;
  for (const Field& f : kFields) {
    if (f.section != section) {
      out += fmt::format("{}[{}]\n", out.empty() ? "" : "\n", f.section);
      section = f.section;
    }
    const std::string value = std::visit(
        [&](auto member) -> std::string {
          using T = std::remove_cvref_t<decltype(c.*member)>;
          if constexpr (std::is_same_v<T, double>) return toml_float(c.*member);
          else if constexpr (std::is_same_v<T, bool>) return c.*member ? "true" : "false";
          else if constexpr (std::is_same_v<T, std::string>) return toml_string(c.*member);
          else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
            std::string a;
            for (const std::string& v : c.*member) a += fmt::format("{}{}", a.empty() ? "" : ", ", toml_string(v));
            return "[" + a + "]";
          } else if constexpr (std::is_same_v<T, std::vector<double>>) {
            std::string a;
            for (double v : c.*member) a += fmt::format("{}{}", a.empty() ? "" : ", ", toml_float(v));
            return "[" + a + "]";
          } else return fmt::format("{}", c.*member);
        },
        f.member);
    out += fmt::format("{} = {}\n", f.key, value);
  }
  return out;
}

ModelConfig recipe_model_config(const TrainConfig& c) {
  if (!c.init_from.empty()) return load_model_config(c.init_from);
  return load_model_config_file(c.model_config, "model.config " + c.model_config);
}

int64_t resolved_mtp_depth(const TrainConfig& c, const ModelConfig& m) {
  if (c.mtp_depth < 0) return m.num_nextn_predict_layers;
  DSV_CHECK(c.mtp_depth <= m.num_nextn_predict_layers,
            "loss.mtp_depth: expected at most {} (num_nextn_predict_layers of the model config), found {}",
            m.num_nextn_predict_layers, c.mtp_depth);
  return c.mtp_depth;
}

void check_recipe_fits(const TrainConfig& c, const ModelConfig& m) {
  DSV_CHECK(c.seq_len <= m.max_position_embeddings,
            "train.seq_len: expected at most {} (max_position_embeddings of the model config), found {}",
            m.max_position_embeddings, c.seq_len);
  resolved_mtp_depth(c, m);
}

}  // namespace dsv::train
