// The residual add + RMSNorm kernel with its q8 output (kernels/cuda/norm_q8_kernel.cuh) built
// for the host and run through the SIMT emulator against a double-precision reference; the q8
// blocks against quantize_act's rule applied to the kernel's own output. Runs everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/norm_q8_kernel.cuh"
#include "tests/cuda/moe_decode_test_util.h"

namespace rs::cuda::glue {
namespace {

struct Case {
  int64_t rows, n;
  bool add, q8;
};

// The kernel's q8 blocks of its own output y (n values) against quantize_act's rule.
void CheckQ8Blocks(const std::vector<float>& y, const std::vector<int8_t>& q,
                   const std::vector<float>& ds, int64_t n) {
  std::vector<int8_t> qr(32);
  std::vector<float> dr(2);
  for (int64_t b = 0; b < n / 32; ++b) {
    testing_kernels::quantize_q8(y.data() + b * 32, 32, qr.data(), dr.data());
    for (int i = 0; i < 32; ++i) ASSERT_EQ(q[b * 32 + i], qr[i]) << "block " << b;
    ASSERT_EQ(ds[2 * b], dr[0]) << "block " << b;
    ASSERT_NEAR(ds[2 * b + 1], dr[1], 1e-5 * 32 * 127 * dr[0] + 1e-30) << "block " << b;
  }
}

class NormQ8Emu : public ::testing::TestWithParam<Case> {};

TEST_P(NormQ8Emu, MatchesReference) {
  const Case c = GetParam();
  simt::set_order(c.n % 64 ? simt::Order::kReverse : simt::Order::kShuffled, 4);
  std::mt19937 rng(static_cast<uint32_t>(c.n + c.rows));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> hidden(c.rows * c.n), m(c.rows * c.n), w(c.n);
  for (auto& v : hidden) v = nd(rng);
  for (auto& v : m) v = nd(rng);
  for (auto& v : w) v = 1.0f + 0.3f * nd(rng);
  if (c.rows > 1)  // a zero row: d = 0, q = 0
    for (int64_t i = 0; i < c.n; ++i) hidden[c.n + i] = m[c.n + i] = 0.0f;
  const std::vector<float> h0 = hidden;
  std::vector<float> y(c.rows * c.n, NAN), ds(c.rows * c.n / 32 * 2, NAN);
  std::vector<int8_t> q(c.rows * c.n, 99);
  NormQ8Args a;
  a.hidden = hidden.data();
  a.m = c.add ? m.data() : nullptr;
  a.w = w.data();
  a.n = c.n;
  a.eps = 1e-6f;
  a.y = y.data();
  a.q = c.q8 ? q.data() : nullptr;
  a.ds = c.q8 ? ds.data() : nullptr;
  ASSERT_EQ(simt::launch({static_cast<unsigned>(c.rows)}, {kNormRowThreads}, 0,
                         add_rms_norm_q8_kernel, a),
            "");
  for (int64_t r = 0; r < c.rows; ++r) {
    double ss = 0;
    std::vector<double> v(c.n);
    for (int64_t i = 0; i < c.n; ++i) {
      v[i] = static_cast<double>(h0[r * c.n + i]) + (c.add ? m[r * c.n + i] : 0.0f);
      ss += v[i] * v[i];
      ASSERT_NEAR(hidden[r * c.n + i], v[i], 1e-6 * (1 + std::fabs(v[i]))) << "hidden " << r;
    }
    const double scale = 1.0 / std::sqrt(ss / c.n + 1e-6);
    for (int64_t i = 0; i < c.n; ++i) {
      const double want = v[i] * scale * w[i];
      ASSERT_NEAR(y[r * c.n + i], want, 1e-5 * (1 + std::fabs(want))) << r << " " << i;
    }
  }
  if (!c.q8) {
    for (int8_t v : q) ASSERT_EQ(v, 99);  // untouched
  } else {
    CheckQ8Blocks(y, q, ds, c.rows * c.n);
  }
  simt::set_order(simt::Order::kForward);
}

// Attention's output gate with the q8 blocks for wo: y *= sigmoid(gate), then quantize_act's
// blocks of the result; n not a multiple of the block size (a partial last block of threads).
// SwiGLU with the q8 blocks for the down matvec: y = silu(y) * up, then quantize_act's blocks.
TEST(SwigluQ8Emu, MatchesReference) {
  simt::set_order(simt::Order::kShuffled, 3);
  for (const int64_t n : {int64_t{64}, int64_t{3 * 352}}) {
    std::mt19937 rng(static_cast<uint32_t>(n) + 1);
    std::normal_distribution<float> nd(0.0f, 2.0f);
    std::vector<float> y(n), up(n);
    for (auto& v : y) v = nd(rng);
    for (auto& v : up) v = nd(rng);
    for (int i = 0; i < 32; ++i) up[i] = 0.0f;  // a zero block: d = 0
    const std::vector<float> y0 = y;
    std::vector<int8_t> q(n, 99);
    std::vector<float> ds(n / 16, NAN);
    const unsigned blocks = static_cast<unsigned>((n + kNormQ8Threads - 1) / kNormQ8Threads);
    ASSERT_EQ(simt::launch({blocks}, {kNormQ8Threads}, 0, swiglu_q8_kernel, y.data(), up.data(),
                           n, q.data(), ds.data()),
              "");
    for (int64_t i = 0; i < n; ++i) {
      const double g = y0[i], want = g / (1.0 + std::exp(-g)) * up[i];
      ASSERT_NEAR(y[i], want, 1e-5 * (1 + std::fabs(want))) << i;
    }
    CheckQ8Blocks(y, q, ds, n);
  }
  simt::set_order(simt::Order::kForward);
}

TEST(GateQ8Emu, MatchesReference) {
  simt::set_order(simt::Order::kShuffled, 2);
  for (const int64_t n : {int64_t{96}, int64_t{3 * 352}}) {
    std::mt19937 rng(static_cast<uint32_t>(n));
    std::normal_distribution<float> nd(0.0f, 2.0f);
    std::vector<float> y(n), g(n);
    for (auto& v : y) v = nd(rng);
    for (auto& v : g) v = nd(rng);
    for (size_t i = 32; i < 64 && i < y.size(); ++i) y[i] = 0.0f;  // a zero block: d = 0
    const std::vector<float> y0 = y;
    std::vector<int8_t> q(n, 99);
    std::vector<float> ds(n / 16, NAN);
    const unsigned blocks = static_cast<unsigned>((n + kNormQ8Threads - 1) / kNormQ8Threads);
    ASSERT_EQ(simt::launch({blocks}, {kNormQ8Threads}, 0, gate_q8_kernel, y.data(), g.data(), n,
                           q.data(), ds.data()),
              "");
    for (int64_t i = 0; i < n; ++i)
      ASSERT_NEAR(y[i], y0[i] / (1.0 + std::exp(-static_cast<double>(g[i]))),
                  1e-6 * (1 + std::fabs(y0[i])))
          << i;
    CheckQ8Blocks(y, q, ds, n);
  }
  simt::set_order(simt::Order::kForward);
}

INSTANTIATE_TEST_SUITE_P(Shapes, NormQ8Emu,
                         ::testing::Values(Case{3, 96, true, true}, Case{2, 544, true, true},
                                           Case{3, 544, false, true}, Case{2, 256, true, false},
                                           Case{1, 2048, false, false}, Case{2, 5120, true, true},
                                           Case{1, 8736, true, true}, Case{1, 8200, false, false}),
                         [](const auto& info) {
                           const Case& c = info.param;
                           return "r" + std::to_string(c.rows) + "_n" + std::to_string(c.n) +
                                  (c.add ? "_add" : "") + (c.q8 ? "_q8" : "");
                         });

}  // namespace
}  // namespace rs::cuda::glue
