// Registers the CUDA ops and memory functions in ops::backend_table(Backend::Cuda). Failures become
// dsv::Error naming the op and the CUDA error.
#include <cuda_runtime.h>

#include <deque>
#include <map>

#include "backends/cuda/cuda_ops.h"
#include "core/error.h"

namespace dsv::ops::cuda {
namespace {

void check(cudaError_t e, const char* what) {
  DSV_CHECK(e == cudaSuccess, "CUDA {} failed: {} ({})", what, cudaGetErrorString(e), static_cast<int>(e));
}
cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
// bf16 products (train.bf16), or keys and values of a bf16 model: the bf16 tensor-core attention
// where its shapes allow.
bool takes_bf16_flash(const AttentionParams& p) {
  return (matmul_precision() == MatmulPrecision::Bf16 || p.bf16_operands) && p.k && !p.k_bf16 && p.batch == 1 &&
         !p.kv_lengths && flash_attention_bf16_supported(p.H, p.Hkv, p.Dqk, p.Dv, p.T, p.S);
}

// The side streams of a main stream, made on first use and kept for the process, with the events
// that order each with the main one (an event may be recorded again at once: a wait binds to the
// record before it). Branches open at the same time (MLA's latent rows and q's rope) each get a side
// stream of their own, so their chains overlap each other too, not only the main one.
struct SideStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t forked = nullptr, joined = nullptr;
  bool open = false;
};

// A free side stream of `main` (made if all are in use), or the one that is `side` when given.
SideStream& side_of(cudaStream_t main, cudaStream_t side = nullptr) {
  thread_local std::map<cudaStream_t, std::deque<SideStream>> sides;
  std::deque<SideStream>& all = sides[main];
  for (SideStream& s : all)
    if (side ? s.stream == side : !s.open) return s;
  DSV_CHECK(!side, "branch join: not a side stream of this stream");
  SideStream& s = all.emplace_back();
  // Blocking, like the decode streams: the legacy stream's synchronous copies order with it.
  check(cudaStreamCreate(&s.stream), "side stream create");
  check(cudaEventCreateWithFlags(&s.forked, cudaEventDisableTiming), "branch event create");
  check(cudaEventCreateWithFlags(&s.joined, cudaEventDisableTiming), "branch event create");
  return s;
}

}  // namespace

