#include "backends/cuda/cuda_ops.h"

namespace dsv::ops::cuda {

cudaError_t query_device(int device, DeviceInfo* out) {
  cudaDeviceProp prop{};
  const cudaError_t err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess) return err;
  out->name = prop.name;
  out->sm_count = prop.multiProcessorCount;
  out->major = prop.major;
  out->minor = prop.minor;
  out->total_memory = prop.totalGlobalMem;
  out->l2_bytes = static_cast<size_t>(prop.l2CacheSize);
  out->shared_per_block_optin = prop.sharedMemPerBlockOptin;
  return cudaSuccess;
}

}  // namespace dsv::ops::cuda
