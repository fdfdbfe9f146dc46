// Batched decode on the GPU: the ops it adds (attention over per-sequence key counts, store_rows,
// routed experts grouped by expert) against their CPU twins, and BatchDecoder (eager and as a
// replayed CUDA graph) against the CPU BatchDecoder on the fixtures.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "backends/cuda/cuda_ops.h"
#include "core/dtype.h"
#include "cuda_test_util.h"
#include "model/model.h"
#include "ops/memory.h"
#include "../model/fixture_util.h"

namespace dsv::ops {
namespace {

using namespace test;

class CudaBatch : public CudaTest {};

// Absorbed-MLA shapes: B problems of T queries over each problem's own latent rows, of different
// lengths (one key, exactly a chunk, more than a chunk, the bound), in fp32 and bf16.
TEST_F(CudaBatch, AttentionOverPerSequenceLengthsMatchesCpu) {
  struct Case { int64_t T, S, H, C, R; std::vector<int32_t> lengths; };
  for (const Case& c : {Case{1, 577, 16, 512, 64, {1, 577, 64, 65, 300}}, Case{1, 40, 3, 24, 8, {7, 40}},
                        Case{2, 300, 4, 32, 8, {2, 299, 130}}, Case{1, 20000, 2, 16, 8, {20000, 9000}},
                        // enough blocks for 16-head groups, two groups per problem
                        Case{1, 300, 32, 64, 16, {300, 1, 33, 64, 65, 100, 200, 299, 5, 6, 7, 8, 9, 10, 11, 12}}}) {
    const int64_t B = static_cast<int64_t>(c.lengths.size()), W = c.C + c.R;
    SCOPED_TRACE(testing::Message() << "B" << B << " T" << c.T << " S" << c.S << " H" << c.H);
    const auto q = randn(B * c.T * c.H * W, 21, 0.0f, 0.1f);
    const auto rows = randn(B * c.S * W, 22);
    const auto rows16 = to_bf16(rows);
    for (bool bf16 : {false, true}) {
      std::vector<float> want(B * c.T * c.H * c.C);
      AttentionParams p{.q = q.data(), .out = want.data(), .T = c.T, .S = c.S, .H = c.H, .Dqk = W, .Dv = c.C,
                        .Hkv = 1, .k_stride = W, .v_stride = W, .scale = 0.07f, .batch = B,
                        .k_batch_stride = c.S * W, .v_batch_stride = c.S * W, .kv_lengths = c.lengths.data()};
      if (bf16) p.k_bf16 = p.v_bf16 = rows16.data();
      else p.k = p.v = rows.data();
      cpu::attention(p);
      Dev<float> dq(q), dk(rows), dout(nans(want.size()));
      Dev<uint16_t> dk16(rows16);
      Dev<int32_t> dlen(c.lengths);
      p.q = dq.ptr;
      p.out = dout.ptr;
      p.kv_lengths = dlen.ptr;
      if (bf16) p.k_bf16 = p.v_bf16 = dk16.ptr;
      else p.k = p.v = dk.ptr;
      CUDA_OK(cuda::attention(p, 0));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_LE(rel_l2(dout.download(), want), 1e-5) << (bf16 ? "bf16" : "fp32");
    }
  }
}

TEST_F(CudaBatch, StoreRowsMatchesCpuBitForBit) {
  const int64_t n = 37, D = 576, ys = 600, rows_total = 100;
  const auto x = randn(n * D, 31, 0.0f, 10.0f);
  std::vector<int32_t> rows(n);
  for (int64_t i = 0; i < n; ++i) rows[i] = static_cast<int32_t>((i * 13 + 5) % rows_total);
  std::vector<float> want(rows_total * ys, 1.0f);
  std::vector<uint16_t> want16(rows_total * ys, 7);
  cpu::store_rows({.rows = rows.data(), .x = x.data(), .y = want.data(), .n = n, .D = D, .y_stride = ys});
  cpu::store_rows({.rows = rows.data(), .x = x.data(), .y_bf16 = want16.data(), .n = n, .D = D, .y_stride = ys});
  Dev<float> dx(x), dy(std::vector<float>(rows_total * ys, 1.0f));
  Dev<uint16_t> dy16(std::vector<uint16_t>(rows_total * ys, 7));
  Dev<int32_t> drows(rows);
  CUDA_OK(cuda::store_rows({.rows = drows.ptr, .x = dx.ptr, .y = dy.ptr, .n = n, .D = D, .y_stride = ys}, 0));
  CUDA_OK(cuda::store_rows({.rows = drows.ptr, .x = dx.ptr, .y_bf16 = dy16.ptr, .n = n, .D = D, .y_stride = ys}, 0));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_TRUE(same_bits(dy.download(), want));
  EXPECT_EQ(dy16.download(), want16);
}

// The decode step's latent rows in one kernel: the same bits as the CUDA rmsnorm, rope and store_rows
// in turn (what it replaces), and close to the CPU twin (whose sum of squares is in double), for the
// release shape (C 512, R 64), a small one and a long one, both rope layouts, scattered rows and consecutive rows
// in place (an fp32 cache), fp32 and bf16.
TEST_F(CudaBatch, StoreLatentRowsEqualsTheStepsItFuses) {
  struct Case { int64_t n, C, R, xs; RopeLayout layout; };
  for (const Case& c : {Case{7, 512, 64, 600, RopeLayout::Interleaved}, Case{3, 24, 8, 32, RopeLayout::HalfSplit},
                        Case{64, 512, 64, 576, RopeLayout::HalfSplit},
                        Case{2, 2100, 600, 2750, RopeLayout::Interleaved}}) {  // a second pass, pairs > threads
    SCOPED_TRACE(c.C);
    const int64_t width = c.C + c.R, total = c.n + 5;
    const auto x = randn(c.n * c.xs, 51, 0.5f, 3.0f), w = randn(c.C, 52), cs = randn(c.n * c.R / 2, 53),
               sn = randn(c.n * c.R / 2, 54);
    std::vector<int32_t> rows(c.n);
    for (int64_t i = 0; i < c.n; ++i) rows[i] = static_cast<int32_t>((i * 5 + 3) % total);
    if (c.n == 64) std::iota(rows.begin(), rows.end(), 1);
    Dev<float> dw(w), dc(cs), ds(sn);
    Dev<int32_t> drows(rows);
    const float eps = 1e-6f;
    // The steps on the GPU: rmsnorm and rope in place on a copy of x, then store_rows / a cast.
    Dev<float> steps(x), want(std::vector<float>(total * width, 1.0f));
    Dev<uint16_t> want16(std::vector<uint16_t>(total * width, 7));
    CUDA_OK(cuda::rmsnorm({.x = steps.ptr, .weight = dw.ptr, .y = steps.ptr, .rows = c.n, .dim = c.C,
                           .x_stride = c.xs, .y_stride = c.xs, .eps = eps}, 0));
    CUDA_OK(cuda::rope({.x = steps.ptr, .cos = dc.ptr, .sin = ds.ptr, .tokens = c.n, .heads = 1, .rope_dim = c.R,
                        .token_stride = c.xs, .head_stride = c.xs, .offset = c.C, .layout = c.layout}, 0));
    std::vector<float> compact(c.n * width);  // store_rows reads rows of exactly D values
    {
      const auto stepped = steps.download();
      for (int64_t r = 0; r < c.n; ++r) std::memcpy(&compact[r * width], &stepped[r * c.xs], width * sizeof(float));
    }
    Dev<float> dcompact(compact);
    CUDA_OK(cuda::store_rows({.rows = drows.ptr, .x = dcompact.ptr, .y = want.ptr, .n = c.n, .D = width, .y_stride = width}, 0));
    CUDA_OK(cuda::store_rows({.rows = drows.ptr, .x = dcompact.ptr, .y_bf16 = want16.ptr, .n = c.n, .D = width, .y_stride = width}, 0));
    // Fused, scattered rows.
    Dev<float> dx(x), got(std::vector<float>(total * width, 1.0f));
    Dev<uint16_t> got16(std::vector<uint16_t>(total * width, 7));
    LatentRowsParams p{.x = dx.ptr, .weight = dw.ptr, .cos = dc.ptr, .sin = ds.ptr, .rows = drows.ptr, .y = got.ptr,
                       .n = c.n, .C = c.C, .R = c.R, .x_stride = c.xs, .y_stride = width, .eps = eps, .layout = c.layout};
    CUDA_OK(cuda::store_latent_rows(p, 0));
    p.y = nullptr, p.y_bf16 = got16.ptr;
    CUDA_OK(cuda::store_latent_rows(p, 0));
    // Fused in place: x's rows are the destination rows, consecutive from `first` = 0, row stride xs.
    Dev<float> in_place(x);
    CUDA_OK(cuda::store_latent_rows({.x = in_place.ptr, .weight = dw.ptr, .cos = dc.ptr, .sin = ds.ptr, .y = in_place.ptr,
                                     .n = c.n, .C = c.C, .R = c.R, .x_stride = c.xs, .y_stride = c.xs, .eps = eps,
                                     .layout = c.layout}, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_TRUE(same_bits(got.download(), want.download()));
    EXPECT_EQ(got16.download(), want16.download());
    const auto stepped = steps.download(), placed = in_place.download();
    for (int64_t r = 0; r < c.n; ++r)  // the row's values as the steps left them; the padding untouched
      for (int64_t i = 0; i < c.xs; ++i)
        ASSERT_EQ(std::memcmp(&placed[r * c.xs + i], i < width ? &stepped[r * c.xs + i] : &x[r * c.xs + i], 4), 0)
            << r << " " << i;
    // Against the CPU twin.
    std::vector<float> cpu_y(total * width, 1.0f);
    cpu::store_latent_rows({.x = x.data(), .weight = w.data(), .cos = cs.data(), .sin = sn.data(), .rows = rows.data(),
                            .y = cpu_y.data(), .n = c.n, .C = c.C, .R = c.R, .x_stride = c.xs, .y_stride = width,
                            .eps = eps, .layout = c.layout});
    EXPECT_LT(rel_l2(got.download(), cpu_y), 1e-6);
  }
}

TEST_F(CudaBatch, ArgmaxRowsMatchesCpu) {
  const int64_t rows = 67, n = 102400 + 3;
  auto x = randn(rows * n, 41);
  x[5 * n + 17] = x[5 * n + 90001] = 100.0f;  // a tie: the lower index wins
  for (int64_t i = 0; i < n; ++i) x[7 * n + i] = NAN;  // all NaN: 0
  x[9 * n + 3] = NAN;
  x[9 * n + 4] = 1e30f;
  std::vector<int32_t> want(rows);
  cpu::argmax_rows({.x = x.data(), .out = want.data(), .rows = rows, .n = n});
  EXPECT_EQ(want[5], 17);
  EXPECT_EQ(want[7], 0);
  EXPECT_EQ(want[9], 4);
  Dev<float> dx(x);
  Dev<int32_t> dout(std::vector<int32_t>(rows, -1));
  CUDA_OK(cuda::argmax_rows({.x = dx.ptr, .out = dout.ptr, .rows = rows, .n = n}, 0));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(dout.download(), want);
  // One row (a batch-1 step) spreads over 100 slices: a three-way tie across slices and warps, then
  // the winner alone in the last, partial slice.
  auto one = randn(n, 42);
  one[90001] = one[17] = one[50000] = 100.0f;
  Dev<float> d1(one);
  Dev<int32_t> o1(std::vector<int32_t>(1, -1));
  CUDA_OK(cuda::argmax_rows({.x = d1.ptr, .out = o1.ptr, .rows = 1, .n = n}, 0));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(o1.download()[0], 17);
  one[n - 1] = 1000.0f;
  Dev<float> d2(one);
  CUDA_OK(cuda::argmax_rows({.x = d2.ptr, .out = o1.ptr, .rows = 1, .n = n}, 0));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(o1.download()[0], static_cast<int32_t>(n - 1));
}

// The step-to-step feed against its CPU twin, bit for bit: sequences at the start, in the middle and
// full (which keep their slots), rope halves longer than the kernel's block, and the choices written
// to pinned host memory through its mapped device address (as BatchDecoder reads them).
TEST_F(CudaBatch, DecodeFeedMatchesCpu) {
  const int64_t B = 5, capacity = 9, half = 40;
  auto cos_table = randn(capacity * half, 51), sin_table = randn(capacity * half, 52);
  const std::vector<int32_t> chosen = {3, 1, 4, 1, 5}, lengths = {1, 9, 4, 8, 9};
  std::vector<int32_t> write_rows(B), ids(B, -1);
  for (int64_t b = 0; b < B; ++b) write_rows[b] = static_cast<int32_t>(b * capacity + lengths[b] - 1);
  auto cos = randn(B * half, 53), sin = randn(B * half, 54);
  std::vector<int32_t> history(B * capacity, -2);
  std::vector<int32_t> want_ids = ids, want_rows = write_rows, want_lengths = lengths, want_history = history;
  std::vector<float> want_cos = cos, want_sin = sin;
  cpu::decode_feed({.chosen = chosen.data(), .ids = want_ids.data(), .write_rows = want_rows.data(),
                    .kv_lengths = want_lengths.data(), .cos = want_cos.data(), .sin = want_sin.data(),
                    .cos_table = cos_table.data(), .sin_table = sin_table.data(), .history = want_history.data(),
                    .rows = B, .capacity = capacity, .half = half});
  EXPECT_EQ(want_lengths, (std::vector<int32_t>{2, 9, 5, 9, 9}));
  Dev<int32_t> d_chosen(chosen), d_ids(ids), d_rows(write_rows), d_lengths(lengths);
  Dev<float> d_cos(cos), d_sin(sin), d_cos_table(cos_table), d_sin_table(sin_table);
  int32_t* host_history = nullptr;
  int32_t* mapped = nullptr;
  CUDA_OK(cudaHostAlloc(reinterpret_cast<void**>(&host_history), history.size() * sizeof(int32_t), cudaHostAllocMapped));
  std::copy(history.begin(), history.end(), host_history);
  CUDA_OK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&mapped), host_history, 0));
  CUDA_OK(cuda::decode_feed({.chosen = d_chosen.ptr, .ids = d_ids.ptr, .write_rows = d_rows.ptr,
                             .kv_lengths = d_lengths.ptr, .cos = d_cos.ptr, .sin = d_sin.ptr,
                             .cos_table = d_cos_table.ptr, .sin_table = d_sin_table.ptr, .history = mapped,
                             .rows = B, .capacity = capacity, .half = half}, 0));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(d_ids.download(), want_ids);
  EXPECT_EQ(d_rows.download(), want_rows);
  EXPECT_EQ(d_lengths.download(), want_lengths);
  EXPECT_TRUE(same_bits(d_cos.download(), want_cos));
  EXPECT_TRUE(same_bits(d_sin.download(), want_sin));
  EXPECT_EQ(std::vector<int32_t>(host_history, host_history + history.size()), want_history);
  CUDA_OK(cudaFreeHost(host_history));
}

// Grouped by expert (E given): uneven expert loads (some experts unused, one with many pairs), rows
// that are not 8-aligned (scalar lanes), batch-64 decode shapes; fp32 and bf16 tables. One token
// (T = 1) takes its own two-kernel path up to 16 slots (a partial last column group, 16 slots) and the
// grouped one past that.
TEST_F(CudaBatch, GroupedExpertsMatchCpu) {
  struct Case { int64_t T, K, E, D, F; };
  for (const Case& c : {Case{1, 6, 64, 2048, 1408}, Case{64, 6, 64, 256, 176}, Case{5, 3, 8, 40, 36},
                        Case{2, 2, 3, 13, 7}, Case{128, 8, 256, 64, 32}, Case{1, 3, 5, 13, 7},
                        Case{1, 16, 32, 40, 36}, Case{1, 17, 40, 24, 16}}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " K" << c.K << " E" << c.E << " D" << c.D << " F" << c.F);
    std::vector<std::vector<float>> mats;  // gate, up, down per expert
    for (int64_t e = 0; e < c.E; ++e) {
      mats.push_back(randn(c.F * c.D, 100 + e, 0.0f, 0.05f));
      mats.push_back(randn(c.F * c.D, 200 + e, 0.0f, 0.05f));
      mats.push_back(randn(c.D * c.F, 300 + e, 0.0f, 0.05f));
    }
    const auto x = randn(c.T * c.D, 7), w = randn(c.T * c.K, 8);
    std::vector<int32_t> idx(c.T * c.K);
    // Expert 1 takes every fourth pair; the rest spread over the even experts only.
    for (size_t i = 0; i < idx.size(); ++i)
      idx[i] = i % 4 == 0 ? 1 % static_cast<int32_t>(c.E) : static_cast<int32_t>((i * 6) % c.E);
    for (int64_t t = 0; t < c.T; ++t)  // distinct experts per token, as routing gives
      for (int64_t k = 0; k < c.K; ++k) idx[t * c.K + k] = static_cast<int32_t>((idx[t * c.K] + k) % c.E);
    for (bool bf16 : {false, true}) {
      std::vector<std::vector<uint16_t>> mats16;
      for (const auto& m : mats) mats16.push_back(to_bf16(m));
      std::vector<const float*> hf[3], df[3];
      std::vector<const uint16_t*> hb[3], db[3];
      std::vector<std::unique_ptr<Dev<float>>> keep;
      std::vector<std::unique_ptr<Dev<uint16_t>>> keep16;
      for (int64_t e = 0; e < c.E; ++e)
        for (int j = 0; j < 3; ++j) {
          hf[j].push_back(mats[3 * e + j].data());
          hb[j].push_back(mats16[3 * e + j].data());
          if (bf16) {
            keep16.push_back(std::make_unique<Dev<uint16_t>>(mats16[3 * e + j]));
            db[j].push_back(keep16.back()->ptr);
          } else {
            keep.push_back(std::make_unique<Dev<float>>(mats[3 * e + j]));
            df[j].push_back(keep.back()->ptr);
          }
        }
      std::vector<float> scratch(c.T * c.K * (c.F + c.D)), want(c.T * c.D);
      MoeExpertsParams p{.x = x.data(), .indices = idx.data(), .weights = w.data(), .scratch = scratch.data(),
                         .out = want.data(), .T = c.T, .K = c.K, .D = c.D, .F = c.F, .E = c.E};
      if (bf16) {
        p.gate_bf16 = hb[0].data(), p.up_bf16 = hb[1].data(), p.down_bf16 = hb[2].data();
      } else {
        p.gate = hf[0].data(), p.up = hf[1].data(), p.down = hf[2].data();
      }
      cpu::moe_experts(p);
      Dev<const float*> tg(df[0]), tu(df[1]), td(df[2]);
      Dev<const uint16_t*> tg16(db[0]), tu16(db[1]), td16(db[2]);
      Dev<int32_t> didx(idx);
      Dev<float> dx(x), dw(w), dscratch(scratch), dout(nans(want.size()));
      p.x = dx.ptr, p.indices = didx.ptr, p.weights = dw.ptr, p.scratch = dscratch.ptr, p.out = dout.ptr;
      if (bf16) p.gate_bf16 = tg16.ptr, p.up_bf16 = tu16.ptr, p.down_bf16 = td16.ptr;
      else p.gate = tg.ptr, p.up = tu.ptr, p.down = td.ptr;
      CUDA_OK(cuda::moe_experts(p, 0));
      CUDA_OK(cudaDeviceSynchronize());
      const auto first = dout.download();
      EXPECT_LE(rel_l2(first, want), 1e-5) << (bf16 ? "bf16" : "fp32");
      p.scratch = nullptr;  // the backend's own scratch then: same bits, run after run
      CUDA_OK(cuda::moe_experts(p, 0));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_TRUE(same_bits(dout.download(), first));
    }
  }
}

