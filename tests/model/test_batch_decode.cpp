// Batched decode (BatchDecoder) on the CPU, the spec of the CUDA graph path: B sequences of different
// lengths decoded together give each sequence the logits it gets when decoded alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "model/model.h"
#include "ops/ops.h"
#include "fixture_util.h"

namespace dsv {
namespace {

using test::fixture_names;
using test::open_fixture;

// Prompts of different lengths: slices of the fixture's ids, so every sequence is a real text.
std::vector<std::vector<int32_t>> prompts_of(const std::vector<int32_t>& ids) {
  const size_t n = ids.size();
  return {std::vector<int32_t>(ids.begin(), ids.begin() + static_cast<long>(std::min<size_t>(n, 2))),
          std::vector<int32_t>(ids.begin(), ids.end()),
          std::vector<int32_t>(ids.begin() + 1, ids.begin() + static_cast<long>(std::max<size_t>(2, n / 2)))};
}

// Decodes `steps` greedy tokens for each prompt: alone (forward, one token at a time) and together
// (BatchDecoder); returns the largest per-sequence relative difference of the logits.
double batched_vs_alone(const Model& m, const std::vector<std::vector<int32_t>>& prompts, int64_t steps) {
  const int64_t B = static_cast<int64_t>(prompts.size()), V = m.config.vocab_size;
  int64_t capacity = 0;
  for (const auto& p : prompts) capacity = std::max(capacity, static_cast<int64_t>(p.size()) + steps);
  KvCache batch = make_kv_cache(m, capacity, B);
  std::vector<KvCache> alone;
  std::vector<int32_t> next(static_cast<size_t>(B));
  std::vector<float> logits(static_cast<size_t>(V));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t P = static_cast<int64_t>(prompts[b].size());
    alone.push_back(make_kv_cache(m, capacity));
    forward(m, prompts[b].data(), P, alone.back(), {.all_logits = false, .logits = logits.data()});
    forward(m, prompts[b].data(), P, batch, {.all_logits = false, .logits = logits.data(), .sequence = b});
    next[b] = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    EXPECT_EQ(batch.lengths[b], P);
  }
  BatchDecoder decoder(m, batch);
  std::vector<float> together(static_cast<size_t>(B * V));
  std::vector<int32_t> greedy(static_cast<size_t>(B));
  double worst = 0;
  for (int64_t s = 0; s < steps; ++s) {
    decoder.step(next.data(), together.data(), greedy.data());
    for (int64_t b = 0; b < B; ++b) {
      EXPECT_EQ(greedy[b], std::max_element(together.begin() + b * V, together.begin() + (b + 1) * V) -
                               (together.begin() + b * V));
      forward(m, &next[b], 1, alone[b], {.all_logits = false, .logits = logits.data()});
      const std::vector<float> one(together.begin() + b * V, together.begin() + (b + 1) * V);
      worst = std::max(worst, test::max_rel_error(one.data(), logits));
      next[b] = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      EXPECT_EQ(batch.lengths[b], alone[b].lengths[0]);
    }
  }
  return worst;
}

class BatchDecode : public ::testing::TestWithParam<std::string> {};

// Same operations row by row (products in fp32 or with bf16 weights, absorbed attention over each
// sequence's own rows); only the matrix library's blocking for B rows instead of one may reorder
// sums: measured <= 2e-6.
TEST_P(BatchDecode, EachSequenceGetsItsAloneLogits) {
  const auto f = open_fixture(GetParam());
  auto m = load_model(f.dir.string());
  const auto prompts = prompts_of(f.ids);
  const double fp32 = batched_vs_alone(*m, prompts, 4);
  RecordProperty("fp32_max_rel_error", std::to_string(fp32));
  EXPECT_LE(fp32, 1e-5) << GetParam();
  store_weights_bf16(*m);
  const double bf16 = batched_vs_alone(*m, prompts, 4);
  RecordProperty("bf16_max_rel_error", std::to_string(bf16));
  EXPECT_LE(bf16, 1e-5) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BatchDecode, ::testing::ValuesIn(fixture_names()),
                         [](const auto& info) { return info.param; });

TEST(BatchDecode, RefusesAFullSequenceAndBadIds) {
  const auto f = open_fixture(fixture_names().front());
  auto m = load_model(f.dir.string());
  KvCache cache = make_kv_cache(*m, 2, 2);
  std::vector<float> logits(static_cast<size_t>(2 * m->config.vocab_size));
  const int32_t ids[2] = {1, 2};
  forward(*m, ids, 2, cache, {.all_logits = false, .logits = logits.data(), .sequence = 1});
  BatchDecoder decoder(*m, cache);
  try {
    decoder.step(ids, logits.data());
    FAIL() << "a full sequence was decoded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sequence 1 holds 2 tokens"), std::string::npos) << e.what();
  }
  const int32_t bad[2] = {1, static_cast<int32_t>(m->config.vocab_size)};
  EXPECT_THROW(decoder.step(bad, logits.data()), Error);
  EXPECT_EQ(cache.lengths[0], 0);  // nothing was appended by the refused steps
}

