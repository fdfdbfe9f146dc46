// Building a Tokenizer from tokenizer.json and tokenizer_config.json. Every field we do not
// implement fails here, naming the field, rather than encoding differently later.
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/json_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/tokenizer_json.h"
#include "tokenizer/utf8.h"

namespace dsv {

namespace {

using nlohmann::json;

std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  DSV_CHECK(f, "cannot open {}: {}", p.string(), std::strerror(errno));
  std::string s;
  f.seekg(0, std::ios::end);
  s.resize(static_cast<size_t>(f.tellg()));
  f.seekg(0);
  f.read(s.data(), static_cast<std::streamsize>(s.size()));
  DSV_CHECK(f, "cannot read {}", p.string());
  return s;
}

tok::Bpe load_model(tok::TokenizerJson& tj, const std::string& where) {
  const json& m = tok::jfield(tj.doc, "model", where);
  const std::string w = where + ": model";
  DSV_CHECK(m.is_object(), "{}: expected an object", w);
  const std::string type = m.contains("type") ? tok::jstring(m, "type", w) : "BPE";
  DSV_CHECK(type == "BPE", "{}.type: model \"{}\" is not supported (only BPE)", w, type);
  DSV_CHECK(tj.has_vocab, "{}.vocab: missing", w);
  DSV_CHECK(tj.has_merges, "{}.merges: missing", w);
  if (m.contains("dropout") && !m["dropout"].is_null()) {
    DSV_CHECK(m["dropout"].is_number() && m["dropout"].get<double>() == 0.0,
              "{}.dropout: BPE dropout {} is not supported (encoding must be deterministic)", w, m["dropout"].dump());
  }
  for (const char* f : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(f) && !m[f].is_null()) {
      DSV_CHECK(m[f].is_string() && m[f].get<std::string>().empty(), "{}.{}: {} is not supported (only null)", w, f,
                m[f].dump());
    }
  }
  tok::BpeOptions opt;
  if (m.contains("unk_token") && !m["unk_token"].is_null()) opt.unk_token = tok::jstring(m, "unk_token", w);
  opt.fuse_unk = tok::jbool(m, "fuse_unk", w, false);
  opt.byte_fallback = tok::jbool(m, "byte_fallback", w, false);
  opt.ignore_merges = tok::jbool(m, "ignore_merges", w, false);
  return tok::Bpe(std::move(tj.vocab), tj.merges, std::move(opt), w);
}

std::vector<tok::AddedToken> load_added(const json& doc, const std::string& where) {
  std::vector<tok::AddedToken> out;
  auto it = doc.find("added_tokens");
  if (it == doc.end() || it->is_null()) return out;
  DSV_CHECK(it->is_array(), "{}: added_tokens: expected an array", where);
  for (size_t i = 0; i < it->size(); ++i) {
    const json& t = (*it)[i];
    const std::string w = fmt::format("{}: added_tokens[{}]", where, i);
    tok::AddedToken a;
    const json& id = tok::jfield(t, "id", w);
    DSV_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < (1 << 30),
              "{}.id: expected a non-negative integer, found {}", w, id.dump());
    a.id = id.get<int32_t>();
    a.content = tok::jstring(t, "content", w);
    DSV_CHECK(tok::utf8_valid(a.content), "{}.content: not valid UTF-8", w);
    a.single_word = tok::jbool(t, "single_word", w, false);
    a.lstrip = tok::jbool(t, "lstrip", w, false);
    a.rstrip = tok::jbool(t, "rstrip", w, false);
    a.special = tok::jbool(t, "special", w, false);
    a.normalized = tok::jbool(t, "normalized", w, !a.special);
    out.push_back(std::move(a));
  }
  return out;
}

bool load_decoder(const json& doc, const std::string& where) {
  auto it = doc.find("decoder");
  if (it == doc.end() || it->is_null()) return false;
  const std::string type = tok::jstring(*it, "type", where + ": decoder");
  DSV_CHECK(type == "ByteLevel", "{}: decoder.type: decoder \"{}\" is not supported (only ByteLevel or null)", where,
            type);
  return true;
}

// The bytes a token decodes to under the ByteLevel decoder: its characters mapped back through
// the byte alphabet, or its own UTF-8 when any character is outside the alphabet (added tokens).
std::string byte_level_bytes(std::string_view token) {
  const tok::ByteAlphabet& abc = tok::byte_alphabet();
  std::string out;
  size_t i = 0;
  while (i < token.size()) {
    const uint32_t cp = tok::utf8_next(token, i);
    if (cp >= abc.cp_to_byte.size() || abc.cp_to_byte[cp] < 0) return std::string(token);
    out += static_cast<char>(abc.cp_to_byte[cp]);
  }
  return out;
}

// A special-token entry of tokenizer_config.json: "text" or {"content": "text", ...}.
std::optional<std::string> config_token(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  DSV_FAIL("tokenizer_config.json: {}: expected a string or {{\"content\": ...}}, found {}", key, it->dump());
}

