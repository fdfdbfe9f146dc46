// A kernel timeline for any CUDA program, without Nsight Systems (the GPU host has none): a CUPTI
// injection library that records every kernel, memcpy and memset with its device start and end
// times, captured-graph kernels included (one record per node per replay), and writes them as CSV.
//
//   export CUDA_INJECTION64_PATH=build/cuda/bench/libdsv_kernel_trace.so DSV_KERNEL_TRACE=trace.csv
//   ./build/cuda/tools/dsv/dsv bench infer --device cuda --config ...
//   python3 bench/trace_summary.py trace.csv        # per-node durations and critical-path shares
//
// The CUDA driver loads the library named by CUDA_INJECTION64_PATH and calls InitializeInjection()
// before the first context is made. Records reach us in buffers that CUPTI fills and hands back;
// the last ones are flushed at exit. Columns: kind (kernel, memcpy, memset), start_ns, end_ns,
// stream, graph id, graph node id, correlation id (a graph launch's kernels share theirs), grid
// x/y/z, block x, cluster x, bytes (copies) and the kernel's demangled-as-given name.
// Tracing adds a little time per kernel; use it to see where a step's time goes, not as the figure.
#include <cupti.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace {

std::FILE* g_out = nullptr;
std::mutex g_mutex;
constexpr size_t kBufferBytes = 8u << 20;

void fail(const char* what, CUptiResult r) {
  const char* text = nullptr;
  cuptiGetResultString(r, &text);
  std::fprintf(stderr, "dsv kernel_trace: %s failed: %s\n", what, text ? text : "unknown CUPTI error");
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;  // as many as fit
}

// Names can hold commas (template arguments): quote them, doubling quotes inside.
void write_name(std::FILE* f, const char* name) {
  std::fputc('"', f);
  for (const char* c = name ? name : ""; *c; ++c) {
    if (*c == '"') std::fputc('"', f);
    std::fputc(*c, f);
  }
  std::fputc('"', f);
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::lock_guard<std::mutex> lock(g_mutex);
  CUpti_Activity* record = nullptr;
  while (g_out && cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
      std::fprintf(g_out, "kernel,%llu,%llu,%u,%u,%llu,%u,%d,%d,%d,%d,%u,0,", static_cast<unsigned long long>(k->start),
                   static_cast<unsigned long long>(k->end), k->streamId, k->graphId,
                   static_cast<unsigned long long>(k->graphNodeId), k->correlationId, k->gridX, k->gridY, k->gridZ,
                   k->blockX, k->clusterX);
      write_name(g_out, k->name);
      std::fputc('\n', g_out);
    } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(record);
      std::fprintf(g_out, "memcpy,%llu,%llu,%u,%u,%llu,%u,0,0,0,0,0,%llu,\"copy kind %u\"\n",
                   static_cast<unsigned long long>(m->start), static_cast<unsigned long long>(m->end), m->streamId,
                   m->graphId, static_cast<unsigned long long>(m->graphNodeId), m->correlationId,
                   static_cast<unsigned long long>(m->bytes), static_cast<unsigned>(m->copyKind));
    } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(record);
      std::fprintf(g_out, "memset,%llu,%llu,%u,%u,%llu,%u,0,0,0,0,0,%llu,\"memset\"\n",
                   static_cast<unsigned long long>(m->start), static_cast<unsigned long long>(m->end), m->streamId,
                   m->graphId, static_cast<unsigned long long>(m->graphNodeId), m->correlationId,
                   static_cast<unsigned long long>(m->bytes));
    }
  }
  size_t dropped = 0;
  if (cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped) == CUPTI_SUCCESS && dropped > 0)
    std::fprintf(stderr, "dsv kernel_trace: %zu records dropped\n", dropped);
  std::free(buffer);
}

void finish() {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_out) std::fclose(g_out);
  g_out = nullptr;
}

}  // namespace

extern "C" int InitializeInjection() {
  const char* path = std::getenv("DSV_KERNEL_TRACE");
  g_out = std::fopen(path && *path ? path : "kernel_trace.csv", "w");
  if (!g_out) {
    std::fprintf(stderr, "dsv kernel_trace: cannot write %s\n", path && *path ? path : "kernel_trace.csv");
    return 0;
  }
  std::fprintf(g_out, "kind,start_ns,end_ns,stream,graph,node,correlation,grid_x,grid_y,grid_z,block_x,cluster_x,"
                      "bytes,name\n");
  CUptiResult r = cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
  if (r != CUPTI_SUCCESS) return fail("cuptiActivityRegisterCallbacks", r), 0;
  for (CUpti_ActivityKind kind :
       {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY, CUPTI_ACTIVITY_KIND_MEMSET}) {
    r = cuptiActivityEnable(kind);
    if (r != CUPTI_SUCCESS) return fail("cuptiActivityEnable", r), 0;
  }
  std::atexit(finish);
  return 1;
}
