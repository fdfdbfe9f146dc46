// SftDataset: chat supervised fine-tuning samples from a JSONL file of conversations (docs/SFT.md).
//
// Input: one conversation per line, {"messages": [{"role": ..., "content": "..."}, ...]} (the key
// "conversations" is accepted too); blank lines are skipped. Every message is an object with a string
// "role" and a string "content"; other keys are passed to the chat template unchanged. Which roles
// exist is the template's business: a role it rejects (raise_exception) or ignores (renders nothing
// for non-empty content) is an error naming the line.
//
// Masks. Loss is on assistant tokens only. For a conversation m[0..n) rendered by the tokenizer's
// chat template T(messages, add_generation_prompt):
//   - before assistant message i:  P_i = T(m[0..i), true)    the prompt, ending in the generation
//                                                           prompt ("<｜Assistant｜>" for DeepSeek-V3)
//   - after every message i:       Q_i = T(m[0..i], false)
// The strings, in the order Q_0, (P_1,) Q_1, ..., Q_{n-1} (P_i just before Q_i for assistant i), must
// each be a string prefix of the next; otherwise the template is not prefix-stable (e.g. DeepSeek
// moves every system message to the front, so a system message after the first turn) and the line
// is an error. Assistant message i's learned span is the bytes [|P_i|, |Q_i|) of the full text
// Q_{n-1}: its content plus whatever the template writes after it (for DeepSeek-V3 the end-of-turn
// "<｜end▁of▁sentence｜>"); the generation prompt and every other message are not learned.
//
// Tokens. The tokenizer gives no character offsets, so the full text is cut at the span boundaries
// into segments, each segment is encoded on its own (add_special_tokens=false: the template writes
// BOS), and the token lists are concatenated; a token is learned when its segment is. Several SFT
// frameworks do the same. When every boundary sits next to a special/added token (DeepSeek-V3: after
// "<｜Assistant｜>", after "<｜end▁of▁sentence｜>") this equals encoding the full text in one piece;
// tests/unit/test_sft_dataset.cpp checks that on its conversations, and tests/ref/check_sft_masks.py
// builds the same masks from transformers' character offsets on the full text.
//
// Samples. Conversation c (tokens t[0..L), mask k[0..L)) becomes one sample of S + 1 tokens
// (S = train.seq_len): truncated to its first S + 1 tokens, or padded with the pad id (the
// tokenizer's pad_token, else its eos_token). inputs[j] = t[j] (j < S); targets[j] = t[j + 1] when
// token j + 1 is learned, else -1 (also -1 on padding). A conversation with no learned token among
// t[1..min(L, S + 1)) is dropped. Each count (truncated, dropped) is warned about once, on stderr.
//
// Split and order. data.split "a,b" gives the first floor(N * a / (a + b)) of the file's N
// conversations to Split::Train and the rest to Split::Valid (train::split_range; split before
// dropping, so the split does not depend on seq_len). Position p reads kept sample p mod n in file
// order, or, with shuffle, perm_e[p mod n] with e = p / n and perm_e =
// TokenData::epoch_permutation(seed', e, n), seed' = seed for Train and seed ^ 0x76616c6964 ("valid")
// for Valid, as data.tokens does.
//
// Preprocessing happens once, in the constructor: parse and render on all cores, then encode every
// segment through Tokenizer::encode_batch.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "train/sample_source.h"

namespace dsv::data {

// A rendered conversation cut at the span boundaries: text == concatenation of segments, and
// learned[i] says whether segments[i] is inside an assistant span. Empty segments are left out.
struct ChatSegments {
  std::vector<std::string> segments;
  std::vector<uint8_t> learned;
};

// The segments of one conversation (a JSON array of messages), by the method of the header comment.
// Throws dsv::Error (without a file location; callers add it) for a bad message, a template error, a
// template that is not prefix-stable, or a message the template ignores.
ChatSegments split_conversation(const Tokenizer& tokenizer, const nlohmann::ordered_json& messages);

// Conversations [begin, end) of the file that a split reads.
struct SplitRange {
  int64_t begin = 0, end = 0;
};

class SftDataset final : public train::SampleSource {
 public:
  // jsonl_path: data.sft; tokenizer_dir: data.tokenizer (tokenizer.json, tokenizer_config.json with a
  // chat template); split: data.split ("train,valid" shares); seq_len: train.seq_len (S); shuffle,
  // seed: data.shuffle, model.seed; vocab_size: the model's embedding rows (every id must be below).
  SftDataset(const std::string& jsonl_path, const std::string& tokenizer_dir, const std::string& split,
             train::Split which, int64_t seq_len, bool shuffle, uint64_t seed, int64_t vocab_size);

  int64_t num_samples() const override { return static_cast<int64_t>(lines_.size()); }
  void sample(int64_t position, int32_t* inputs, int32_t* targets) override;
  std::string describe() const override;

  // Which kept sample (0 <= k < num_samples(), file order) position p reads.
  int64_t sample_index_at(int64_t position);
  // Kept sample k: its tokens after truncation (no padding), the learned flag of each, its JSONL line (1-based).
  std::span<const int32_t> tokens(int64_t k) const;
  std::span<const uint8_t> learned(int64_t k) const;
  int64_t line(int64_t k) const { return lines_.at(static_cast<size_t>(k)); }

  int64_t num_conversations() const { return num_conversations_; }  // in this split, before dropping
  int64_t num_truncated() const { return num_truncated_; }          // longer than S + 1 tokens
  int64_t num_dropped() const { return num_dropped_; }              // no learned target left
  int32_t pad_id() const { return pad_id_; }
  const std::vector<std::string>& warnings() const { return warnings_; }  // as printed on stderr

 private:
  std::string path_;
  train::Split which_;
  int64_t seq_len_ = 0;
  bool shuffle_ = false;
  uint64_t seed_ = 0;
  int32_t pad_id_ = 0;
  SplitRange range_;
  int64_t file_conversations_ = 0, num_conversations_ = 0, num_truncated_ = 0, num_dropped_ = 0;
  int64_t num_learned_ = 0;
  std::vector<int32_t> tokens_;    // kept samples' tokens, concatenated
  std::vector<uint8_t> learned_;   // one flag per token of tokens_
  std::vector<int64_t> offsets_;   // sample k is tokens_[offsets_[k], offsets_[k + 1])
  std::vector<int64_t> lines_;     // JSONL line of sample k
  std::vector<std::string> warnings_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> perm_;
};

}  // namespace dsv::data
