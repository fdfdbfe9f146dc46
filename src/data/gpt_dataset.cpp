#include "data/gpt_dataset.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "ops/counter_rng.h"
#include "train/token_data.h"

namespace dsv::data {

namespace {

const char* split_name(train::Split s) { return s == train::Split::Train ? "train" : "valid"; }

// Python's round() for the values split shares produce: round half to even (the default FP mode).
int64_t round_half_even(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

}  // namespace

std::array<double, 3> parse_split(const std::string& split) {
  std::array<double, 3> x{0, 0, 0};
  size_t count = 0, pos = 0;
  auto bad = [&](const std::string& why) {
    DSV_FAIL("data.split \"{}\": {} (expected 1 to 3 comma-separated non-negative shares, e.g. \"98,2\")", split, why);
  };
  while (true) {
    const size_t end = std::min(split.find(',', pos), split.size());
    std::string item = split.substr(pos, end - pos);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (count == 3) bad("more than 3 shares");
    char* stop = nullptr;
    const double v = item.empty() ? -1 : std::strtod(item.c_str(), &stop);
    if (item.empty() || stop != item.c_str() + item.size() || !(v >= 0) || !std::isfinite(v))
      bad(fmt::format("\"{}\" is not a non-negative number", item));
    x[count++] = v;
    if (end == split.size()) break;
    pos = end + 1;
  }
  const double sum = x[0] + x[1] + x[2];
  if (!(sum > 0)) bad("the shares sum to 0");
  return {x[0] / sum, x[1] / sum, x[2] / sum};
}

std::pair<int64_t, int64_t> split_document_range(const std::string& split, train::Split which, int64_t num_documents) {
  const auto s = parse_split(split);
  const double c1 = s[0], c2 = s[0] + s[1];
  const auto n = static_cast<double>(num_documents);
  if (which == train::Split::Train) return {0, round_half_even(c1 * n)};
  return {round_half_even(c1 * n), round_half_even(c2 * n)};
}

GptDataset::GptDataset(const std::vector<std::string>& prefixes, const std::vector<double>& weights,
                       const std::string& split, train::Split which, int64_t seq_len, bool shuffle, uint64_t seed,
                       int64_t vocab_size)
    : split_(split), which_(which), seq_len_(seq_len), shuffle_(shuffle), seed_(seed) {
  DSV_CHECK(!prefixes.empty(), "data.paths: expected at least one dataset prefix (PREFIX of PREFIX.bin/.idx)");
  DSV_CHECK(seq_len >= 1, "train.seq_len: expected >= 1, found {}", seq_len);
  DSV_CHECK(weights.empty() || weights.size() == prefixes.size(),
            "data.weights: {} weights for {} data.paths (expected one per path, or none for equal weights)",
            weights.size(), prefixes.size());
  double weight_sum = 0;
  for (size_t d = 0; d < prefixes.size(); ++d) {
    const double w = weights.empty() ? 1.0 : weights[d];
    DSV_CHECK(w > 0 && std::isfinite(w), "data.weights[{}] ({}): expected a positive weight, found {}", d,
              prefixes[d], w);
    weight_sum += w;
  }
  parse_split(split);  // its errors before any file is opened

  sets_.resize(prefixes.size());
  for (size_t d = 0; d < prefixes.size(); ++d) {
    Set& s = sets_[d];
    s.data = std::make_unique<IndexedDataset>(prefixes[d], vocab_size);
    s.weight = (weights.empty() ? 1.0 : weights[d]) / weight_sum;
    const int64_t docs = s.data->num_documents();
    std::tie(s.doc_begin, s.doc_end) = split_document_range(split, which, docs);
    s.token_begin = s.data->document_begin(s.doc_begin);
    s.tokens = s.data->document_begin(s.doc_end) - s.token_begin;
    DSV_CHECK(s.tokens >= seq_len + 1,
              "{}: the {} split (documents [{}, {}) of {}, data.split \"{}\") has {} tokens, fewer than one sample "
              "of train.seq_len {} + 1 tokens",
              s.data->bin_path(), split_name(which), s.doc_begin, s.doc_end, docs, split, s.tokens, seq_len);
    s.samples = (s.tokens - 1) / seq_len;
    total_samples_ += s.samples;
  }
  counts_.assign(sets_.size(), 0);
  snapshots_.push_back(counts_);
  window_.resize(static_cast<size_t>(seq_len + 1));
}

int64_t GptDataset::blend_choice(int64_t position, const std::vector<int64_t>& counts) const {
  const double x = std::max(static_cast<double>(position), 1.0);
  int64_t best = 0;
  double best_error = sets_[0].weight * x - static_cast<double>(counts[0]);
  for (size_t d = 1; d < sets_.size(); ++d) {
    const double error = sets_[d].weight * x - static_cast<double>(counts[d]);
    if (error > best_error) {
      best_error = error;
      best = static_cast<int64_t>(d);
    }
  }
  return best;
}

const std::vector<int64_t>& GptDataset::counts_before(int64_t position) {
  if (position < cursor_) {  // going back (a resumed or repeated read): restart at the last snapshot
    const auto m = static_cast<size_t>(position / kSnapshotEvery);
    cursor_ = static_cast<int64_t>(m) * kSnapshotEvery;
    counts_ = snapshots_[m];
  }
  while (cursor_ < position) {
    ++counts_[static_cast<size_t>(blend_choice(cursor_, counts_))];
    ++cursor_;
    if (cursor_ % kSnapshotEvery == 0 && static_cast<size_t>(cursor_ / kSnapshotEvery) == snapshots_.size())
      snapshots_.push_back(counts_);
  }
  return counts_;
}

GptDataset::Pick GptDataset::pick(int64_t position) {
  DSV_CHECK(position >= 0, "sample position {} is negative", position);
  int64_t d = 0, k = position;
  if (sets_.size() > 1) {
    const auto& counts = counts_before(position);
    d = blend_choice(position, counts);
    k = counts[static_cast<size_t>(d)];
  }
  Set& s = sets_[static_cast<size_t>(d)];
  const int64_t i = k % s.samples;
  if (!shuffle_) return {d, i};
  const int64_t epoch = k / s.samples;
  if (epoch != s.perm_epoch) {
    s.perm = train::TokenData::epoch_permutation(seed_ ^ ops::splitmix64(static_cast<uint64_t>(d)), epoch, s.samples);
    s.perm_epoch = epoch;
  }
  return {d, s.perm[static_cast<size_t>(i)]};
}

void GptDataset::sample(int64_t position, int32_t* inputs, int32_t* targets) {
  const Pick p = pick(position);
  const Set& s = sets_[static_cast<size_t>(p.dataset)];
  s.data->read_tokens(s.token_begin + p.sample * seq_len_, seq_len_ + 1, window_.data());
  const auto n = static_cast<size_t>(seq_len_);
  std::memcpy(inputs, window_.data(), n * sizeof(int32_t));
  std::memcpy(targets, window_.data() + 1, n * sizeof(int32_t));
}

std::string GptDataset::describe() const {
  std::string out = fmt::format("indexed datasets, {} split of data.split \"{}\", seq_len {}, {}: ", split_name(which_),
                                split_, seq_len_,
                                shuffle_ ? fmt::format("shuffled (seed {})", seed_) : std::string("in file order"));
  for (size_t d = 0; d < sets_.size(); ++d) {
    const Set& s = sets_[d];
    out += fmt::format("{}{} ({}, weight {:.4g}): documents [{}, {}) of {}, {} tokens, {} samples", d ? "; " : "",
                       s.data->prefix(), dtype_name(s.data->dtype()), s.weight, s.doc_begin, s.doc_end,
                       s.data->num_documents(), s.tokens, s.samples);
  }
  return out + fmt::format("; {} samples in all", total_samples_);
}

}  // namespace dsv::data
