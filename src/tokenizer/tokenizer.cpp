// Encode and decode: the pipeline of tokenizers' Tokenizer::encode, streaming each stage's
// pieces into the next without intermediate copies.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <thread>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"
#include "tokenizer/word_cache.h"

namespace dsv {

namespace {

// Words longer than this skip the cache: rare, and they would crowd out the common ones.
constexpr size_t kMaxCachedWord = 256;

tok::WordCache& word_cache(uint64_t instance) {
  thread_local tok::WordCache cache;
  thread_local uint64_t owner = 0;
  if (owner != instance) {
    cache = tok::WordCache();
    owner = instance;
  }
  return cache;
}

}  // namespace

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& m = *impl_;
  std::string repaired;
  if (!tok::utf8_valid(text)) {
    repaired = tok::utf8_lossy(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  if (add_special_tokens) ids.insert(ids.end(), m.post.prefix.begin(), m.post.prefix.end());

  tok::WordCache& cache = word_cache(m.instance);
  const bool byte_level = m.pre_tokenizer.byte_level();
  auto encode_piece = [&](std::string_view piece) {
    if (piece.size() > kMaxCachedWord) {
      m.model.encode_piece(piece, byte_level, ids);
      return;
    }
    const uint64_t h = tok::WordCache::hash(piece);
    if (cache.lookup(piece, h, ids)) return;
    const size_t before = ids.size();
    m.model.encode_piece(piece, byte_level, ids);
    cache.insert(piece, h, ids.data() + before, ids.size() - before);
  };
  auto encode_plain = [&](std::string_view seg) { m.pre_tokenizer.run(seg, encode_piece); };
  auto on_normalized = [&](std::string_view seg, int32_t id) {
    if (id >= 0) ids.push_back(id);
    else encode_plain(seg);
  };
  // Tokens marked normalized=false are found in the raw text; the rest of the text is normalized
  // and searched for the normalized ones; what remains goes through pre-tokenizer and BPE.
  m.added.split(text, false, [&](std::string_view seg, int32_t id) {
    if (id >= 0) {
      ids.push_back(id);
      return;
    }
    if (m.normalizer.identity()) {
      m.added.split(seg, true, on_normalized);
    } else {
      const std::string normalized = m.normalizer.apply(seg);
      m.added.split(normalized, true, on_normalized);
    }
  });

  if (add_special_tokens) ids.insert(ids.end(), m.post.suffix.begin(), m.post.suffix.end());
  return ids;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(std::span<const std::string> texts, bool add_special_tokens,
                                                          int threads) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  size_t n = threads > 0 ? static_cast<size_t>(threads) : std::max(1u, std::thread::hardware_concurrency());
  n = std::min(n, std::max<size_t>(1, texts.size()));
  if (n == 1) {
    for (size_t i = 0; i < texts.size(); ++i) out[i] = encode(texts[i], add_special_tokens);
    return out;
  }
  // Work stealing by index: texts differ wildly in length, fixed chunks would idle threads.
  std::atomic<size_t> next{0};
  std::vector<std::string> errors(n);
  std::vector<std::thread> pool;
  for (size_t t = 0; t < n; ++t) {
    pool.emplace_back([&, t] {
      try {
        for (size_t i; (i = next.fetch_add(1)) < texts.size();) out[i] = encode(texts[i], add_special_tokens);
      } catch (const std::exception& e) {
        errors[t] = e.what();
        next = texts.size();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (const auto& e : errors)
    if (!e.empty()) throw Error(e);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  std::string out;
  if (!m.byte_level_decoder) {
    // No decoder: tokenizers joins the token strings with spaces.
    bool first = true;
    for (int32_t id : ids) {
      const tok::AddedToken* added = m.added.by_id(id);
      if (added && added->special && skip_special_tokens) continue;
      const auto t = m.token_text(id);
      if (!t) continue;
      if (!first) out += ' ';
      out += *t;
      first = false;
    }
    return tok::utf8_lossy(out);
  }
  // As tokenizers (>= 0.20) does: added tokens are written as they are (normalized ones in their
  // normalized form), and each run of model tokens between them goes through the decoder on its
  // own, so a byte sequence cut by an added token becomes U+FFFD on both sides.
  std::string run;
  for (int32_t id : ids) {
    if (const tok::AddedToken* added = m.added.by_id(id)) {
      if (added->special && skip_special_tokens) continue;
      out += tok::utf8_lossy(run);
      run.clear();
      out += m.added_text[m.added_index(id)];
      continue;
    }
    if (!m.model.id_to_token(id)) continue;  // unknown ids are skipped
    run += m.decoded[id];
  }
  out += tok::utf8_lossy(run);
  return out;
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }

int32_t Tokenizer::vocab_size() const {
  int32_t top = impl_->model.max_id();
  for (const auto& t : impl_->added.tokens()) top = std::max(top, t.id);
  return top + 1;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const tok::AddedToken* t = impl_->added.by_content(token)) return t->id;
  return impl_->model.token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  const auto t = impl_->token_text(id);
  if (!t) return std::nullopt;
  return std::string(*t);
}

bool Tokenizer::is_special(int32_t id) const {
  const tok::AddedToken* t = impl_->added.by_id(id);
  return t && t->special;
}

const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }

}  // namespace dsv
