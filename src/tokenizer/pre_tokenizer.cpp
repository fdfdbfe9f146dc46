#include "tokenizer/pre_tokenizer.h"

#include "tokenizer/byte_level.h"
#include "tokenizer/json_util.h"

namespace dsv::tok {

PreTokenizer PreTokenizer::from_json(const nlohmann::json& j, const std::string& where) {
  PreTokenizer p;
  if (!j.is_null()) p.add(j, where);
  return p;
}

void PreTokenizer::add(const nlohmann::json& j, const std::string& where) {
  const std::string type = jstring(j, "type", where);
  // Pieces leave ByteLevel as byte-mapped strings; a later step would see a different alphabet.
  DSV_CHECK(!byte_level_, "{}: a \"{}\" step after ByteLevel is not supported (ByteLevel must be last)", where, type);
  if (type == "Sequence") {
    const auto& list = jfield(j, "pretokenizers", where);
    DSV_CHECK(list.is_array(), "{}.pretokenizers: expected an array", where);
    for (size_t i = 0; i < list.size(); ++i) add(list[i], fmt::format("{}.pretokenizers[{}]", where, i));
  } else if (type == "Split") {
    const auto& pat = jfield(j, "pattern", where);
    std::string regex;
    if (pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string()) {
      regex = pat["Regex"].get<std::string>();
    } else if (pat.is_object() && pat.contains("String") && pat["String"].is_string()) {
      regex = regex_escape(pat["String"].get<std::string>());
    } else {
      DSV_FAIL("{}.pattern: expected {{\"Regex\": \"...\"}} or {{\"String\": \"...\"}}, found {}", where, pat.dump());
    }
    const std::string b = jstring(j, "behavior", where);
    Behavior behavior;
    if (b == "Isolated") behavior = Behavior::kIsolated;
    else if (b == "Removed") behavior = Behavior::kRemoved;
    else if (b == "MergedWithPrevious") behavior = Behavior::kMergedWithPrevious;
    else if (b == "MergedWithNext") behavior = Behavior::kMergedWithNext;
    else if (b == "Contiguous") behavior = Behavior::kContiguous;
    else DSV_FAIL("{}.behavior: unknown split behavior \"{}\" (expected Isolated, Removed, MergedWithPrevious, "
                  "MergedWithNext or Contiguous)", where, b);
    splits_.push_back({Regex(regex, where + ".pattern"), behavior, jbool(j, "invert", where, false)});
  } else if (type == "ByteLevel") {
    byte_level_ = true;
    add_prefix_space_ = jbool(j, "add_prefix_space", where, true);
    if (jbool(j, "use_regex", where, true)) byte_level_regex_.emplace_back(kByteLevelRegex, where + ".use_regex");
  } else {
    DSV_FAIL("{}.type: pre-tokenizer \"{}\" is not supported (supported: Sequence, Split, ByteLevel)", where, type);
  }
}

void PreTokenizer::run(std::string_view text, FunctionRef<void(std::string_view)> emit) const {
  run_stage(0, text, emit);
}

void PreTokenizer::run_stage(size_t stage, std::string_view text, FunctionRef<void(std::string_view)> emit) const {
  if (text.empty()) return;  // tokenizers drops empty pieces after every split
  if (stage == splits_.size()) {
    if (byte_level_) run_byte_level(text, emit);
    else emit(text);
    return;
  }
  const Split& sp = splits_[stage];
  auto next = [&](size_t a, size_t b) { run_stage(stage + 1, text.substr(a, b - a), emit); };

  // The pattern's matches and the gaps between them, as (start, end, is_match) segments, as
  // tokenizers' Pattern::find_matches produces them (invert swaps the flag).
  struct Seg {
    size_t a, b;
    bool match;
  };
  thread_local std::vector<std::vector<Seg>> pool;
  if (pool.size() <= stage) pool.resize(stage + 1);
  std::vector<Seg> segs = std::move(pool[stage]);  // recursion may use deeper stages' buffers
  segs.clear();
  size_t prev = 0;
  sp.re.find_all(text, [&](size_t a, size_t b) {
    if (prev != a) segs.push_back({prev, a, sp.invert});
    segs.push_back({a, b, !sp.invert});
    prev = b;
  });
  if (prev != text.size()) segs.push_back({prev, text.size(), sp.invert});

  switch (sp.behavior) {
    case Behavior::kIsolated:
      for (const Seg& s : segs) next(s.a, s.b);
      break;
    case Behavior::kRemoved:
      for (const Seg& s : segs)
        if (!s.match) next(s.a, s.b);
      break;
    case Behavior::kContiguous:
    case Behavior::kMergedWithPrevious: {
      // Fold segments into the previous output piece (Contiguous: runs of equal flags;
      // MergedWithPrevious: a match joins the non-match before it).
      const bool contiguous = sp.behavior == Behavior::kContiguous;
      size_t out_a = 0, out_b = 0;
      bool have = false, prev_match = false;
      for (const Seg& s : segs) {
        const bool merge = contiguous ? (s.match == prev_match) : (s.match && !prev_match);
        if (merge && have) {
          out_b = s.b;
        } else {
          if (have) next(out_a, out_b);
          out_a = s.a, out_b = s.b, have = true;
        }
        prev_match = s.match;
      }
      if (have) next(out_a, out_b);
      break;
    }
    case Behavior::kMergedWithNext: {
      // Mirror image of MergedWithPrevious: walk from the end, a match joins the piece after it.
      std::vector<std::pair<size_t, size_t>> out;
      bool prev_match = false;
      for (size_t k = segs.size(); k-- > 0;) {
        const Seg& s = segs[k];
        if (s.match && !prev_match && !out.empty()) out.back().first = s.a;
        else out.push_back({s.a, s.b});
        prev_match = s.match;
      }
      for (size_t k = out.size(); k-- > 0;) next(out[k].first, out[k].second);
      break;
    }
  }
  pool[stage] = std::move(segs);
}

void PreTokenizer::run_byte_level(std::string_view text, FunctionRef<void(std::string_view)> emit) const {
  std::string prefixed;
  if (add_prefix_space_ && text.front() != ' ') {
    prefixed.reserve(text.size() + 1);
    prefixed += ' ';
    prefixed += text;
    text = prefixed;
  }
  if (byte_level_regex_.empty()) {
    emit(text);
    return;
  }
  size_t prev = 0;
  byte_level_regex_[0].find_all(text, [&](size_t a, size_t b) {
    if (prev != a) emit(text.substr(prev, a - prev));
    if (a != b) emit(text.substr(a, b - a));
    prev = b;
  });
  if (prev != text.size()) emit(text.substr(prev));
}

}  // namespace dsv::tok
