// Helpers shared by the CUDA tests: skip without a device, upload / download, random data.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_ops.h"

namespace rs::cuda::testing {

// GTEST_SKIP() from inside a fixture's SetUp (or a test body) when no device is usable.
#define RS_SKIP_WITHOUT_CUDA()                                             \
  do {                                                                     \
    std::string why_;                                                      \
    if (!::rs::cuda::cuda_available(&why_))                                \
      GTEST_SKIP() << "no CUDA device: " << why_;                          \
  } while (0)

#define RS_ASSERT_OK(expr)                                          \
  do {                                                              \
    const ::absl::Status st_ = (expr);                              \
    ASSERT_TRUE(st_.ok()) << #expr << ": " << st_.ToString();       \
  } while (0)

// Device copy of a host vector (plus `extra` zero bytes of slack).
template <class T>
DeviceBuffer upload(const std::vector<T>& v, size_t extra = 0) {
  auto b = DeviceBuffer::alloc(v.size() * sizeof(T) + extra + 16);
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  if (!b.ok()) return DeviceBuffer();
  EXPECT_TRUE(fill_bytes(b->get(), 0, b->size()).ok());
  EXPECT_TRUE(copy_to_device(b->get(), v.data(), v.size() * sizeof(T)).ok());
  return std::move(*b);
}

// Device buffer of n elements, filled with a NaN-ish poison byte pattern so unwritten outputs
// show up.
template <class T>
DeviceBuffer poisoned(size_t n) {
  auto b = DeviceBuffer::alloc(n * sizeof(T) + 16);
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  if (!b.ok()) return DeviceBuffer();
  EXPECT_TRUE(fill_bytes(b->get(), 0xFF, b->size()).ok());
  return std::move(*b);
}

template <class T>
std::vector<T> download(const DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  EXPECT_TRUE(synchronize().ok());
  const absl::Status st = copy_to_host(v.data(), b.get(), n * sizeof(T));
  EXPECT_TRUE(st.ok()) << st.ToString();
  return v;
}

inline std::vector<float> randn(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

inline std::vector<float> uniform(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// max |a - b| / (max |b| + floor), with the index of the worst element in *where.
inline double max_rel_err(const std::vector<float>& a, const std::vector<float>& b, double floor,
                          size_t* where = nullptr) {
  double mx = 0, worst = 0;
  size_t wi = 0;
  for (size_t i = 0; i < b.size(); ++i) mx = std::max(mx, std::abs(static_cast<double>(b[i])));
  for (size_t i = 0; i < b.size(); ++i) {
    const double e = std::isnan(a[i]) ? 1e30 : std::abs(static_cast<double>(a[i]) - b[i]);
    if (e > worst) {
      worst = e;
      wi = i;
    }
  }
  if (where) *where = wi;
  return worst / (mx + floor);
}

}  // namespace rs::cuda::testing
