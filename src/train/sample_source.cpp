// make_sample_source: the recipe's data keys -> a SampleSource per split. The flat-token source lives
// here; Megatron indexed datasets and chat SFT data are in src/data/.
#include "train/sample_source.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "data/gpt_dataset.h"
#include "data/sft_dataset.h"
#include "train/token_data.h"

namespace dsv::train {
namespace {

// data.tokens: window j = tokens [j * S, j * S + S] (docs/TRAINING.md, Samples), restricted to the
// split's window range; with shuffle a per-epoch permutation of that range. Over the whole file
// (split "100,0") this is exactly TokenData's order.
class TokenWindows final : public SampleSource {
 public:
  // The train split keeps model.seed (over the whole file: TokenData's own order); the valid split
  // draws its own permutation.
  TokenWindows(const TrainConfig& c, int64_t vocab, SplitShares shares, Split split)
      : data_(c.data_tokens, c.seq_len, 1, 1, c.shuffle, split == Split::Train ? c.seed : c.seed ^ 0x76616c6964ull,
              vocab),
        shuffle_(c.shuffle), split_(split) {
    std::tie(first_, end_) = split_range(data_.num_windows(), shares, split);
    DSV_CHECK(end_ > first_, "{}: the {} split has no window of {} tokens (file: {} tokens, {} windows; data.split {})",
              c.data_tokens, split == Split::Train ? "train" : "valid", c.seq_len + 1, data_.num_tokens(),
              data_.num_windows(), c.data_split);
  }
  int64_t num_samples() const override { return end_ - first_; }
  void sample(int64_t position, int32_t* inputs, int32_t* targets) override {
    const int32_t* w = data_.window(data_.window_in(position, first_, num_samples()));
    const int64_t S = data_.seq_len();
    std::memcpy(inputs, w, static_cast<size_t>(S) * sizeof(int32_t));
    std::memcpy(targets, w + 1, static_cast<size_t>(S) * sizeof(int32_t));
  }
  std::string describe() const override {
    return fmt::format("{}: {} tokens, {} windows of {} tokens ({} in the {} split), {}", data_.path(),
                       data_.num_tokens(), data_.num_windows(), data_.seq_len() + 1, num_samples(),
                       split_ == Split::Train ? "train" : "valid", shuffle_ ? "shuffled per epoch" : "in file order");
  }

 private:
  TokenData data_;
  bool shuffle_;
  Split split_;
  int64_t first_ = 0, end_ = 0;
};

}  // namespace

SplitShares parse_split(const std::string& text) {
  const size_t comma = text.find(',');
  auto number = [&](const std::string& part) {
    char* end = nullptr;
    const double v = part.empty() ? -1.0 : std::strtod(part.c_str(), &end);
    DSV_CHECK(!part.empty() && end == part.c_str() + part.size() && v >= 0 && std::isfinite(v),
              "data.split \"{}\": expected \"train,valid\" with two numbers >= 0 (e.g. \"98,2\"), found \"{}\"", text,
              part);
    return v;
  };
  DSV_CHECK(comma != std::string::npos,
            "data.split \"{}\": expected \"train,valid\" with two numbers >= 0 (e.g. \"98,2\"), found no comma", text);
  SplitShares s{number(text.substr(0, comma)), number(text.substr(comma + 1))};
  DSV_CHECK(s.train + s.valid > 0, "data.split \"{}\": expected shares with a positive sum, found both 0", text);
  return s;
}

std::pair<int64_t, int64_t> split_range(int64_t n, SplitShares shares, Split split) {
  const auto cut = static_cast<int64_t>(std::floor(static_cast<double>(n) * shares.train / (shares.train + shares.valid)));
  return split == Split::Train ? std::pair<int64_t, int64_t>{0, cut} : std::pair<int64_t, int64_t>{cut, n};
}

std::unique_ptr<SampleSource> make_sample_source(const TrainConfig& c, const ModelConfig& m, Split split) {
  const SplitShares shares = parse_split(c.data_split);
  if (split == Split::Valid && shares.valid == 0) return nullptr;
  if (!c.data_tokens.empty()) return std::make_unique<TokenWindows>(c, m.vocab_size, shares, split);
  if (!c.data_paths.empty())
    return std::make_unique<data::GptDataset>(c.data_paths, c.data_weights, c.data_split, split, c.seq_len, c.shuffle,
                                              c.seed, m.vocab_size);
  return std::make_unique<data::SftDataset>(c.sft_jsonl, c.data_tokenizer, c.data_split, split, c.seq_len, c.shuffle,
                                            c.seed, m.vocab_size);
}

}  // namespace dsv::train