// ops::Branch on a stream of its own, inside a private pool: memory released while the branch is open
// is not handed out again before the join (either chain may still use it), and work issued on the main
// chain after the join sees everything the side chain wrote (the side's adds take long enough that a
// missing wait would read partial sums).
TEST_F(CudaBatch, BranchHoldsReleasedMemoryAndOrdersTheJoin) {
  static bool registered = false;
  if (!registered) cuda::register_cuda_backend();
  registered = true;
  cudaStream_t stream = nullptr;
  CUDA_OK(cudaStreamCreate(&stream));
  void* pool = cuda::pool_create();
  cuda::pool_use(pool);
  const Context ctx{Backend::Cuda, stream};
  const int64_t n = int64_t{1} << 24;
  {
    const std::vector<float> ones_host(static_cast<size_t>(n), 1.0f), zeros(static_cast<size_t>(n), 0.0f);
    Buffer<float> ones(ctx, ones_host.data(), ones_host.size()), sum(ctx, zeros.data(), zeros.size()),
        seen(ctx, zeros.data(), zeros.size());
    Branch branch(ctx);
    EXPECT_NE(branch.side().stream, ctx.stream);
    void* a = allocate(Backend::Cuda, 4096);
    release(Backend::Cuda, a);
    void* b = allocate(Backend::Cuda, 4096);
    EXPECT_NE(a, b) << "a block released inside an open branch was handed out again";
    for (int i = 0; i < 20; ++i) add(branch.side(), {.x = ones.data(), .y = sum.data(), .n = n});
    branch.join();
    void* c = allocate(Backend::Cuda, 4096);
    EXPECT_EQ(c, a) << "the held block did not come back at the join";
    release(Backend::Cuda, b);
    release(Backend::Cuda, c);
    add(ctx, {.x = sum.data(), .y = seen.data(), .n = n});
    CUDA_OK(cudaStreamSynchronize(stream));
    const std::vector<float> got = seen.to_host(ctx);
    EXPECT_EQ(std::count(got.begin(), got.end(), 20.0f), n);
  }
  cuda::pool_use(nullptr);
  cuda::pool_destroy(pool);
  CUDA_OK(cudaStreamDestroy(stream));
}

