// The CUDA kernels' block decoding, compiled for the host (kernels/cuda/*.cu mark those parts
// __host__ __device__ and give dp4a / vsub4 / byte_perm portable host versions), checked against
// the CPU references. This runs on every machine, GPU or not: it covers each format's unit
// split of the matvec (which bytes each lane reads, the nibble / high-bit / scale unpacking, the
// IQ4 code-book lookup, the k-quant minimum term) and the 32-element dequantiser used by the
// tensor-core matmul and the embedding lookup. What it cannot cover (the warp loop and
// reduction, launch shapes) the device tests do.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/matvec_fmt.cuh"
#include "kernels/formats.h"
#include "kernels/matmul.h"
#include "kernels/quant_blocks.h"

namespace rs::cuda {
namespace {

const GgmlType kTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16,
                           GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K,
                           GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::IQ4_XS};

class CudaEmulationTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(CudaEmulationTest, RowDotMatchesReference) {
  const GgmlType t = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(31 + static_cast<int>(t)));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t cols : {int64_t{256}, int64_t{2304}, int64_t{5120}}) {
    std::vector<float> wf(cols), x(cols), deq(cols);
    for (int rep = 0; rep < 4; ++rep) {
      for (auto& v : wf) v = 0.5f * nd(rng);
      for (auto& v : x) v = nd(rng) * (rep == 3 ? 50.0f : 1.0f);
      // alignas: the kernels' 16-byte loads need aligned rows, as on the device.
      std::vector<uint8_t, std::allocator<uint8_t>> raw(row_bytes(t, cols) + 64);
      uint8_t* row = raw.data() + (16 - reinterpret_cast<uintptr_t>(raw.data()) % 16) % 16;
      quantize_row_ref(t, wf.data(), row, cols);
      dequantize_row_ref(t, row, deq.data(), cols);
      WeightView w;
      w.type = t;
      w.data = row;
      w.cols = cols;
      w.rows = 1;
      w.row_stride = row_bytes(t, cols);
      float ref = 0;
      matmul_ref(w, x.data(), cols, 1, &ref, 1);

      std::vector<int8_t> q(cols + 16);
      std::vector<float> ds(cols / 32 * 2);
      int8_t* qa = q.data() + (16 - reinterpret_cast<uintptr_t>(q.data()) % 16) % 16;
      detail::emulate_quantize_act(x.data(), cols, qa, ds.data());
      const float got = detail::emulate_row_dot(t, row, cols, x.data(), qa, ds.data());

      double l1 = 0, w1 = 0;
      for (int64_t b = 0; b < cols; b += 32) {
        double amax = 0;
        for (int64_t j = b; j < b + 32; ++j) amax = std::max(amax, std::abs(double(x[j])));
        for (int64_t j = b; j < b + 32; ++j) {
          l1 += std::abs(double(deq[j]) * x[j]);
          w1 += std::abs(double(deq[j])) * amax / 254.0;
        }
      }
      const double tol = (matvec_uses_q8(t) ? 1.01 * w1 : 0.0) + 1e-5 * l1 + 1e-6;
      EXPECT_NEAR(got, ref, tol) << type_name(t) << " cols " << cols << " rep " << rep;
      // The q8 error must be well inside the bound, not just under it: a wrong unpack of any
      // block gives an error of the order of the whole dot product.
      if (matvec_uses_q8(t)) {
        EXPECT_LT(std::abs(got - ref), 0.25 * w1 + 1e-5 * l1 + 1e-6) << type_name(t);
      }
    }
  }
}

TEST_P(CudaEmulationTest, Dequant32MatchesReference) {
  const GgmlType t = GetParam();
  constexpr int64_t cols = 768;
  std::mt19937 rng(static_cast<uint32_t>(71 + static_cast<int>(t)));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> wf(cols), deq(cols), got(cols);
  for (auto& v : wf) v = nd(rng);
  std::vector<uint8_t> raw(row_bytes(t, cols) + 16);
  quantize_row_ref(t, wf.data(), raw.data(), cols);
  dequantize_row_ref(t, raw.data(), deq.data(), cols);
  for (int64_t k0 = 0; k0 < cols; k0 += 32) detail::emulate_dequant32(t, raw.data(), k0, &got[k0]);
  for (int64_t i = 0; i < cols; ++i)
    ASSERT_NEAR(got[i], deq[i], 1e-6 * std::abs(deq[i]) + 1e-7) << type_name(t) << " element " << i;
}

INSTANTIATE_TEST_SUITE_P(Formats, CudaEmulationTest, ::testing::ValuesIn(kTypes),
                         [](const ::testing::TestParamInfo<GgmlType>& info) {
                           return std::string(type_name(info.param));
                         });

// The branch-free pair decode of the Q4_K / Q5_K scales (matvec_fmt.cuh) against the
// reference's get_scale_min, on random scale bytes (every bit pattern of each byte position).
TEST(CudaEmulation, ScaleMinPairMatchesReference) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 20000; ++trial) {
    uint8_t s[12];
    for (auto& b : s) b = static_cast<uint8_t>(rng());
    uint32_t w[3];
    std::memcpy(w, s, 12);
    for (int c = 0; c < 4; ++c) {
      uint32_t scp = 0, mp = 0;
      detail::scale_min_pair(c, w[0], w[1], w[2], &scp, &mp);
      for (int h = 0; h < 2; ++h) {
        uint8_t sc = 0, m = 0;
        qblk::get_scale_min(2 * c + h, s, &sc, &m);
        ASSERT_EQ((scp >> (8 * h)) & 0xFF, sc) << "c " << c << " h " << h;
        ASSERT_EQ((mp >> (8 * h)) & 0xFF, m) << "c " << c << " h " << h;
      }
    }
  }
}

TEST(CudaEmulation, QuantizeActRoundsWithinHalfAStep) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> x(320);
  for (auto& v : x) v = nd(rng);
  for (int i = 64; i < 96; ++i) x[i] = 0.0f;  // an all-zero block
  std::vector<int8_t> q(320);
  std::vector<float> ds(20);
  detail::emulate_quantize_act(x.data(), 320, q.data(), ds.data());
  for (int b = 0; b < 10; ++b) {
    double sum = 0, amax = 0;
    for (int i = 0; i < 32; ++i) {
      sum += x[b * 32 + i];
      amax = std::max(amax, std::abs(double(x[b * 32 + i])));
    }
    EXPECT_NEAR(ds[2 * b + 1], sum, 1e-4);
    for (int i = 0; i < 32; ++i)
      EXPECT_LE(std::abs(ds[2 * b] * q[b * 32 + i] - x[b * 32 + i]), amax / 254.0 * 1.001 + 1e-7);
  }
  EXPECT_EQ(ds[4], 0.0f);
}

}  // namespace
}  // namespace rs::cuda
