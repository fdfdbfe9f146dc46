// Each CUDA op against its CPU twin on random inputs, including awkward sizes. Runs on the GPU host
// only (ctest label "gpu"); CI builds it.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "backends/cuda/cuda_ops.h"

namespace dsv::ops {
namespace {

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << cudaGetErrorString(expr)

struct DeviceBuffer {
  float* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(const std::vector<float>& host) : n(host.size()) {
    EXPECT_EQ(cudaMalloc(&ptr, std::max<size_t>(n, 1) * 4), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(ptr, host.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  std::vector<float> download() const {
    std::vector<float> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), ptr, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
};

std::vector<float> randn(size_t n, uint64_t seed, float mean = 0.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(mean, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// ||a - b|| / ||b||; fp32 ops land far below 1e-5 (rounding of reduction order only).
double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(CudaOps, DeviceIsHopper) {
  cuda::DeviceInfo info;
  CUDA_OK(cuda::query_device(0, &info));
  std::printf("device: %s, %d SMs, sm_%d%d, %.1f GiB\n", info.name.c_str(), info.sm_count, info.major, info.minor,
              info.total_memory / 1073741824.0);
  EXPECT_EQ(info.major, 9) << "built for sm_90a";
}

TEST_F(CudaOps, RmsNormMatchesCpu) {
  for (auto [rows, dim] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {17, 512}, {64, 7168}, {5, 1537}}) {
    SCOPED_TRACE(testing::Message() << rows << "x" << dim);
    const auto x = randn(rows * dim, rows * 31 + dim), w = randn(dim, dim, 1.0f);
    std::vector<float> want(x.size());
    cpu::rmsnorm({.x = x.data(), .weight = w.data(), .y = want.data(), .rows = rows, .dim = dim, .eps = 1e-6f});
    DeviceBuffer dx(x), dw(w), dy(std::vector<float>(x.size(), NAN));  // poisoned output
    CUDA_OK(cuda::rmsnorm({.x = dx.ptr, .weight = dw.ptr, .y = dy.ptr, .rows = rows, .dim = dim, .eps = 1e-6f}, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dy.download(), want), 1e-6);
  }
}

TEST_F(CudaOps, SwigluMatchesCpu) {
  for (int64_t n : {1, 31, 4096, 1000003}) {
    const auto g = randn(n, n), u = randn(n, n + 1);
    std::vector<float> want(n);
    cpu::swiglu({.gate = g.data(), .up = u.data(), .out = want.data(), .n = n});
    DeviceBuffer dg(g), du(u), dout(std::vector<float>(n, NAN));
    CUDA_OK(cuda::swiglu({.gate = dg.ptr, .up = du.ptr, .out = dout.ptr, .n = n}, 0));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LE(rel_l2(dout.download(), want), 1e-6) << n;  // __expf: ~2 ulp
  }
}

}  // namespace
}  // namespace dsv::ops