// Branches open at the same time (MLA's latent rows and q's rope) get side streams of their own, are
// joined in any order, and a later branch reuses a free side stream rather than making another.
TEST_F(CudaBatch, ConcurrentBranchesRunOnStreamsOfTheirOwn) {
  static bool registered = false;
  if (!registered) cuda::register_cuda_backend();
  registered = true;
  cudaStream_t stream = nullptr;
  CUDA_OK(cudaStreamCreate(&stream));
  const Context ctx{Backend::Cuda, stream};
  const int64_t n = int64_t{1} << 22;
  {
    const std::vector<float> ones_host(static_cast<size_t>(n), 1.0f), zeros(static_cast<size_t>(n), 0.0f);
    Buffer<float> ones(ctx, ones_host.data(), ones_host.size()), first_sum(ctx, zeros.data(), zeros.size()),
        second_sum(ctx, zeros.data(), zeros.size());
    void* first_stream = nullptr;
    {
      Branch first(ctx), second(ctx);
      EXPECT_TRUE(first.forked() && second.forked());
      first_stream = first.side().stream;
      EXPECT_NE(first.side().stream, ctx.stream);
      EXPECT_NE(second.side().stream, ctx.stream);
      EXPECT_NE(first.side().stream, second.side().stream);
      for (int i = 0; i < 10; ++i) add(first.side(), {.x = ones.data(), .y = first_sum.data(), .n = n});
      for (int i = 0; i < 20; ++i) add(second.side(), {.x = ones.data(), .y = second_sum.data(), .n = n});
      first.join();  // not the reverse of the forks
      second.join();
    }
    add(ctx, {.x = first_sum.data(), .y = second_sum.data(), .n = n});  // after both joins
    Branch again(ctx);
    EXPECT_EQ(again.side().stream, first_stream);  // a free side stream is reused
    again.join();
    CUDA_OK(cudaStreamSynchronize(stream));
    const std::vector<float> got = second_sum.to_host(ctx);
    EXPECT_EQ(std::count(got.begin(), got.end(), 30.0f), n);
  }
  CUDA_OK(cudaStreamDestroy(stream));
}

