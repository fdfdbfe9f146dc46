// Device side of the Hopper bulk tensor copy (TMA) and the shared-memory barriers it completes
// (mbarrier), for warp-specialized kernels: a producer thread issues tile copies that signal a "full"
// barrier with their byte count; consumers wait on it, use the tile, and arrive on an "empty" barrier
// that the producer waits on before it refills the slot. tensor_map.h makes the maps on the host.
//
// Phases: a barrier's phase completes when its expected arrivals (and, for full barriers, bytes) are
// in; waiters name the parity of the phase they wait for (0 for the first completion, then 1, 0, ...).
#pragma once
#include <cuda.h>

#include <cstdint>

namespace dsv::ops::cuda::tma {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void barrier_init(uint64_t* bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(arrivals) : "memory");
}
// After the initializing thread's inits, before the barrier that publishes them to the block.
__device__ __forceinline__ void barrier_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// The producer's arrival announcing `bytes` of copies that will complete on this barrier.
__device__ __forceinline__ void arrive_expect_bytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}

// One box of a 2-D map at (inner coordinate c0, outer c1) into shared memory at dst (1024-byte aligned
// for the 128-byte swizzle); completes `bar` with the box's bytes (zeros included for parts outside).
__device__ __forceinline__ void load_2d(void* dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_addr(bar))
      : "memory");
}

// Maps in global memory that a kernel earlier in the stream wrote (replace_address): make the tensor
// map proxy see the new contents before the first copy through them.
__device__ __forceinline__ void acquire_map(const CUtensorMap* map) {
  asm volatile("fence.proxy.tensormap::generic.acquire.gpu [%0], 128;\n" ::"l"(reinterpret_cast<uint64_t>(map))
               : "memory");
}
// *dst = *tmpl with its global address replaced by `base` (dst in global memory, 64-byte aligned).
__device__ __forceinline__ void copy_map_with_address(CUtensorMap* dst, const CUtensorMap& tmpl, const void* base) {
  const uint4* s = reinterpret_cast<const uint4*>(&tmpl);
  uint4* d = reinterpret_cast<uint4*>(dst);
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(CUtensorMap) / sizeof(uint4)); ++i) d[i] = s[i];
  asm volatile("tensormap.replace.tile.global_address.global.b1024.b64 [%0], %1;\n" ::"l"(
                   reinterpret_cast<uint64_t>(dst)),
               "l"(reinterpret_cast<uint64_t>(base))
               : "memory");
  asm volatile("fence.proxy.tensormap::generic.release.gpu;\n" ::: "memory");
}

}  // namespace dsv::ops::cuda::tma
