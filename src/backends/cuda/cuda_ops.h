// CUDA backend (sm_90a). Launchers take the same Params as the CPU ops (src/ops/ops.h) with device
// pointers, and return cudaError_t; callers check it. This header stays free of host-library
// headers so nvcc can include it. Model-level dispatch to these ops arrives with issue 4.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "ops/ops.h"

namespace dsv::ops::cuda {

struct DeviceInfo {
  std::string name;
  int sm_count = 0, major = 0, minor = 0;
  size_t total_memory = 0, l2_bytes = 0, shared_per_block_optin = 0;
};
cudaError_t query_device(int device, DeviceInfo* out);

cudaError_t rmsnorm(const RmsNormParams& p, cudaStream_t stream);
cudaError_t add_rmsnorm(const AddRmsNormParams& p, cudaStream_t stream);
cudaError_t swiglu(const SwigluParams& p, cudaStream_t stream);
// One GEMV kernel for M <= 8 rows with aligned bf16 weights (linear_bf16.cu); otherwise the two
// products through `linear` and the SwiGLU kernel.
cudaError_t gated_linear(const GatedLinearParams& p, cudaStream_t stream);
cudaError_t rope(const RopeParams& p, cudaStream_t stream);
cudaError_t rope_table(const RopeTableParams& p, cudaStream_t stream);
// Reference-grade attention kernel (one block per query and head, online softmax over S): correct
// for any sizes, not tuned. The flash-style prefill and absorbed decode kernels replace it.
cudaError_t attention(const AttentionParams& p, cudaStream_t stream);
// Tensor-core (TF32) causal attention, FlashAttention-2 tiling (flash_attention.cu): used in place of
// attention / attention_backward when products run in TF32 and flash_attention_supported holds
// (Hkv = H; head dims multiples of 8 up to 192 / 128, or of 16 up to 256). Deterministic.
bool flash_attention_supported(int64_t H, int64_t Hkv, int64_t Dqk, int64_t Dv, int64_t T, int64_t S);
cudaError_t flash_attention(const AttentionParams& p, cudaStream_t stream);
cudaError_t flash_attention_backward(const AttentionBackwardParams& p, cudaStream_t stream);
// The same on bf16 tensor cores (flash_attention_bf16.cu), used when products run in bf16
// (MatmulPrecision::Bf16): operands rounded to bf16, fp32 softmax and accumulation. Hkv = H, head dims
// multiples of 16 up to 192 (q.k) / 128 (v). Deterministic.
bool flash_attention_bf16_supported(int64_t H, int64_t Hkv, int64_t Dqk, int64_t Dv, int64_t T, int64_t S);
cudaError_t flash_attention_bf16(const AttentionParams& p, cudaStream_t stream);
cudaError_t flash_attention_bf16_backward(const AttentionBackwardParams& p, cudaStream_t stream);
// Absorbed-MLA decode over a bf16 latent cache (latent_decode_bf16.cu), called by `attention`: one
// query per head over shared rows K (k the row, v its first Dv values, row stride ks), q and P rounded
// to bf16 for mma.sync, key splits merged inside thread-block clusters. Applies when the shapes and
// alignments allow (Dv a multiple of 16 up to 512, Dqk and ks multiples of 8, 16-byte aligned rows).
bool latent_decode_bf16_applies(const AttentionParams& p, const uint16_t* K, const uint16_t* V, int64_t hkv,
                                int64_t ks, int64_t vs);
cudaError_t latent_decode_bf16(const AttentionParams& p, const uint16_t* K, int64_t ks, cudaStream_t stream);
// Second stage of the split decode kernels (attention.cu): out rows [rows, Dv] from `chunks` partials
// per row, each [max (natural log), sum, Dv unnormalized values] as softmax pieces.
cudaError_t decode_combine(const AttentionParams& p, int64_t rows, int64_t chunks, const float* partial,
                           cudaStream_t stream);
// D[r] = dout[r, :] . out[r, :] over rows x Dv (the softmax backward's row term), one warp per row.
cudaError_t attention_row_dots(const float* dout, const float* out, float* D, int64_t rows, int64_t Dv,
                               cudaStream_t stream);
// One block per token; E <= 1024.
cudaError_t route(const RouterParams& p, cudaStream_t stream);

cudaError_t embed(const EmbedParams& p, cudaStream_t stream);
cudaError_t add(const AddParams& p, cudaStream_t stream);
cudaError_t copy2d(const Copy2dParams& p, cudaStream_t stream);
cudaError_t gather_rows(const RowsParams& p, cudaStream_t stream);
cudaError_t scatter_add_rows(const RowsParams& p, cudaStream_t stream);
cudaError_t store_rows(const StoreRowsParams& p, cudaStream_t stream);
// One block per row (latent_rows.cu).
cudaError_t store_latent_rows(const LatentRowsParams& p, cudaStream_t stream);
// Slices of each row over blocks, then a merge per row; rows <= 65535.
cudaError_t argmax_rows(const ArgmaxParams& p, cudaStream_t stream);
// One small block loop over the sequences (decode_feed.cu).
cudaError_t decode_feed(const DecodeFeedParams& p, cudaStream_t stream);
cudaError_t fill_random(const FillRandomParams& p, cudaStream_t stream);
// Decode-sized T: grouped GEMV kernels (moe_experts.cu); more tokens with bf16 tables: the grouped
// tensor-core GEMMs below when they apply.
cudaError_t moe_experts(const MoeExpertsParams& p, cudaStream_t stream);
// moe_experts for prefill-sized T on bf16 tensor cores, routing planned on the device: one grouped GEMM
// for gate/up (SwiGLU in its epilogue), one for down, then the weighted combine (moe_grouped_gemm.cu).
// Needs bf16 tables, 0 < E <= kMaxGroupedGemmExperts, D and F multiples of 8.
constexpr int64_t kMaxGroupedGemmExperts = 1024;
bool moe_grouped_gemm_supported(const MoeExpertsParams& p);
cudaError_t moe_grouped_gemm(const MoeExpertsParams& p, cudaStream_t stream);
// gated_linear of prefill-sized M with bf16 weights and no biases on the same warp-specialized kernel
// (the SwiGLU in its epilogue, fp32 out): one product instead of two cuBLASLt calls and a SwiGLU pass.
constexpr int64_t kGatedTmaMinRows = 512;
bool gated_linear_tma_supported(const GatedLinearParams& p);
cudaError_t gated_linear_tma(const GatedLinearParams& p, cudaStream_t stream);
// Training experts on the same wgmma main loop (moe_train_experts.cu): needs D and F multiples of 8 and
// E <= kMoeTrainMaxExperts (ops.h).
bool moe_train_supported(const MoeTrainParams& p);
cudaError_t moe_train_forward(const MoeTrainParams& p, cudaStream_t stream);
cudaError_t moe_train_backward(const MoeTrainBackwardParams& p, cudaStream_t stream);
// Device-to-device copy bandwidth in bytes/s (bytes read + written), measured with events over
// `bytes`-sized buffers: the memory roofline that benchmarks report against.
double measure_copy_bandwidth(size_t bytes);

// The device allocator behind ops::Buffer on CUDA (caching_allocator.cpp).
void* cached_allocate(size_t bytes);
void cached_release(void* p);
// While at least one branch is open (ops::Branch: work on two streams), released blocks are held back
// instead of reused; the last close returns them.
void branch_open();
void branch_close();
// Private pools for captured graphs: while a pool is in use (on this thread), cached_allocate takes
// blocks from it (or the driver) and they return to it; the shared pool never sees them, so memory a
// graph replays into is never handed to anyone else. Destroying a pool synchronizes and frees it.
void* pool_create();
void pool_destroy(void* pool);
void pool_use(void* pool);  // null: the shared pool
struct AllocatorStats {
  size_t in_use = 0, peak_in_use = 0, held = 0;  // bytes in live buffers now, at most since reset, cached
};
AllocatorStats allocator_stats();
void reset_peak_memory();

// Fills ops::backend_table(Backend::Cuda) so that model code can run with Context{Backend::Cuda}.
// Call once before using the CUDA backend (the CLI and the GPU tests do).
void register_cuda_backend();

// linear through cuBLASLt (fp32 weights: TF32 off gives exact fp32 products, the CPU op's twin; bf16
// weights: bf16 tensor cores). Host code in linear.cpp; the handle is created once per thread.
cudaError_t linear(const LinearParams& p, cudaStream_t stream);
// bf16-weight products by GEMV kernels, 8 rows of x per pass (linear_bf16.cu): decode-sized M.
cudaError_t linear_bf16_rows(const LinearParams& p, cudaStream_t stream);
// The bf16 product of fp32 weights (p.w) for at most 8 rows, weights rounded in registers: no bf16
// copy first. *launched is false (and nothing ran) where the shapes or alignment do not suit it.
cudaError_t linear_f32w_bf16_rows(const LinearParams& p, cudaStream_t stream, bool* launched);
// The exact fp32 product of fp32 weights for at most 8 rows (the same kernels, nothing rounded);
// *launched as above.
cudaError_t linear_f32_rows(const LinearParams& p, cudaStream_t stream, bool* launched);
cudaError_t cast(const CastParams& p, cudaStream_t stream);

// Scratch of one launcher call: blocks from the caching allocator, released when it goes out of scope
// (stream-ordered: only later work on the same stream reuses them). get() gives null, and failed()
// turns true, once an allocation fails.
class DeviceScratch {
 public:
  DeviceScratch() = default;
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  ~DeviceScratch() {
    for (int i = 0; i < used_; ++i)
      if (ptr_[i]) cached_release(ptr_[i]);
  }
  template <typename T>
  T* get(int64_t n) {
    void* p = used_ < kMax ? cached_allocate(static_cast<size_t>(n > 0 ? n : 1) * sizeof(T)) : nullptr;
    if (used_ < kMax) ptr_[used_++] = p;
    failed_ = failed_ || p == nullptr;
    return static_cast<T*>(p);
  }
  // A bf16 copy of n fp32 values (rounded to nearest even) in *out.
  cudaError_t bf16_copy(const float* src, int64_t n, cudaStream_t stream, uint16_t** out) {
    *out = get<uint16_t>(n);
    if (!*out) return cudaErrorMemoryAllocation;
    return cast({.x = src, .y = *out, .n = n, .to_bf16 = true}, stream);
  }
  bool failed() const { return failed_; }