// ---- BatchDecoder on the fixtures ----

class CudaBatchModel : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) GTEST_SKIP() << "no CUDA device";
    static bool registered = false;
    if (!registered) cuda::register_cuda_backend();
    registered = true;
  }
};

// Prefills three prompts of different lengths into one batched cache, then decodes `steps` greedy steps
// (tokens chosen from the reference run's logits so every run feeds the same ids). Returns all logits.
std::vector<float> decode_batch(const Model& m, const std::vector<int32_t>& ids, int64_t steps, bool graph,
                                std::vector<int32_t>* chosen, bool* captured = nullptr) {
  const size_t n = ids.size();
  const std::vector<std::vector<int32_t>> prompts = {
      {ids.begin(), ids.begin() + 1}, ids, {ids.begin() + 1, ids.begin() + static_cast<long>(std::max<size_t>(2, n / 2))}};
  const int64_t B = 3, V = m.config.vocab_size;
  KvCache cache = make_kv_cache(m, static_cast<int64_t>(n) + steps, B);
  std::vector<float> logits(static_cast<size_t>(B * V)), all;
  std::vector<int32_t> next(B);
  for (int64_t b = 0; b < B; ++b) {
    forward(m, prompts[b].data(), static_cast<int64_t>(prompts[b].size()), cache,
            {.all_logits = false, .logits = logits.data(), .sequence = b});
    next[b] = static_cast<int32_t>(std::max_element(logits.begin(), logits.begin() + V) - logits.begin());
  }
  BatchDecoder decoder(m, cache, graph);
  for (int64_t s = 0; s < steps; ++s) {
    if (chosen->size() < static_cast<size_t>((s + 1) * B)) chosen->insert(chosen->end(), next.begin(), next.end());
    decoder.step(chosen->data() + s * B, logits.data());
    all.insert(all.end(), logits.begin(), logits.end());
    for (int64_t b = 0; b < B; ++b)
      next[b] = static_cast<int32_t>(std::max_element(logits.begin() + b * V, logits.begin() + (b + 1) * V) -
                                     (logits.begin() + b * V));
  }
  if (captured) *captured = decoder.graph_captured();
  return all;
}