// Greedy decoding issued ahead (enqueue_greedy: each step fed by the one before it on the device,
// tokens read one step behind) against step() with the tokens coming back each time: the same ops, so
// the same tokens and bit-identical cache rows. The fed rope angles come from the decoder's table of
// every position, so a wrong position or angle would change the logits and soon the tokens and rows.
void expect_pipelined_equals_steps(const Model& m, const std::vector<std::vector<int32_t>>& prompts, int64_t steps) {
  const int64_t B = static_cast<int64_t>(prompts.size()), V = m.config.vocab_size;
  int64_t capacity = 0;
  for (const auto& p : prompts) capacity = std::max(capacity, static_cast<int64_t>(p.size()) + steps);
  KvCache stepped = make_kv_cache(m, capacity, B), piped = make_kv_cache(m, capacity, B);
  std::vector<int32_t> first(static_cast<size_t>(B));
  std::vector<float> logits(static_cast<size_t>(B * V));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t P = static_cast<int64_t>(prompts[b].size());
    forward(m, prompts[b].data(), P, stepped, {.all_logits = false, .logits = logits.data(), .sequence = b});
    forward(m, prompts[b].data(), P, piped, {.all_logits = false, .logits = logits.data(), .sequence = b});
    first[b] = static_cast<int32_t>(std::max_element(logits.begin(), logits.begin() + V) - logits.begin());
  }
  std::vector<std::vector<int32_t>> want, got;
  {
    BatchDecoder decoder(m, stepped);
    std::vector<int32_t> next = first, chosen(static_cast<size_t>(B));
    for (int64_t s = 0; s < steps; ++s) {
      decoder.step(next.data(), logits.data(), chosen.data());
      want.push_back(chosen);
      next = chosen;
    }
  }
  {
    BatchDecoder decoder(m, piped);
    std::vector<int32_t> chosen(static_cast<size_t>(B));
    decoder.enqueue_greedy(first.data());
    for (int64_t s = 1; s <= steps; ++s) {
      if (s < steps) decoder.enqueue_greedy(nullptr);
      EXPECT_EQ(decoder.unread(), s < steps ? 2 : 1);
      decoder.read_greedy(chosen.data());
      got.push_back(chosen);
    }
    EXPECT_EQ(decoder.unread(), 0);
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(piped.lengths, stepped.lengths);
  for (int64_t l = 0; l < stepped.layers; ++l)  // the rows written
    for (int64_t b = 0; b < B; ++b) {
      const int64_t first = b * stepped.capacity * stepped.width;
      const size_t n = static_cast<size_t>(stepped.lengths[b] * stepped.width);
      if (stepped.bf16)
        EXPECT_EQ(0, std::memcmp(stepped.rows_bf16[l].data() + first, piped.rows_bf16[l].data() + first,
                                 n * sizeof(uint16_t))) << l << " " << b;
      else
        EXPECT_EQ(0, std::memcmp(stepped.rows[l].data() + first, piped.rows[l].data() + first, n * sizeof(float)))
            << l << " " << b;
    }
}

TEST_P(BatchDecode, PipelinedGreedyEqualsSteps) {
  const auto f = open_fixture(GetParam());
  auto m = load_model(f.dir.string());
  const auto prompts = prompts_of(f.ids);
  expect_pipelined_equals_steps(*m, prompts, 5);
  store_weights_bf16(*m);
  expect_pipelined_equals_steps(*m, prompts, 5);
}

