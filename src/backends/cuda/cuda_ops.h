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
cudaError_t swiglu(const SwigluParams& p, cudaStream_t stream);
cudaError_t rope(const RopeParams& p, cudaStream_t stream);
// Reference-grade attention kernel (one block per query and head, online softmax over S): correct
// for any sizes, not tuned. The flash-style prefill and absorbed decode kernels replace it.
cudaError_t attention(const AttentionParams& p, cudaStream_t stream);
// One block per token; E <= 1024.
cudaError_t route(const RouterParams& p, cudaStream_t stream);

cudaError_t embed(const EmbedParams& p, cudaStream_t stream);
cudaError_t add(const AddParams& p, cudaStream_t stream);
cudaError_t copy2d(const Copy2dParams& p, cudaStream_t stream);
cudaError_t gather_rows(const RowsParams& p, cudaStream_t stream);
cudaError_t scatter_add_rows(const RowsParams& p, cudaStream_t stream);
cudaError_t fill_random(const FillRandomParams& p, cudaStream_t stream);
cudaError_t moe_experts(const MoeExpertsParams& p, cudaStream_t stream);
// Device-to-device copy bandwidth in bytes/s (bytes read + written), measured with events over
// `bytes`-sized buffers: the memory roofline that benchmarks report against.
double measure_copy_bandwidth(size_t bytes);

// The device allocator behind ops::Buffer on CUDA (caching_allocator.cpp).
void* cached_allocate(size_t bytes);
void cached_release(void* p);

// Fills ops::backend_table(Backend::Cuda) so that model code can run with Context{Backend::Cuda}.
// Call once before using the CUDA backend (the CLI and the GPU tests do).
void register_cuda_backend();

// fp32 linear through cuBLASLt (TF32 off: exact fp32 products, the CPU op's twin). Host code in
// linear.cpp; the handle is created once per thread.
cudaError_t linear(const LinearParams& p, cudaStream_t stream);

}  // namespace dsv::ops::cuda
