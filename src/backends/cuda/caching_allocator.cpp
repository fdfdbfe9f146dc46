// Device memory for ops::Buffer: freed blocks are kept and reused instead of going back to the
// driver, because cudaMalloc is slow and cudaFree synchronizes the device, and the model code makes
// short-lived buffers in every layer. Work runs on the legacy default stream or on blocking streams
// (a decode graph's), which the legacy stream orders with, so a block released after its last use can
// be handed out again in stream order. While a branch (ops::Branch) runs work on a second stream, a
// released block may still be in use on the other one: releases are held until the last open branch
// joins, after which both streams' earlier work precedes anything issued. Sizes are rounded (512 B, or 2 MiB above
// 1 MiB) so that repeated shapes hit the cache. Captured graphs get private pools (see cuda_ops.h).
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "backends/cuda/cuda_ops.h"

namespace dsv::ops::cuda {
namespace {

// Free blocks of one pool: the shared one, or a captured graph's private one.
struct Pool {
  std::multimap<size_t, void*> free_blocks;  // size -> block
};

struct Block {
  size_t size = 0;
  Pool* pool = nullptr;  // where the block returns when released
};

thread_local Pool* active_private_pool = nullptr;

struct CachingAllocator {
  std::mutex mu;
  Pool shared;
  std::unordered_map<void*, Block> blocks;  // every block we hold
  size_t in_use = 0, peak_in_use = 0, held = 0;  // bytes handed out now / at most / from the driver
  int open_branches = 0;
  std::vector<void*> held_back;  // released while a branch was open

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
    Pool* pool = active_private_pool ? active_private_pool : &shared;
    std::lock_guard<std::mutex> lock(mu);
    // Reuse a free block of this size, or one at most twice as large.
    auto it = pool->free_blocks.lower_bound(size);
    if (it != pool->free_blocks.end() && it->first <= 2 * size) {
      void* p = it->second;
      note_use(it->first);
      pool->free_blocks.erase(it);
      return p;
    }
    void* p = nullptr;
    if (cudaMalloc(&p, size) != cudaSuccess) {
      cudaGetLastError();  // clear the error, give the shared cache back to the driver, retry once
      release_cached_locked();
      if (cudaMalloc(&p, size) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
      }
    }
    blocks[p] = Block{size, pool};
    held += size;
    note_use(size);
    return p;
  }

  void release(void* p) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = blocks.find(p);
    if (it == blocks.end()) return;
    in_use -= it->second.size;
    if (open_branches > 0) held_back.push_back(p);
    else it->second.pool->free_blocks.emplace(it->second.size, p);
  }

  void branch_open() {
    std::lock_guard<std::mutex> lock(mu);
    ++open_branches;
  }

  void branch_close() {
    std::lock_guard<std::mutex> lock(mu);
    if (open_branches > 0 && --open_branches == 0) {
      for (void* p : held_back) {
        const Block& b = blocks.at(p);
        b.pool->free_blocks.emplace(b.size, p);
      }
      held_back.clear();
    }
  }

  void release_cached_locked() {
    cudaDeviceSynchronize();
    for (auto& [size, p] : shared.free_blocks) {
      cudaFree(p);
      held -= size;
      blocks.erase(p);
    }
    shared.free_blocks.clear();
  }

  // Frees every block of a private pool (all must have been released).
  void destroy(Pool* pool) {
    cudaDeviceSynchronize();
    std::lock_guard<std::mutex> lock(mu);
    std::erase_if(held_back, [&](void* p) { return blocks.at(p).pool == pool; });
    for (auto it = blocks.begin(); it != blocks.end();) {
      if (it->second.pool != pool) {
        ++it;
        continue;
      }
      cudaFree(it->first);
      held -= it->second.size;
      it = blocks.erase(it);
    }
    delete pool;
  }
};

CachingAllocator& allocator() {
  static auto* a = new CachingAllocator();  // never destroyed: buffers may outlive static teardown
  return *a;
}

}  // namespace

void* cached_allocate(size_t bytes) { return allocator().allocate(bytes); }
void cached_release(void* p) { allocator().release(p); }

void branch_open() { allocator().branch_open(); }
void branch_close() { allocator().branch_close(); }

void* pool_create() { return new Pool(); }
void pool_destroy(void* pool) {
  if (pool) allocator().destroy(static_cast<Pool*>(pool));
}
void pool_use(void* pool) { active_private_pool = static_cast<Pool*>(pool); }

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