TEST(BatchDecode, PipelinedStepsAreRefusedOutOfOrder) {
  const auto f = open_fixture(fixture_names().front());
  auto m = load_model(f.dir.string());
  KvCache cache = make_kv_cache(*m, 8, 1);
  std::vector<float> logits(static_cast<size_t>(m->config.vocab_size));
  const int32_t id = 1;
  forward(*m, &id, 1, cache, {.all_logits = false, .logits = logits.data()});
  BatchDecoder decoder(*m, cache);
  int32_t out = -1;
  EXPECT_THROW(decoder.enqueue_greedy(nullptr), Error);  // no earlier step chose a token
  EXPECT_THROW(decoder.read_greedy(&out), Error);        // nothing enqueued
  for (int i = 0; i < BatchDecoder::kMaxUnread; ++i) decoder.enqueue_greedy(i == 0 ? &id : nullptr);
  EXPECT_THROW(decoder.enqueue_greedy(nullptr), Error);  // too many unread
  EXPECT_THROW(decoder.step(&id, logits.data()), Error);  // would replace the inputs the unread steps fed
  EXPECT_EQ(cache.lengths[0], 1 + BatchDecoder::kMaxUnread);
  for (int i = 0; i < BatchDecoder::kMaxUnread; ++i) decoder.read_greedy(&out);
  for (int i = 0; i < 3; ++i) decoder.enqueue_greedy(nullptr);
  try {
    decoder.enqueue_greedy(nullptr);  // the cache's 8 rows are taken
    FAIL() << "a full sequence was decoded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sequence 0 holds 8 tokens"), std::string::npos) << e.what();
  }
  for (int i = 0; i < 3; ++i) decoder.read_greedy(&out);
  EXPECT_EQ(cache.lengths[0], 8);
}

// decode_feed on hand-made values: sequence 1 is full (only its id and its last choice change).
TEST(DecodeFeed, MovesEachSequenceOnByOneRow) {
  const int64_t capacity = 3, half = 2;
  const std::vector<float> cos_table = {10, 11, 20, 21, 30, 31}, sin_table = {-10, -11, -20, -21, -30, -31};
  const int32_t chosen[2] = {7, 8};
  std::vector<int32_t> ids = {0, 0}, write_rows = {0, 5}, kv_lengths = {1, 3}, history(2 * capacity, -1);
  std::vector<float> cos(4, 0), sin(4, 0);
  ops::decode_feed({}, {.chosen = chosen, .ids = ids.data(), .write_rows = write_rows.data(),
                        .kv_lengths = kv_lengths.data(), .cos = cos.data(), .sin = sin.data(),
                        .cos_table = cos_table.data(), .sin_table = sin_table.data(), .history = history.data(),
                        .rows = 2, .capacity = capacity, .half = half});
  EXPECT_EQ(ids, (std::vector<int32_t>{7, 8}));
  EXPECT_EQ(write_rows, (std::vector<int32_t>{1, 5}));
  EXPECT_EQ(kv_lengths, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(cos, (std::vector<float>{20, 21, 0, 0}));
  EXPECT_EQ(sin, (std::vector<float>{-20, -21, 0, 0}));
  EXPECT_EQ(history, (std::vector<int32_t>{7, -1, -1, -1, -1, 8}));
}

// The attention op's batched form against one call per problem.
TEST(BatchedAttention, EqualsOneCallPerProblem) {
  const int64_t B = 3, S = 9, H = 2, Dqk = 5, Dv = 4, ks = 7;
  std::vector<float> q(B * H * Dqk), k(B * S * ks), out(B * H * Dv), one(H * Dv);
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.7f * static_cast<float>(i));
  for (size_t i = 0; i < k.size(); ++i) k[i] = std::cos(0.3f * static_cast<float>(i));
  const int32_t lengths[B] = {1, 9, 4};
  ops::attention({}, {.q = q.data(), .k = k.data(), .v = k.data(), .out = out.data(), .T = 1, .S = S, .H = H,
                      .Dqk = Dqk, .Dv = Dv, .Hkv = 1, .k_stride = ks, .v_stride = ks, .scale = 0.5f, .batch = B,
                      .k_batch_stride = S * ks, .v_batch_stride = S * ks, .kv_lengths = lengths});
  for (int64_t b = 0; b < B; ++b) {
    ops::attention({}, {.q = q.data() + b * H * Dqk, .k = k.data() + b * S * ks, .v = k.data() + b * S * ks,
                        .out = one.data(), .T = 1, .S = lengths[b], .H = H, .Dqk = Dqk, .Dv = Dv, .Hkv = 1,
                        .k_stride = ks, .v_stride = ks, .scale = 0.5f});
    for (int64_t i = 0; i < H * Dv; ++i) EXPECT_EQ(out[b * H * Dv + i], one[i]) << b << " " << i;
  }
}

