// Model: config + weights (+ the mapped checkpoint and the arena that back them), and the CPU
// forward pass over a latent KV cache. Model code is single-device; parallelism comes from outside.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tap.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"
#include "ops/memory.h"

namespace dsv {

struct LoadStats {
  int64_t tensors = 0;
  int64_t zero_copy_bytes = 0;   // fp32 weights used in place from the mapped files
  int64_t converted_bytes = 0;   // fp32 bytes written to the arena (bf16/f16/fp8 or misaligned)
  int64_t fp8_tensors = 0;       // dequantized with weight_scale_inv
  std::vector<std::pair<std::string, int64_t>> dtype_counts;  // checkpoint dtype -> tensors
};

struct Model {
  ModelConfig config;
  Weights weights;  // views: host memory on the CPU backend, device memory otherwise
  LoadStats stats;
  ops::Backend backend = ops::Backend::Cpu;
  std::unique_ptr<Checkpoint> checkpoint;  // keeps the maps alive for zero-copy weights
  std::vector<float> arena;                // converted weights, one allocation
  std::vector<ops::Buffer<float>> device_storage;  // the weights on a device backend
  std::vector<ops::Buffer<uint16_t>> bf16_storage;  // weights kept in bf16 (store_weights_bf16)
  std::vector<ops::Buffer<const float*>> expert_tables;  // see MoeWeights::gate_table
  std::vector<ops::Buffer<const uint16_t*>> expert_tables_bf16;

  ops::Context context() const { return ops::Context{.backend = backend}; }
};

// Loads config.json and the safetensors of `dir`, checking every tensor against the name table.
std::unique_ptr<Model> load_model(const std::string& dir);
// Last step of load_model, to_backend and random_model: points a tied LM head at the embedding and
// fills the MoE layers' expert pointer tables.
void finish_weights(Model& m);
// A model of `config` with random weights made directly on `backend` (no checkpoint, no host copy):
// projections ~ N(0, init_std), norms 1, biases 0. For benchmarks and tests. With bf16_weights the
// matrices are stored as store_weights_bf16 would leave them (made tensor by tensor: no fp32 copy).
std::unique_ptr<Model> random_model(const ModelConfig& config, ops::Backend backend, uint64_t seed,
                                    float init_std = 0.02f, bool bf16_weights = false);
// The initialization rule of random_model for one tensor (by its HF name and shape), on the device
// of `ctx`, from the counter RNG stream `seed`.
void fill_initial_weight(const ops::Context& ctx, const std::string& hf_name, const std::vector<int64_t>& shape,
                         float* data, uint64_t seed, float init_std);
// A copy of a loaded model's weights on another backend (fp32, or as store_weights_bf16 leaves them
// with bf16_weights), through the same name table.
std::unique_ptr<Model> to_backend(const Model& host, ops::Backend backend, bool bf16_weights = false);

// bf16 inference storage (bf16_weights.cpp). The matrices that products read (every 2-D weight but
// the embedding table, read one row per token, and the MoE routers, kept fp32 for exact expert
// choices) are rounded to bf16 (nearest even); norms and biases stay fp32. Products then run as
// ops::linear specifies for bf16 weights. For inference, not training.
bool stored_in_bf16(const std::string& hf_name, const std::vector<int64_t>& shape);
// Stores t.numel() fp32 values at `src` (on m's backend) as t's bf16 storage; t.data becomes null.
void keep_as_bf16(Model& m, Tensor& t, const float* src);
// Converts a model's weights in place (CPU models: the fp32 mapping stays alive, unused). Returns
// the bf16 bytes stored. On a device, prefer random_model / to_backend with bf16_weights, which never
// hold the fp32 model.
int64_t store_weights_bf16(Model& m);
bool has_bf16_weights(const Model& m);

// MLA latent cache: per layer and token, the normalized latent (C) followed by the roped shared key
// (R): C + R values, the whole per-token state MLA needs. Stored fp32, or bf16 ((C + R) x 2 bytes per
// token per layer: 1,152 B in the V2/V3 releases); attention reads bf16 rows widened to fp32.
// `sequences` independent sequences (batched decode) of up to `capacity` tokens each, with their own
// lengths; sequence s owns rows [s * capacity, (s + 1) * capacity) of each layer.
struct KvCache {
  int64_t layers = 0, width = 0, capacity = 0, sequences = 1;
  std::vector<int64_t> lengths;  // [sequences]: tokens cached
  bool bf16 = false;
  std::vector<ops::Buffer<float>> rows;          // [layer][sequences * capacity * width] (fp32 caches)
  std::vector<ops::Buffer<uint16_t>> rows_bf16;  // [layer][sequences * capacity * width] (bf16 caches)