// The replayed graph computes exactly what the eager steps compute (same kernels, new inputs each
// step: a replay reading stale inputs would repeat the previous step's logits), and matches the CPU
// spec: fp32 to 1e-4 (as the whole-model fp32 tests), bf16 to 1e-2 (as Bf16MatchesCpuBf16).
TEST_P(CudaBatchModel, GraphEqualsEagerAndMatchesCpu) {
  const auto f = dsv::test::open_fixture(GetParam());
  auto host = load_model(f.dir.string());
  for (bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bf16" : "fp32");
    auto gpu = to_backend(*host, Backend::Cuda, bf16);
    auto cpu = load_model(f.dir.string());
    if (bf16) store_weights_bf16(*cpu);
    std::vector<int32_t> chosen;
    const auto want = decode_batch(*cpu, f.ids, 5, false, &chosen);
    bool captured = false;
    const auto graph = decode_batch(*gpu, f.ids, 5, true, &chosen, &captured);
    const auto eager = decode_batch(*gpu, f.ids, 5, false, &chosen);
    EXPECT_TRUE(captured);
    EXPECT_TRUE(same_bits(graph, eager));
    const double err = dsv::test::max_rel_error(graph.data(), want);
    std::printf("%s %s batched decode: GPU graph vs CPU max rel error %.2e\n", GetParam().c_str(),
                bf16 ? "bf16" : "fp32", err);
    EXPECT_LE(err, bf16 ? 1e-2 : 1e-4);
  }
}