// On the CPU a branch is the main context itself: the "side" ops run in issue order, and joining
// (again, or from the destructor) does nothing.
TEST(Branch, OnTheCpuIsTheMainContext) {
  const ops::Context ctx;
  ops::Branch branch(ctx);
  EXPECT_EQ(branch.side().backend, ops::Backend::Cpu);
  EXPECT_EQ(branch.side().stream, nullptr);
  std::vector<float> x = {1.0f, 2.0f}, y = {10.0f, 20.0f};
  ops::add(branch.side(), {.x = x.data(), .y = y.data(), .n = 2});
  branch.join();
  branch.join();
  ops::add(ctx, {.x = y.data(), .y = x.data(), .n = 2});
  EXPECT_EQ(x, (std::vector<float>{12.0f, 24.0f}));
}

TEST(ArgmaxRows, FirstLargestIgnoringNaN) {
  const float nan = std::nanf("");
  const std::vector<float> x = {1, 3, 3, -1,  nan, 2, nan, 0,  nan, nan, nan, nan,  -5, -4, -4, -9};
  std::vector<int32_t> out(4, -7);
  ops::argmax_rows({}, {.x = x.data(), .out = out.data(), .rows = 4, .n = 4});
  EXPECT_EQ(out, (std::vector<int32_t>{1, 1, 0, 1}));
}

TEST(StoreRows, WritesRowsInFp32AndBf16) {
  const std::vector<float> x = {1.0f, 2.0f, 3.0f, 1.00390625f, -5.0f, 6.5f};
  const int32_t rows[2] = {3, 0};
  std::vector<float> y(4 * 4, 9.0f);
  ops::store_rows({}, {.rows = rows, .x = x.data(), .y = y.data(), .n = 2, .D = 3, .y_stride = 4});
  EXPECT_EQ(y[12], 1.0f);
  EXPECT_EQ(y[14], 3.0f);
  EXPECT_EQ(y[15], 9.0f);  // past D: untouched
  EXPECT_EQ(y[0], 1.00390625f);
  EXPECT_EQ(y[4], 9.0f);  // rows not named: untouched
  std::vector<uint16_t> h(4 * 3, 0);
  ops::store_rows({}, {.rows = rows, .x = x.data(), .y_bf16 = h.data(), .n = 2, .D = 3});
  EXPECT_EQ(h[9], 0x3f80);  // 1.0
  EXPECT_EQ(h[0], 0x3f80);  // 1.00390625 is a tie between 1 and 1 + 2^-7: rounds to even (1.0)
  EXPECT_THROW(ops::store_rows({}, {.rows = rows, .x = x.data(), .n = 2, .D = 3}), Error);
}

