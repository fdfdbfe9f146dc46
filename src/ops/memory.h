// Buffer<T>: memory of one backend (host memory on the CPU, device memory on CUDA), owned RAII.
// Model code allocates activations through it so the same code runs on either backend.
#pragma once
#include <cstddef>
#include <cstring>
#include <vector>

#include "ops/ops.h"

namespace dsv::ops {

void* allocate(Backend b, size_t bytes);
void release(Backend b, void* p);
void copy_to_backend(const Context& ctx, void* dst, const void* src, size_t bytes);  // host -> backend
void copy_to_host(const Context& ctx, void* dst, const void* src, size_t bytes);     // backend -> host

template <typename T>
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend b, size_t n) : backend_(b), n_(n), data_(static_cast<T*>(allocate(b, n * sizeof(T)))) {}
  Buffer(const Context& ctx, const T* host, size_t n) : Buffer(ctx.backend, n) {
    copy_to_backend(ctx, data_, host, n * sizeof(T));
  }
  ~Buffer() { release(backend_, data_); }
  Buffer(Buffer&& o) noexcept : backend_(o.backend_), n_(o.n_), data_(o.data_) { o.data_ = nullptr; o.n_ = 0; }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      release(backend_, data_);
      backend_ = o.backend_; n_ = o.n_; data_ = o.data_;
      o.data_ = nullptr; o.n_ = 0;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  T* data() const { return data_; }
  size_t size() const { return n_; }
  std::vector<T> to_host(const Context& ctx) const {
    std::vector<T> h(n_);
    copy_to_host(ctx, h.data(), data_, n_ * sizeof(T));
    return h;
  }

 private:
  Backend backend_ = Backend::Cpu;
  size_t n_ = 0;
  T* data_ = nullptr;
};

}  // namespace dsv::ops