void register_cuda_backend() {
  int count = 0;
  check(cudaGetDeviceCount(&count), "device query");
  DSV_CHECK(count > 0, "no CUDA device is visible");
  BackendTable& t = backend_table(Backend::Cuda);
  t.linear = [](const LinearParams& p, void* s) { check(linear(p, as_stream(s)), "linear"); };
  t.rmsnorm = [](const RmsNormParams& p, void* s) { check(rmsnorm(p, as_stream(s)), "rmsnorm"); };
  t.add_rmsnorm = [](const AddRmsNormParams& p, void* s) { check(add_rmsnorm(p, as_stream(s)), "add_rmsnorm"); };
  t.rope = [](const RopeParams& p, void* s) { check(rope(p, as_stream(s)), "rope"); };
  t.rope_table = [](const RopeTableParams& p, void* s) { check(rope_table(p, as_stream(s)), "rope_table"); };
  // TF32 or bf16 products (train.tf32 / train.bf16), or keys and values of a bf16 model: attention on
  // tensor cores too, where the shapes allow (bf16 takes the TF32 kernels for head dims the bf16 ones
  // do not cover).
  t.attention = [](const AttentionParams& p, void* s) {
    if (takes_bf16_flash(p)) return check(flash_attention_bf16(p, as_stream(s)), "flash_attention_bf16");
    const MatmulPrecision mp = matmul_precision();
    if ((mp == MatmulPrecision::Bf16 || mp == MatmulPrecision::Tf32 || p.bf16_operands) && !p.k_bf16 &&
        p.batch == 1 && !p.kv_lengths && flash_attention_supported(p.H, p.Hkv, p.Dqk, p.Dv, p.T, p.S))
      return check(flash_attention(p, as_stream(s)), "flash_attention");
    check(attention(p, as_stream(s)), "attention");
  };
  // The bf16 kernels pack their own head-major copies, from any head strides and shared key tail.
  t.attention_reads_layout = takes_bf16_flash;
  t.swiglu = [](const SwigluParams& p, void* s) { check(swiglu(p, as_stream(s)), "swiglu"); };
  t.gated_linear = [](const GatedLinearParams& p, void* s) { check(gated_linear(p, as_stream(s)), "gated_linear"); };
  t.route = [](const RouterParams& p, void* s) { check(route(p, as_stream(s)), "route"); };
  t.embed = [](const EmbedParams& p, void* s) { check(embed(p, as_stream(s)), "embed"); };
  t.add = [](const AddParams& p, void* s) { check(add(p, as_stream(s)), "add"); };
  t.copy2d = [](const Copy2dParams& p, void* s) { check(copy2d(p, as_stream(s)), "copy2d"); };
  t.gather_rows = [](const RowsParams& p, void* s) { check(gather_rows(p, as_stream(s)), "gather_rows"); };
  t.scatter_add_rows = [](const RowsParams& p, void* s) {
    check(scatter_add_rows(p, as_stream(s)), "scatter_add_rows");
  };
  t.fill_random = [](const FillRandomParams& p, void* s) { check(fill_random(p, as_stream(s)), "fill_random"); };
  t.moe_experts = [](const MoeExpertsParams& p, void* s) { check(moe_experts(p, as_stream(s)), "moe_experts"); };
  t.cast = [](const CastParams& p, void* s) { check(cast(p, as_stream(s)), "cast"); };
  t.linear_weight_grad = [](const LinearWeightGradParams& p, void* s) {
    check(linear_weight_grad(p, as_stream(s)), "linear_weight_grad");
  };
  t.linear_backward = [](const LinearBackwardParams& p, void* s) {
    check(linear_backward(p, as_stream(s)), "linear_backward");
  };
  t.rmsnorm_backward = [](const RmsNormBackwardParams& p, void* s) {
    check(rmsnorm_backward(p, as_stream(s)), "rmsnorm_backward");
  };
  t.attention_backward = [](const AttentionBackwardParams& p, void* s) {
    const MatmulPrecision mp = matmul_precision();
    if (mp == MatmulPrecision::Bf16 && flash_attention_bf16_supported(p.H, p.H, p.Dqk, p.Dv, p.T, p.S))
      return check(flash_attention_bf16_backward(p, as_stream(s)), "flash_attention_bf16_backward");
    if (mp != MatmulPrecision::Fp32 && flash_attention_supported(p.H, p.H, p.Dqk, p.Dv, p.T, p.S))
      return check(flash_attention_backward(p, as_stream(s)), "flash_attention_backward");
    check(attention_backward(p, as_stream(s)), "attention_backward");
  };
  t.swiglu_backward = [](const SwigluBackwardParams& p, void* s) {
    check(swiglu_backward(p, as_stream(s)), "swiglu_backward");
  };
  t.embed_backward = [](const EmbedBackwardParams& p, void* s) {
    check(embed_backward(p, as_stream(s)), "embed_backward");
  };
  t.route_backward = [](const RouteBackwardParams& p, void* s) {
    check(route_backward(p, as_stream(s)), "route_backward");
  };
  t.row_dots = [](const RowDotsParams& p, void* s) { check(row_dots(p, as_stream(s)), "row_dots"); };
  t.cross_entropy = [](const CrossEntropyParams& p, void* s) {
    check(cross_entropy(p, as_stream(s)), "cross_entropy");
  };
  t.axpby = [](const AxpbyParams& p, void* s) { check(axpby(p, as_stream(s)), "axpby"); };
  t.sum_squares = [](const SumSquaresParams& p, void* s) { check(sum_squares(p, as_stream(s)), "sum_squares"); };
  t.adamw = [](const AdamWParams& p, void* s) { check(adamw(p, as_stream(s)), "adamw"); };
  t.moe_train_forward = [](const MoeTrainParams& p, void* s) {
    DSV_CHECK(moe_train_supported(p), "moe_train_forward on CUDA needs D and F multiples of 8 and at most {} experts "
              "(found D={} F={} E={})", kMoeTrainMaxExperts, p.D, p.F, p.E);
    check(moe_train_forward(p, as_stream(s)), "moe_train_forward");
  };
  t.moe_train_backward = [](const MoeTrainBackwardParams& p, void* s) {
    DSV_CHECK(moe_train_supported(p.fwd), "moe_train_backward on CUDA needs D and F multiples of 8 and at most {} "
              "experts (found D={} F={} E={})", kMoeTrainMaxExperts, p.fwd.D, p.fwd.F, p.fwd.E);
    check(moe_train_backward(p, as_stream(s)), "moe_train_backward");
  };
  t.allocate = [](size_t bytes) -> void* { return cached_allocate(bytes); };
  t.release = [](void* p) { cached_release(p); };
  // Synchronous copies: the host side of a copy may be a temporary that dies right after the call.
  t.to_device = [](void* dst, const void* src, size_t bytes, void*) {
    check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "copy to device");
  };
  t.to_host = [](void* dst, const void* src, size_t bytes, void*) {
    check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "copy to host");
  };
  t.synchronize = [](void* s) { check(cudaStreamSynchronize(as_stream(s)), "synchronize"); };
  t.store_rows = [](const StoreRowsParams& p, void* s) { check(store_rows(p, as_stream(s)), "store_rows"); };
  t.store_latent_rows = [](const LatentRowsParams& p, void* s) {
    check(store_latent_rows(p, as_stream(s)), "store_latent_rows");
  };
  t.argmax_rows = [](const ArgmaxParams& p, void* s) { check(argmax_rows(p, as_stream(s)), "argmax_rows"); };
  t.decode_feed = [](const DecodeFeedParams& p, void* s) { check(decode_feed(p, as_stream(s)), "decode_feed"); };
  t.host_mapped_allocate = [](size_t bytes, void** device_view) -> void* {
    void* host = nullptr;
    check(cudaHostAlloc(&host, bytes, cudaHostAllocMapped), "pinned host allocation");
    const cudaError_t e = cudaHostGetDevicePointer(device_view, host, 0);
    if (e != cudaSuccess) cudaFreeHost(host);
    check(e, "device view of pinned host memory");
    return host;
  };
  t.host_mapped_release = [](void* host) {
    if (host) cudaFreeHost(host);
  };
  t.event_create = []() -> void* {
    cudaEvent_t e = nullptr;
    check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "event create");
    return e;
  };
  t.event_destroy = [](void* e) {
    if (e) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  };
  t.event_record = [](void* e, void* s) { check(cudaEventRecord(static_cast<cudaEvent_t>(e), as_stream(s)), "event record"); };
  t.event_wait = [](void* e) { check(cudaEventSynchronize(static_cast<cudaEvent_t>(e)), "event wait"); };
  // Blocking streams (cudaStreamCreate): the legacy default stream, which the synchronous copies use,
  // orders with them, so uploads before and downloads after a replay need no extra events.
  t.stream_create = []() -> void* {
    cudaStream_t s = nullptr;
    check(cudaStreamCreate(&s), "stream create");
    return s;
  };
  t.stream_destroy = [](void* s) { check(cudaStreamDestroy(as_stream(s)), "stream destroy"); };
  t.pool_create = []() { return cuda::pool_create(); };
  t.pool_destroy = [](void* pool) { cuda::pool_destroy(pool); };
  t.pool_use = [](void* pool) { cuda::pool_use(pool); };
  // Relaxed mode: a first use of a shape may still call cudaMalloc or set kernel attributes while
  // capturing; nothing captured synchronizes.
  t.capture_begin = [](void* s) {
    check(cudaStreamBeginCapture(as_stream(s), cudaStreamCaptureModeRelaxed), "graph capture begin");
  };
  t.capture_end = [](void* s) -> void* {
    cudaGraph_t graph = nullptr;
    check(cudaStreamEndCapture(as_stream(s), &graph), "graph capture end");
    cudaGraphExec_t exec = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    check(e, "graph instantiate");
    return exec;
  };
  t.graph_launch = [](void* g, void* s) {
    check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(g), as_stream(s)), "graph launch");
  };
  t.graph_destroy = [](void* g) { check(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(g)), "graph destroy"); };
  // Event record + wait: while the main stream is being captured, the side stream joins the capture and
  // the graph gets the fork and join as edges.
  t.fork = [](void* s) -> void* {
    SideStream& side = side_of(as_stream(s));
    check(cudaEventRecord(side.forked, as_stream(s)), "branch fork");
    check(cudaStreamWaitEvent(side.stream, side.forked, 0), "branch fork");
    side.open = true;
    branch_open();  // once forked: a failed fork leaves no branch open
    return side.stream;
  };
  t.join = [](void* s, void* side_stream) {
    SideStream& side = side_of(as_stream(s), as_stream(side_stream));
    cudaError_t e = cudaEventRecord(side.joined, side.stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(as_stream(s), side.joined, 0);
    side.open = false;
    branch_close();  // after the wait: work issued from here on comes after both chains
    check(e, "branch join");
  };
}

double measure_copy_bandwidth(size_t bytes) {
  void *a = nullptr, *b = nullptr;
  check(cudaMalloc(&a, bytes), "bandwidth buffer");
  check(cudaMalloc(&b, bytes), "bandwidth buffer");
  check(cudaMemset(a, 1, bytes), "bandwidth fill");
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < 3; ++i) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);  // warm-up
  const int reps = 20;
  cudaEventRecord(start);
  for (int i = 0; i < reps; ++i) cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
  cudaEventRecord(stop);
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(bytes) * reps / (ms * 1e-3);
}

}  // namespace dsv::ops::cuda
