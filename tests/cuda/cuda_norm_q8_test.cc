// add_rms_norm_q8 (cuda_glue.h) on a device: the same bits as add_rms_norm followed by
// quantize_act (hidden, y, the q8 blocks and their {d, sum}), with and without the residual add.
// Skips without a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/cuda/cuda_glue.h"
#include "kernels/cuda/cuda_ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace rs::cuda {
namespace {

// The q8 blocks and {d, sum} pairs of two prepared activations of n values are the same bits.
void ExpectSameQ8(const DeviceAct& a1, const DeviceAct& a2, int64_t n) {
  std::vector<int8_t> q1(n), q2(n);
  std::vector<float> d1(n / 16), d2(n / 16);
  RS_ASSERT_OK(synchronize());
  RS_ASSERT_OK(copy_to_host(q1.data(), a1.q, q1.size()));
  RS_ASSERT_OK(copy_to_host(q2.data(), a2.q, q2.size()));
  RS_ASSERT_OK(copy_to_host(d1.data(), a1.ds, d1.size() * 4));
  RS_ASSERT_OK(copy_to_host(d2.data(), a2.ds, d2.size() * 4));
  EXPECT_EQ(q1, q2);
  EXPECT_EQ(d1, d2);
}

TEST(CudaNormQ8, SameBitsAsNormThenQuantize) {
  RS_SKIP_WITHOUT_CUDA();
  for (const int64_t n : {int64_t{96}, int64_t{2048}, int64_t{3104}}) {
    for (const bool add : {true, false}) {
      SCOPED_TRACE("n " + std::to_string(n) + (add ? " add" : ""));
      const int64_t rows = 5;
      std::mt19937 rng(static_cast<uint32_t>(n));
      const std::vector<float> h = testing::randn(rng, rows * n), m = testing::randn(rng, rows * n);
      std::vector<float> w = testing::randn(rng, n);
      DeviceBuffer h1 = testing::upload(h), h2 = testing::upload(h), dm = testing::upload(m),
                   dw = testing::upload(w), y1 = testing::poisoned<float>(rows * n),
                   y2 = testing::poisoned<float>(rows * n);
      const size_t wsb = act_q8_bytes(n, rows);
      DeviceBuffer ws1 = testing::poisoned<uint8_t>(wsb), ws2 = testing::poisoned<uint8_t>(wsb);
      DeviceAct a1, a2;
      RS_ASSERT_OK(add_rms_norm_q8(h1.as<float>(), add ? dm.as<float>() : nullptr, dw.as<float>(),
                                   rows, n, 1e-6f, y1.as<float>(), ws1.get(), wsb, &a1));
      if (add) {
        RS_ASSERT_OK(add_rms_norm(h2.as<float>(), dm.as<float>(), dw.as<float>(), rows, n, 1e-6f,
                                  y2.as<float>()));
      } else {
        // The plain norm is a different kernel (its own reduction): equal up to rounding.
        RS_ASSERT_OK(rms_norm(h2.as<float>(), dw.as<float>(), rows, n, 1e-6f, y2.as<float>()));
      }
      const std::vector<float> g1 = testing::download<float>(y1, rows * n);
      const std::vector<float> g2 = testing::download<float>(y2, rows * n);
      for (int64_t i = 0; i < rows * n; ++i) {
        if (add)
          ASSERT_EQ(g1[i], g2[i]) << i;
        else
          ASSERT_NEAR(g1[i], g2[i], 1e-5f * (1 + std::fabs(g2[i]))) << i;
      }
      EXPECT_EQ(testing::download<float>(h1, rows * n), testing::download<float>(h2, rows * n));
      // quantize_act of the kernel's own y: the same q8 blocks.
      RS_ASSERT_OK(quantize_act(y1.as<float>(), n, rows, n, ws2.get(), wsb, &a2));
      ExpectSameQ8(a1, a2, rows * n);
      EXPECT_EQ(a1.x, y1.as<float>());
      EXPECT_EQ(a1.n_tok, rows);
    }
  }
}

TEST(CudaGateQ8, SameBitsAsGateThenQuantize) {
  RS_SKIP_WITHOUT_CUDA();
  const int64_t n_tok = 3, cols = 4096;
  std::mt19937 rng(5);
  const std::vector<float> y = testing::randn(rng, n_tok * cols, 2.0f);
  const std::vector<float> g = testing::randn(rng, n_tok * cols, 2.0f);
  DeviceBuffer y1 = testing::upload(y), y2 = testing::upload(y), dg = testing::upload(g);
  const size_t wsb = act_q8_bytes(cols, n_tok);
  DeviceBuffer ws1 = testing::poisoned<uint8_t>(wsb), ws2 = testing::poisoned<uint8_t>(wsb);
  DeviceAct a1, a2;
  RS_ASSERT_OK(mul_sigmoid_q8(y1.as<float>(), dg.as<float>(), n_tok, cols, ws1.get(), wsb, &a1));
  RS_ASSERT_OK(mul_sigmoid(y2.as<float>(), dg.as<float>(), n_tok * cols));
  RS_ASSERT_OK(quantize_act(y2.as<float>(), cols, n_tok, cols, ws2.get(), wsb, &a2));
  EXPECT_EQ(testing::download<float>(y1, n_tok * cols), testing::download<float>(y2, n_tok * cols));
  ExpectSameQ8(a1, a2, n_tok * cols);
}

// SwiGLU with the down matvec's q8 blocks: the same bits as swiglu then quantize_act (an odd
// number of 256-thread blocks: 3 x 1376 = 4128 elements, a partial last block).
TEST(CudaSwigluQ8, SameBitsAsSwigluThenQuantize) {
  RS_SKIP_WITHOUT_CUDA();
  const int64_t n_tok = 3, cols = 1376;
  std::mt19937 rng(6);
  const std::vector<float> g = testing::randn(rng, n_tok * cols, 2.0f);
  const std::vector<float> u = testing::randn(rng, n_tok * cols, 2.0f);
  DeviceBuffer g1 = testing::upload(g), du = testing::upload(u),
               y2 = testing::poisoned<float>(n_tok * cols);
  const size_t wsb = act_q8_bytes(cols, n_tok);
  DeviceBuffer ws1 = testing::poisoned<uint8_t>(wsb), ws2 = testing::poisoned<uint8_t>(wsb);
  DeviceBuffer dg = testing::upload(g);
  DeviceAct a1, a2;
  RS_ASSERT_OK(swiglu_q8(g1.as<float>(), du.as<float>(), n_tok, cols, ws1.get(), wsb, &a1));
  RS_ASSERT_OK(swiglu(dg.as<float>(), du.as<float>(), n_tok * cols, y2.as<float>()));
  RS_ASSERT_OK(quantize_act(y2.as<float>(), cols, n_tok, cols, ws2.get(), wsb, &a2));
  EXPECT_EQ(testing::download<float>(g1, n_tok * cols), testing::download<float>(y2, n_tok * cols));
  ExpectSameQ8(a1, a2, n_tok * cols);
  EXPECT_EQ(a1.x, g1.as<float>());
}

TEST(CudaNormQ8Args, RefusesColsNotAMultipleOf32) {
  DeviceAct a;
  const absl::Status st = add_rms_norm_q8(nullptr, nullptr, nullptr, 2, 100, 1e-6f, nullptr,
                                          nullptr, 0, &a);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(std::string(st.message()).find("cols = 100"), std::string::npos) << st;
}

}  // namespace
}  // namespace rs::cuda
