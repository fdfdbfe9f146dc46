// Batched decode steps (BatchDecoder in model.h): one token for each sequence of a cache per step,
// optionally replayed as a CUDA graph. The step's ops are the forward pass of forward.cpp with T = B
// rows, absorbed MLA, and per-row cache slots taken from device buffers. Its last op writes the next
// step's inputs from this step's greedy choices (ops::decode_feed), so greedy steps can be issued ahead
// of the host reading their tokens (enqueue_greedy / read_greedy).
#include <cstring>
#include <vector>

#include "core/error.h"
#include "model/layers/layers.h"
#include "model/model.h"
#include "ops/ops.h"

namespace dsv {

BatchDecoder::BatchDecoder(const Model& m, KvCache& cache, bool use_graph)
    : m_(m), cache_(cache), ctx_(m.context()) {
  const ModelConfig& c = m.config;
  DSV_CHECK(cache.layers == c.num_hidden_layers && cache.width == c.kv_lora_rank + c.qk_rope_head_dim,
            "BatchDecoder: cache of {} layers x {} values, model needs {} x {}", cache.layers, cache.width,
            c.num_hidden_layers, c.kv_lora_rank + c.qk_rope_head_dim);
  const int64_t B = cache.sequences, half = c.qk_rope_head_dim / 2;
  inputs_ = ops::Buffer<int32_t>(ctx_.backend, static_cast<size_t>(3 * B + 2 * B * half));
  logits_ = ops::Buffer<float>(ctx_.backend, static_cast<size_t>(B * c.vocab_size));
  greedy_ = ops::Buffer<int32_t>(ctx_.backend, static_cast<size_t>(B));
  // The rope angles of every cache position: steps take theirs from it, on the host (upload_inputs)
  // or on the device (decode_feed).
  const int64_t capacity = cache.capacity;
  std::vector<int64_t> positions(static_cast<size_t>(capacity));
  for (int64_t i = 0; i < capacity; ++i) positions[i] = i;
  angle_table_host_.resize(static_cast<size_t>(2 * capacity * half));
  layers::rope_angles(c, positions, angle_table_host_.data(), angle_table_host_.data() + capacity * half);
  angle_table_ = ops::Buffer<float>(ctx_, angle_table_host_.data(), angle_table_host_.size());
  const size_t history_values = static_cast<size_t>(B * capacity);
  if (ctx_.backend == ops::Backend::Cpu) {
    history_cpu_.assign(history_values, 0);
    history_ = history_device_ = history_cpu_.data();
    return;
  }
  const ops::BackendTable& t = ops::backend_table(ctx_.backend);
  // Graphs need every op to stay on the device; op profiling synchronizes around each op instead.
  use_graph_ = use_graph && t.capture_begin && !ops::op_profile_enabled();
  if (t.stream_create) ctx_.stream = t.stream_create();
  if (use_graph_) pool_ = t.pool_create();
  void* device_view = nullptr;
  history_ = static_cast<int32_t*>(t.host_mapped_allocate(history_values * sizeof(int32_t), &device_view));
  history_device_ = static_cast<int32_t*>(device_view);
  for (int i = 0; i < kMaxUnread; ++i) events_.push_back(t.event_create());
}

BatchDecoder::~BatchDecoder() {
  if (ctx_.backend == ops::Backend::Cpu) return;
  const ops::BackendTable& t = ops::backend_table(ctx_.backend);
  if (ctx_.stream) t.synchronize(ctx_.stream);
  for (void* e : events_) t.event_destroy(e);
  t.host_mapped_release(history_);
  if (graph_) t.graph_destroy(graph_);
  if (pool_) t.pool_destroy(pool_);
  if (ctx_.stream) t.stream_destroy(ctx_.stream);
}

void BatchDecoder::run_ops() {
  const ModelConfig& c = m_.config;
  const Weights& w = m_.weights;
  const int64_t B = cache_.sequences, D = c.hidden_size, V = c.vocab_size, half = c.qk_rope_head_dim / 2;
  const int32_t* ids = inputs_.data();
  const float* cos = reinterpret_cast<const float*>(inputs_.data() + 3 * B);
  const layers::TokenSlots slots{.cos = cos, .sin = cos + B * half, .write_rows = ids + B, .kv_lengths = ids + 2 * B};
  ops::Buffer<float> x(ctx_.backend, B * D);
  ops::embed(ctx_, {.ids = ids, .table = w.embed_tokens.data, .out = x.data(), .T = B, .D = D});
  // Each layer leaves its FFN output in `carry` for the next norm to add (one kernel fewer per layer).
  ops::Buffer<float> carry(ctx_.backend, B * D);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    layers::decoder_layer(ctx_, c, w.layers[l], x.data(), B, cache_, l, slots, MlaMode::Absorbed, {}, l,
                          l == 0 ? nullptr : carry.data(), carry.data());
  // The final norm adds the last carry (configs have at least one layer) and replaces it.
  ops::add_rmsnorm(ctx_, {.x = x.data(), .delta = carry.data(), .weight = w.norm.data, .y = carry.data(), .rows = B,
                          .dim = D, .eps = static_cast<float>(c.rms_norm_eps)});
  ops::linear(ctx_, {.x = carry.data(), .w = w.lm_head.data, .w_bf16 = w.lm_head.bf16, .y = logits_.data(), .M = B, .N = V,
                     .K = D});
  ops::argmax_rows(ctx_, {.x = logits_.data(), .out = greedy_.data(), .rows = B, .n = V});
  // The next step's inputs from these choices (used by enqueue_greedy(nullptr); step() uploads its own).
  int32_t* inputs = inputs_.data();
  float* next_cos = reinterpret_cast<float*>(inputs + 3 * B);
  ops::decode_feed(ctx_, {.chosen = greedy_.data(), .ids = inputs, .write_rows = inputs + B,
                          .kv_lengths = inputs + 2 * B, .cos = next_cos, .sin = next_cos + B * half,
                          .cos_table = angle_table_.data(), .sin_table = angle_table_.data() + cache_.capacity * half,
                          .history = history_device_, .rows = B, .capacity = cache_.capacity, .half = half});
}

void BatchDecoder::check_room() const {
  for (int64_t b = 0; b < cache_.sequences; ++b)
    DSV_CHECK(cache_.lengths[b] < cache_.capacity, "KV cache full: sequence {} holds {} tokens, its capacity", b,
              cache_.lengths[b]);
}

void BatchDecoder::upload_inputs(const int32_t* ids) {
  const ModelConfig& c = m_.config;
  const int64_t B = cache_.sequences, V = c.vocab_size, half = c.qk_rope_head_dim / 2;
  // The step's inputs, uploaded in one copy: ids, the row each new latent goes to, key counts, angles.
  std::vector<int32_t> host(static_cast<size_t>(3 * B + 2 * B * half));
  // Angles from the decoder's table of every position (what decode_feed copies on the device).
  int32_t* angles = host.data() + 3 * B;  // fp32 bits: filled by memcpy
  const float* cos_table = angle_table_host_.data();
  const float* sin_table = cos_table + cache_.capacity * half;
  for (int64_t b = 0; b < B; ++b) {
    DSV_CHECK(ids[b] >= 0 && ids[b] < V, "token id {} of sequence {} is outside the vocabulary [0, {})", ids[b], b, V);
    const int64_t position = cache_.lengths[b];
    host[b] = ids[b];
    host[B + b] = static_cast<int32_t>(b * cache_.capacity + position);
    host[2 * B + b] = static_cast<int32_t>(position + 1);
    std::memcpy(angles + b * half, cos_table + position * half, static_cast<size_t>(half) * sizeof(float));
    std::memcpy(angles + (B + b) * half, sin_table + position * half, static_cast<size_t>(half) * sizeof(float));
  }
  ops::copy_to_backend(ctx_, inputs_.data(), host.data(), host.size() * sizeof(int32_t));
}

void BatchDecoder::launch() {
  if (!use_graph_) return run_ops();
  const ops::BackendTable& t = ops::backend_table(ctx_.backend);
  if (!graph_ && steps_ == 0) {  // eager: loads kernels and fills the private pool with this step's blocks
    t.pool_use(pool_);
    try {
      run_ops();
    } catch (...) {
      t.pool_use(nullptr);
      throw;
    }
    t.pool_use(nullptr);
    return;
  }
  if (!graph_) {
    t.pool_use(pool_);
    t.capture_begin(ctx_.stream);
    try {
      run_ops();
    } catch (...) {
      try {
        t.graph_destroy(t.capture_end(ctx_.stream));
      } catch (...) {
      }
      t.pool_use(nullptr);
      throw;
    }
    graph_ = t.capture_end(ctx_.stream);
    t.pool_use(nullptr);
  }
  t.graph_launch(graph_, ctx_.stream);
}

void BatchDecoder::step(const int32_t* ids, float* logits, int32_t* greedy) {
  const int64_t B = cache_.sequences, V = m_.config.vocab_size;
  // Steps still in flight would be read after this one's inputs replaced theirs: read them first.
  DSV_CHECK(unread_.empty(), "BatchDecoder::step: {} enqueued steps are unread (read_greedy first)", unread_.size());
  check_room();
  upload_inputs(ids);
  launch();
  // The copies back order after the step's stream (see register.cpp) on CUDA.
  if (logits) ops::copy_to_host(ctx_, logits, logits_.data(), static_cast<size_t>(B * V) * sizeof(float));
  if (greedy) ops::copy_to_host(ctx_, greedy, greedy_.data(), static_cast<size_t>(B) * sizeof(int32_t));
  for (int64_t b = 0; b < B; ++b) ++cache_.lengths[b];
  ++steps_;
}

void BatchDecoder::enqueue_greedy(const int32_t* ids) {
  const int64_t B = cache_.sequences;
  DSV_CHECK(unread() < kMaxUnread, "BatchDecoder::enqueue_greedy: {} steps are unread already (at most {})", unread(),
            kMaxUnread);
  DSV_CHECK(ids || steps_ > 0, "BatchDecoder::enqueue_greedy: the first step needs ids (no earlier step chose any)");
  check_room();
  if (ids) upload_inputs(ids);
  launch();
  Unread u;
  u.rows.assign(cache_.lengths.begin(), cache_.lengths.end());
  if (ctx_.backend != ops::Backend::Cpu) {
    u.event = events_[static_cast<size_t>(events_used_++ % kMaxUnread)];
    ops::backend_table(ctx_.backend).event_record(u.event, ctx_.stream);
  }
  unread_.push_back(std::move(u));
  for (int64_t b = 0; b < B; ++b) ++cache_.lengths[b];
  ++steps_;
}

void BatchDecoder::read_greedy(int32_t* out) {
  DSV_CHECK(!unread_.empty(), "BatchDecoder::read_greedy: no enqueued step is unread");
  Unread u = std::move(unread_.front());
  unread_.erase(unread_.begin());
  if (u.event) ops::backend_table(ctx_.backend).event_wait(u.event);
  for (int64_t b = 0; b < cache_.sequences; ++b) out[b] = history_[b * cache_.capacity + u.rows[b]];
}

}  // namespace dsv