// Greedy steps issued ahead (each replay fed by the one before it on the device, tokens read from
// mapped host memory one step behind) give exactly what step() gives with the tokens coming back each
// time: the same tokens and bit-identical cache rows, fp32 and bf16, graph and eager.
TEST_P(CudaBatchModel, PipelinedGreedyEqualsSteps) {
  const auto f = dsv::test::open_fixture(GetParam());
  auto host = load_model(f.dir.string());
  const size_t n = f.ids.size();
  const std::vector<std::vector<int32_t>> prompts = {
      {f.ids.begin(), f.ids.begin() + 1}, f.ids,
      {f.ids.begin() + 1, f.ids.begin() + static_cast<long>(std::max<size_t>(2, n / 2))}};
  const int64_t B = 3, steps = 6, V = host->config.vocab_size;
  for (bool bf16 : {false, true}) {
    auto gpu = to_backend(*host, Backend::Cuda, bf16);
    for (bool graph : {true, false}) {
      SCOPED_TRACE(std::string(bf16 ? "bf16" : "fp32") + (graph ? " graph" : " eager"));
      KvCache stepped = make_kv_cache(*gpu, static_cast<int64_t>(n) + steps, B);
      KvCache piped = make_kv_cache(*gpu, static_cast<int64_t>(n) + steps, B);
      std::vector<float> logits(static_cast<size_t>(V));
      std::vector<int32_t> first(B);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t P = static_cast<int64_t>(prompts[b].size());
        forward(*gpu, prompts[b].data(), P, stepped, {.all_logits = false, .logits = logits.data(), .sequence = b});
        forward(*gpu, prompts[b].data(), P, piped, {.all_logits = false, .logits = logits.data(), .sequence = b});
        first[b] = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      }
      std::vector<int32_t> want, got, chosen(B);
      {
        BatchDecoder decoder(*gpu, stepped, graph);
        std::vector<int32_t> next = first;
        for (int64_t s = 0; s < steps; ++s) {
          decoder.step(next.data(), nullptr, chosen.data());
          want.insert(want.end(), chosen.begin(), chosen.end());
          next = chosen;
        }
      }
      {
        BatchDecoder decoder(*gpu, piped, graph);
        decoder.enqueue_greedy(first.data());
        for (int64_t s = 1; s <= steps; ++s) {
          if (s < steps) decoder.enqueue_greedy(nullptr);
          decoder.read_greedy(chosen.data());
          got.insert(got.end(), chosen.begin(), chosen.end());
        }
        EXPECT_EQ(decoder.graph_captured(), graph);
      }
      EXPECT_EQ(got, want);
      EXPECT_EQ(piped.lengths, stepped.lengths);
      // The rows written (a cache's other rows are uninitialized device memory).
      const Context ctx{.backend = Backend::Cuda};
      for (int64_t l = 0; l < stepped.layers; ++l)
        for (int64_t b = 0; b < B; ++b) {
          const int64_t begin = b * stepped.capacity * stepped.width, end = begin + stepped.lengths[b] * stepped.width;
          if (bf16) {
            const auto a = stepped.rows_bf16[l].to_host(ctx), c = piped.rows_bf16[l].to_host(ctx);
            EXPECT_TRUE(std::equal(a.begin() + begin, a.begin() + end, c.begin() + begin)) << l << " " << b;
          } else {
            const auto a = stepped.rows[l].to_host(ctx), c = piped.rows[l].to_host(ctx);
            EXPECT_EQ(0, std::memcmp(a.data() + begin, c.data() + begin, (end - begin) * sizeof(float))) << l << " " << b;
          }
        }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaBatchModel, ::testing::ValuesIn(dsv::test::fixture_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace dsv::ops