// A decode step's latent rows in one op: by hand on two rows, then against rmsnorm, rope and
// store_rows in turn on random rows (the same bits), both rope layouts, fp32 in place and bf16.
TEST(StoreLatentRows, NormalizesRopesAndStores) {
  const std::vector<float> x = {3, 4, 1, 2, /**/ 0, 5, -2, 3};  // rows [C = 2 | R = 2]
  const std::vector<float> weight = {1, 2}, cos = {0, 1}, sin = {1, 0};
  const int32_t rows[2] = {2, 0};
  std::vector<float> y(3 * 5, 9.0f);
  ops::store_latent_rows({}, {.x = x.data(), .weight = weight.data(), .cos = cos.data(), .sin = sin.data(),
                              .rows = rows, .y = y.data(), .n = 2, .C = 2, .R = 2, .x_stride = 4, .y_stride = 5,
                              .eps = 0.0f});
  const float inv0 = 1.0f / std::sqrt(12.5f);
  EXPECT_FLOAT_EQ(y[10], 3 * inv0);
  EXPECT_FLOAT_EQ(y[11], 2 * 4 * inv0);
  EXPECT_FLOAT_EQ(y[12], -2.0f);  // (1, 2) turned by 90 degrees
  EXPECT_FLOAT_EQ(y[13], 1.0f);
  EXPECT_EQ(y[14], 9.0f);  // past C + R: untouched
  EXPECT_FLOAT_EQ(y[1], 2 * 5 / std::sqrt(12.5f));
  EXPECT_FLOAT_EQ(y[2], -2.0f);  // angle 0: as it was
  EXPECT_EQ(y[5], 9.0f);  // row 1 not named
  EXPECT_FLOAT_EQ(x[0], 3.0f);  // x left as is

  const int64_t n = 3, C = 24, R = 8, width = C + R, xs = 40;
  std::vector<float> rand_x(n * xs), w(C), c(n * R / 2), sn(n * R / 2);
  uint64_t state = 7;
  const auto next = [&] { state = state * 6364136223846793005ull + 1442695040888963407ull; return static_cast<float>(static_cast<int64_t>(state >> 33) % 2001 - 1000) / 250.0f; };
  for (auto* v : {&rand_x, &w, &c, &sn}) for (float& e : *v) e = next();
  for (RopeLayout layout : {RopeLayout::Interleaved, RopeLayout::HalfSplit}) {
    // In steps, as mla() does with a tap: the rows of a 6-row cache from row 2 on.
    std::vector<float> steps = rand_x, want(6 * width, 0.0f);
    ops::rmsnorm({}, {.x = steps.data(), .weight = w.data(), .y = steps.data(), .rows = n, .dim = C, .x_stride = xs,
                      .y_stride = xs, .eps = 1e-6f});
    ops::rope({}, {.x = steps.data(), .cos = c.data(), .sin = sn.data(), .tokens = n, .heads = 1, .rope_dim = R,
                   .token_stride = xs, .head_stride = xs, .offset = C, .layout = layout});
    std::vector<float> compact(n * width);  // store_rows reads rows of exactly D values
    for (int64_t r = 0; r < n; ++r) std::memcpy(&compact[r * width], &steps[r * xs], width * sizeof(float));
    const int32_t dest[3] = {2, 3, 4};
    ops::store_rows({}, {.rows = dest, .x = compact.data(), .y = want.data(), .n = n, .D = width});
    // fp32 rows, consecutive from `first`
    std::vector<float> got(6 * width, 0.0f);
    const ops::LatentRowsParams p{.x = rand_x.data(), .weight = w.data(), .cos = c.data(), .sin = sn.data(),
                                  .y = got.data(), .n = n, .C = C, .R = R, .x_stride = xs, .y_stride = width,
                                  .first = 2, .eps = 1e-6f, .layout = layout};
    ops::store_latent_rows({}, p);
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
    // bf16 rows: each value the rounded fp32 one
    std::vector<uint16_t> got16(6 * width, 0);
    ops::LatentRowsParams p16 = p;
    p16.y = nullptr, p16.y_bf16 = got16.data();
    ops::store_latent_rows({}, p16);
    for (int64_t i = 0; i < 6 * width; ++i) ASSERT_EQ(got16[i], i < 2 * width || i >= 5 * width ? 0 : f32_to_bf16(want[i])) << i;
  }
  EXPECT_THROW(ops::store_latent_rows({}, {.x = x.data(), .weight = weight.data(), .cos = cos.data(), .sin = sin.data(),
                                           .n = 2, .C = 2, .R = 2, .x_stride = 4, .y_stride = 5}),
               Error);  // no destination
  EXPECT_THROW(ops::store_latent_rows({}, {.x = x.data(), .weight = weight.data(), .cos = cos.data(), .sin = sin.data(),
                                           .y = y.data(), .n = 2, .C = 2, .R = 3, .x_stride = 5, .y_stride = 5}),
               Error);  // odd rope width
}

}  // namespace
}  // namespace dsv
