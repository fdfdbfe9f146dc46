// Programmatic dependent launch (PDL, sm_90): a kernel launched with launch_dependent() may start
// while the kernel before it in the stream is still running, so its launch, block scheduling and any
// work that reads only constant data (loading its weights) overlap the previous kernel. A decode step
// is a chain of ~100 kernels, most of them small, whose start-up costs and latencies rather than their
// bytes set much of the step time.
//
// The contract for a kernel launched this way (the launchers in this directory keep it):
//   1. grid_dependency_wait() runs before the kernel reads anything an earlier op wrote and before it
//      writes anything at all. Only reads of data that no op in flight writes (model weights) may
//      come first: the decode GEMVs load their weight rows into registers before it (linear_bf16.cu).
//      Every block calls it, so a kernel never completes before the one it follows, and completion
//      stays ordered down the whole stream (transitively).
//   2. allow_dependents() may come anywhere; before it the next kernel cannot launch early.
// Kernels launched the ordinary way wait for everything before them, as always; the two kinds mix
// freely in one stream and inside captured graphs.
// DSV_PDL=0 in the environment launches everything the ordinary way (for A/B measurements).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <utility>

namespace dsv::ops::cuda {

// Waits until the grids this one depends on have completed and their writes are visible.
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
// Lets the next kernel in the stream launch (once every block of this one has called it or exited).
__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// The usual start of a kernel with nothing to load early: let the next kernel launch, then wait.
__device__ __forceinline__ void dependent_start() {
  allow_dependents();
  grid_dependency_wait();
}

inline bool pdl_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("DSV_PDL");
    return !(v && v[0] == '0');
  }();
  return enabled;
}

// kernel<<<grid, block, smem, stream>>>(args...) with the programmatic-serialization attribute, and
// with thread-block clusters of cluster_x blocks along x when cluster_x > 0 (grid.x a multiple of it).
template <typename... Params, typename... Args>
cudaError_t launch_with_attributes(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                   cudaStream_t stream, unsigned cluster_x, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[2];
  unsigned n = 0;
  if (cluster_x > 0) {
    attribute[n].id = cudaLaunchAttributeClusterDimension;
    attribute[n].val.clusterDim.x = cluster_x;
    attribute[n].val.clusterDim.y = 1;
    attribute[n].val.clusterDim.z = 1;
    ++n;
  }
  if (pdl_enabled()) {
    attribute[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  config.attrs = attribute;
  config.numAttrs = n;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

template <typename... Params, typename... Args>
cudaError_t launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             Args&&... args) {
  return launch_with_attributes(kernel, grid, block, smem, stream, 0u, std::forward<Args>(args)...);
}

// The same with thread-block clusters of cluster_x (>= 1) blocks along x.
template <typename... Params, typename... Args>
cudaError_t launch_dependent_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                     cudaStream_t stream, unsigned cluster_x, Args&&... args) {
  return launch_with_attributes(kernel, grid, block, smem, stream, cluster_x, std::forward<Args>(args)...);
}

}  // namespace dsv::ops::cuda