 private:
  static constexpr int kMax = 8;
  void* ptr_[kMax] = {};
  int used_ = 0;
  bool failed_ = false;
};

// ---- Training ops (twins of the CPU reference ops; same Params, device pointers). ----
// Unless noted, results do not depend on launch timing (fixed reduction orders, no atomics).

// dw through cuBLASLt in fp32 (linear.cpp); dbias through column_sum (two-stage, deterministic).
cudaError_t linear_weight_grad(const LinearWeightGradParams& p, cudaStream_t stream);
// Both gradients of a product; with bf16 products dy is rounded once for both (linear.cpp).
cudaError_t linear_backward(const LinearBackwardParams& p, cudaStream_t stream);
// out[c] (+)= sum_r a[r, c] * (b ? b[r, c] : 1) * (row_scale ? row_scale[r] : 1) for c < cols, rows
// in fixed chunks (partials in a cached scratch buffer, then summed in chunk order). train_reduce.cu.
cudaError_t column_sum(const float* a, int64_t a_stride, const float* b, int64_t b_stride, const float* row_scale,
                       float* out, int64_t rows, int64_t cols, bool accumulate, cudaStream_t stream);
// One block per row for dx (and 1/rms per row into scratch), then column_sum for dweight.
cudaError_t rmsnorm_backward(const RmsNormBackwardParams& p, cudaStream_t stream);
// Two kernels: per (query, head) the logsumexp and D = dout . out (into a cached scratch) and then
// dq; per (key, head) dk and dv. Probabilities recomputed from q, k; no atomics (deterministic).
cudaError_t attention_backward(const AttentionBackwardParams& p, cudaStream_t stream);
cudaError_t swiglu_backward(const SwigluBackwardParams& p, cudaStream_t stream);
// No atomics: per column, table rows partitioned over blocks, tokens added in order (deterministic).
cudaError_t embed_backward(const EmbedBackwardParams& p, cudaStream_t stream);
// One block per token; any E.
cudaError_t route_backward(const RouteBackwardParams& p, cudaStream_t stream);
// One warp per row.
cudaError_t row_dots(const RowDotsParams& p, cudaStream_t stream);
// One block per row, max-subtracted; out-of-range targets (>= V) give a NaN loss.
cudaError_t cross_entropy(const CrossEntropyParams& p, cudaStream_t stream);
cudaError_t axpby(const AxpbyParams& p, cudaStream_t stream);
// Fixed grid of per-block partial sums (double) into scratch, then one block sums them in order.
cudaError_t sum_squares(const SumSquaresParams& p, cudaStream_t stream);
cudaError_t adamw(const AdamWParams& p, cudaStream_t stream);

}  // namespace dsv::ops::cuda
