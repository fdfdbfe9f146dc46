// Device memory for ops::Buffer: freed blocks are kept and reused instead of going back to the
// driver, because cudaMalloc is slow and cudaFree synchronizes the device, and the model code makes
// short-lived buffers in every layer. All work runs on one stream, so a block released after its
// last use can be handed out again in stream order. Sizes are rounded (512 B, or 2 MiB above
// 1 MiB) so that repeated shapes hit the cache.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <unordered_map>

#include "backends/cuda/cuda_ops.h"

namespace dsv::ops::cuda {
namespace {

struct CachingAllocator {
  std::mutex mu;
  std::unordered_map<void*, size_t> size_of;  // every block we hold
  std::multimap<size_t, void*> free_blocks;   // size -> block
  size_t in_use = 0, peak_in_use = 0, held = 0;  // bytes handed out now / at most / from the driver

  void note_use(size_t size) {
    in_use += size;
    peak_in_use = in_use > peak_in_use ? in_use : peak_in_use;
  }

  static size_t round_up(size_t bytes) {
    const size_t unit = bytes > (size_t{1} << 20) ? (size_t{2} << 20) : 512;
    return (bytes + unit - 1) / unit * unit;
  }

  void* allocate(size_t bytes) {
    const size_t size = round_up(bytes);
    std::lock_guard<std::mutex> lock(mu);
    // Reuse a free block of this size, or one at most twice as large.
    auto it = free_blocks.lower_bound(size);
    if (it != free_blocks.end() && it->first <= 2 * size) {
      void* p = it->second;
      note_use(it->first);
      free_blocks.erase(it);
      return p;
    }
    void* p = nullptr;
    if (cudaMalloc(&p, size) != cudaSuccess) {
      cudaGetLastError();  // clear the error, give the cache back to the driver, retry once
      release_cached_locked();
      if (cudaMalloc(&p, size) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
      }
    }
    size_of[p] = size;
    held += size;
    note_use(size);
    return p;
  }

  void release(void* p) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = size_of.find(p);
    if (it == size_of.end()) return;
    in_use -= it->second;
    free_blocks.emplace(it->second, p);
  }

  void release_cached_locked() {
    cudaDeviceSynchronize();
    for (auto& [size, p] : free_blocks) {
      cudaFree(p);
      held -= size;
      size_of.erase(p);
    }
    free_blocks.clear();
  }
};

CachingAllocator& allocator() {
  static auto* a = new CachingAllocator();  // never destroyed: buffers may outlive static teardown
  return *a;
}

}  // namespace

void* cached_allocate(size_t bytes) { return allocator().allocate(bytes); }
void cached_release(void* p) { allocator().release(p); }

AllocatorStats allocator_stats() {
  CachingAllocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  return AllocatorStats{a.in_use, a.peak_in_use, a.held};
}

void reset_peak_memory() {
  CachingAllocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  a.peak_in_use = a.in_use;
}

}  // namespace dsv::ops::cuda
