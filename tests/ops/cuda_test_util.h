// Helpers shared by the CUDA op tests (tests/ops/*.cpp): device buffers, seeded random inputs,
// error measures, and a fixture that skips without a CUDA device.
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"

// Internal linkage (one copy per test file), as the helpers were when each file had its own.
namespace dsv::ops::test {
namespace {

#define CUDA_OK(expr)                                                   \
  do {                                                                  \
    const cudaError_t cuda_ok_e = (expr);                               \
    ASSERT_EQ(cuda_ok_e, cudaSuccess) << cudaGetErrorString(cuda_ok_e); \
  } while (0)

// A device copy of a host vector, freed on scope exit.
template <typename T>
struct Dev {
  T* ptr = nullptr;
  size_t n = 0;
  explicit Dev(const std::vector<T>& host) : n(host.size()) {
    EXPECT_EQ(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
    if (n) EXPECT_EQ(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() { cudaFree(ptr); }
  std::vector<T> download() const {
    std::vector<T> h(n);
    if (n) EXPECT_EQ(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
};

std::vector<float> randn(size_t n, uint64_t seed, float mean = 0.0f, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(mean, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Poisoned outputs: a kernel that skips an element leaves a NaN the comparison sees.
std::vector<float> nans(size_t n) { return std::vector<float>(n, NAN); }

// ||a - b|| / ||b|| (just ||a - b|| when b is all zeros); infinite on any non-finite value in a.
double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// bf16 bit patterns of v (nearest even), as the bf16 weights and caches store them.
std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = f32_to_bf16(v[i]);
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Base fixture: skips the test on machines without a CUDA device (CI builds, the GPU host runs).
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) GTEST_SKIP() << "no CUDA device";
  }
};

}  // namespace
}  // namespace dsv::ops::test
