#include "ops/memory.h"

#include <cstdlib>
#include <new>

#include "core/error.h"

namespace dsv::ops {

void* allocate(Backend b, size_t bytes) {
  if (bytes == 0) return nullptr;
  if (b == Backend::Cpu) {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);  // defined contents, as device buffers are not
    return p;
  }
  DSV_CHECK(backend_available(b), "the CUDA backend is not available in this build");
  void* p = backend_table(b).allocate(bytes);
  DSV_CHECK(p != nullptr, "device allocation of {} bytes failed (out of GPU memory?)", bytes);
  return p;
}

void release(Backend b, void* p) {
  if (!p) return;
  if (b == Backend::Cpu) std::free(p);
  else backend_table(b).release(p);
}

void copy_to_backend(const Context& ctx, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (ctx.backend == Backend::Cpu) std::memcpy(dst, src, bytes);
  else backend_table(ctx.backend).to_device(dst, src, bytes, ctx.stream);
}

void copy_to_host(const Context& ctx, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (ctx.backend == Backend::Cpu) std::memcpy(dst, src, bytes);
  else backend_table(ctx.backend).to_host(dst, src, bytes, ctx.stream);
}

Branch::Branch(const Context& main) : main_(main), side_(main) {
  if (main.backend == Backend::Cpu) return;
  const BackendTable& t = backend_table(main.backend);
  if (!t.fork || !t.join) return;
  side_.stream = t.fork(main.stream);
  open_ = forked_ = true;
}

void Branch::join() {
  if (!open_) return;
  open_ = false;
  backend_table(main_.backend).join(main_.stream, side_.stream);
}

Branch::~Branch() {
  try {
    join();
  } catch (...) {  // a destructor must not throw; the error surfaces at the next synchronizing call
  }
}

}  // namespace dsv::ops