  KvCache() = default;
  KvCache(ops::Backend backend, int64_t layers, int64_t width, int64_t capacity, bool bf16 = false,
          int64_t sequences = 1);
  float* row(int64_t layer, int64_t position, int64_t sequence = 0) {
    return rows[layer].data() + (sequence * capacity + position) * width;
  }
  uint16_t* row_bf16(int64_t layer, int64_t position, int64_t sequence = 0) {
    return rows_bf16[layer].data() + (sequence * capacity + position) * width;
  }
  int64_t bytes_per_token_per_layer() const { return width * (bf16 ? 2 : 4); }
};
// A cache for `sequences` sequences of up to `capacity` tokens; bf16 when the model stores its
// weights in bf16 (bf16 inference).
KvCache make_kv_cache(const Model& m, int64_t capacity, int64_t sequences = 1);

// How MLA attends: Auto = absorbed for single-token decode steps, expanded otherwise.
enum class MlaMode { Auto, Expanded, Absorbed };

struct ForwardOptions {
  bool all_logits = true;      // logits for every token; false: only the last one
  float* logits = nullptr;     // host [T or 1, V]
  float* final_hidden = nullptr;  // optional host [T, D]: hidden state after the final norm (MTP input)
  MlaMode mla_mode = MlaMode::Auto;
  TapFn tap;
  int64_t sequence = 0;  // which sequence of the cache the tokens extend
};

// Runs T tokens of one sequence of the cache, starting at its length (positions length ..), and
// appends them to it.
void forward(const Model& m, const int32_t* ids, int64_t T, KvCache& cache, const ForwardOptions& opt);

// Batched decode: each step takes one new token for every sequence of a cache, each at its own
// position (sequences of different lengths), through the model in one pass (T = B rows; absorbed
// MLA over each sequence's own rows). Fill the sequences first with forward(.sequence = b).
// On CUDA with use_graph, the first step runs eagerly, the second is captured as a CUDA graph and
// every step after replays it: the per-step values (ids, rope angles, cache rows to write, key counts)
// sit in device buffers at fixed addresses, and the graph's scratch memory in a private pool.
class BatchDecoder {
 public:
  BatchDecoder(const Model& m, KvCache& cache, bool use_graph = true);
  ~BatchDecoder();
  BatchDecoder(const BatchDecoder&) = delete;
  BatchDecoder& operator=(const BatchDecoder&) = delete;
  // ids [B] (host): ids[b] is appended to sequence b at position cache.lengths[b], which then grows by
  // one. logits [B, V] (host, optional) receives every sequence's next-token logits; greedy [B] (host,
  // optional) their argmax (ops::argmax_rows, on the device: no [B, V] copy when logits is null).
  void step(const int32_t* ids, float* logits, int32_t* greedy = nullptr);

  // Pipelined greedy decoding: the host issues steps ahead and reads their choices later, so the device
  // never waits for the host between steps. enqueue_greedy issues one step and returns at once: with
  // ids [B] (host) as step() takes them; with ids null, each sequence's previous greedy choice (the
  // step's last op, ops::decode_feed, leaves the next step's inputs on the device). read_greedy waits
  // for the oldest unread enqueued step and writes its choices [B] (host). At most kMaxUnread steps
  // may be unread. Same ops, so the same tokens and cache as step() with greedy choices.
  static constexpr int kMaxUnread = 4;
  void enqueue_greedy(const int32_t* ids);
  void read_greedy(int32_t* out);
  int64_t unread() const { return static_cast<int64_t>(unread_.size()); }

  bool graph_captured() const { return graph_ != nullptr; }

 private:
  void run_ops();                           // the step's ops on ctx_ (eager or being captured)
  void upload_inputs(const int32_t* ids);   // checks ids, copies the step's inputs (after check_room)
  void launch();                            // the step: eagerly, captured, or as a graph replay
  void check_room() const;                  // every sequence has a free cache row

  const Model& m_;
  KvCache& cache_;
  ops::Context ctx_;
  bool use_graph_ = false;
  int64_t steps_ = 0;
  ops::Buffer<int32_t> inputs_;  // ids [B], write_rows [B], kv_lengths [B], then cos, sin [B, R/2] (fp32 bits)
  ops::Buffer<float> logits_;    // [B, V]
  ops::Buffer<int32_t> greedy_;  // [B]
  std::vector<float> angle_table_host_;  // cos then sin [capacity, R/2] of every position
  ops::Buffer<float> angle_table_;       // its copy on the backend (decode_feed)
  // history [B, capacity]: the greedy choice made at each cache row, written by the device (pinned,
  // mapped host memory on CUDA); history_device_ is its address in kernels.
  int32_t* history_ = nullptr;
  int32_t* history_device_ = nullptr;
  std::vector<int32_t> history_cpu_;
  struct Unread {
    void* event = nullptr;            // recorded after the step (null on the CPU: ops ran already)
    std::vector<int64_t> rows;        // per sequence, the cache position the step wrote
  };
  std::vector<Unread> unread_;        // oldest first
  std::vector<void*> events_;         // kMaxUnread, used round robin
  int64_t events_used_ = 0;
  void* pool_ = nullptr;
  void* graph_ = nullptr;
};

// Teacher-forced MTP evaluation over a whole sequence: depth k (1-based) at index i predicts
// ids[i + k + 1] from ids[i + k] and depth k-1's hidden state at i. Returns per depth [T - k, V].
std::vector<std::vector<float>> mtp_logits(const Model& m, const int32_t* ids, int64_t T,
                                           const float* final_hidden, const TapFn& tap = {});

}  // namespace dsv