void load_config(Tokenizer::Impl& m, const json& cfg, const Tokenizer& tk) {
  // Named special tokens become template variables (transformers passes special_tokens_map).
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    if (auto t = config_token(cfg, key)) m.template_tokens[key] = *t;
  }
  auto id_of = [&](const char* key) -> std::optional<int32_t> {
    auto t = config_token(cfg, key);
    if (!t) return std::nullopt;
    auto id = tk.token_to_id(*t);
    DSV_CHECK(id, "tokenizer_config.json: {} '{}' is not in the vocabulary of tokenizer.json", key, *t);
    return id;
  };
  m.bos = id_of("bos_token");
  m.eos = id_of("eos_token");
  // add_bos_token / add_eos_token replace the post-processor with "[BOS] $A [EOS]", as
  // transformers' LlamaTokenizerFast does (transformers 5 only when they are passed explicitly).
  const bool has_bos_flag = cfg.contains("add_bos_token"), has_eos_flag = cfg.contains("add_eos_token");
  if (has_bos_flag || has_eos_flag) {
    const bool add_bos = tok::jbool(cfg, "add_bos_token", "tokenizer_config.json", false);
    const bool add_eos = tok::jbool(cfg, "add_eos_token", "tokenizer_config.json", false);
    DSV_CHECK(!add_bos || m.bos, "tokenizer_config.json: add_bos_token is true but bos_token is not set");
    DSV_CHECK(!add_eos || m.eos, "tokenizer_config.json: add_eos_token is true but eos_token is not set");
    m.post = tok::PostProcessor{};
    if (add_bos) m.post.prefix.push_back(*m.bos);
    if (add_eos) m.post.suffix.push_back(*m.eos);
  }
  auto ct = cfg.find("chat_template");
  if (ct != cfg.end() && !ct->is_null()) {
    if (ct->is_string()) {
      m.chat_template = ct->get<std::string>();
    } else if (ct->is_array()) {
      // Named templates: [{"name": ..., "template": ...}]; the one named "default" is used.
      for (const auto& e : *ct)
        if (e.is_object() && e.value("name", "") == "default") m.chat_template = tok::jstring(e, "template", "chat_template[]");
      DSV_CHECK(!m.chat_template.empty(), "tokenizer_config.json: chat_template: no template named \"default\"");
    } else {
      DSV_FAIL("tokenizer_config.json: chat_template: expected a string or a list, found {}", ct->type_name());
    }
  }
}

}  // namespace

static Tokenizer build(std::string_view tokenizer_json, std::string_view config_json, const std::string& where);

Tokenizer Tokenizer::from_json_text(std::string_view tokenizer_json, std::string_view config_json, const std::string& where) {
  try {
    return build(tokenizer_json, config_json, where);
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong JSON type deep inside a component: still a located, user-facing error.
    DSV_FAIL("{}: unexpected JSON value: {}", where, e.what());
  }
}

static Tokenizer build(std::string_view tokenizer_json, std::string_view config_json, const std::string& where) {
  static std::atomic<uint64_t> instances{0};
  auto impl = std::make_shared<Tokenizer::Impl>();
  Tokenizer::Impl& m = *impl;
  m.instance = ++instances;

  tok::TokenizerJson tj = tok::parse_tokenizer_json(tokenizer_json, where);
  const json& doc = tj.doc;
  for (const char* f : {"truncation", "padding"}) {
    DSV_CHECK(!doc.contains(f) || doc[f].is_null(), "{}: {}: {} is not supported (set it to null)", where, f,
              doc[f].dump());
  }
  m.normalizer = tok::Normalizer::from_json(doc.value("normalizer", json()), where + ": normalizer");
  m.pre_tokenizer = tok::PreTokenizer::from_json(doc.value("pre_tokenizer", json()), where + ": pre_tokenizer");
  m.model = load_model(tj, where);
  m.added.build(load_added(doc, where), m.normalizer);
  m.post = tok::PostProcessor::from_json(doc.value("post_processor", json()), where + ": post_processor");
  m.byte_level_decoder = load_decoder(doc, where);

  Tokenizer tk = Tokenizer::wrap(impl);
  const int32_t n = tk.vocab_size();
  if (m.byte_level_decoder) {
    m.decoded.resize(static_cast<size_t>(n));
    for (int32_t id = 0; id < n; ++id)
      if (const auto t = m.model.id_to_token(id)) m.decoded[id] = byte_level_bytes(*t);
  }
  for (const tok::AddedToken& t : m.added.tokens())
    m.added_text.push_back(t.normalized && !m.normalizer.identity() ? m.normalizer.apply(t.content) : t.content);
  for (int32_t id : m.post.prefix) DSV_CHECK(id >= 0 && id < n, "{}: post_processor: id {} is outside the vocabulary", where, id);
  for (int32_t id : m.post.suffix) DSV_CHECK(id >= 0 && id < n, "{}: post_processor: id {} is outside the vocabulary", where, id);

  if (!config_json.empty()) {
    json cfg;
    try {
      cfg = json::parse(config_json);
    } catch (const json::parse_error& e) {
      DSV_FAIL("tokenizer_config.json: invalid JSON: {}", e.what());
    }
    DSV_CHECK(cfg.is_object(), "tokenizer_config.json: expected a JSON object, found {}", cfg.type_name());
    load_config(m, cfg, tk);
  }
  return tk;
}

Tokenizer Tokenizer::load(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path d(dir);
  DSV_CHECK(fs::is_directory(d), "tokenizer directory '{}' does not exist (expected a folder holding tokenizer.json)", dir);
  const fs::path tj = d / "tokenizer.json";
  DSV_CHECK(fs::exists(tj), "'{}' has no tokenizer.json (only tokenizer.json-based byte-level BPE tokenizers are supported)",
            dir);
  const fs::path cfg = d / "tokenizer_config.json";
  Tokenizer tk = from_json_text(read_file(tj), fs::exists(cfg) ? read_file(cfg) : std::string(), tj.string());
  const fs::path jinja = d / "chat_template.jinja";
  if (fs::exists(jinja)) std::const_pointer_cast<Impl>(tk.impl_)->chat_template = read_file(jinja);
  return tk;
}

}  // namespace dsv
