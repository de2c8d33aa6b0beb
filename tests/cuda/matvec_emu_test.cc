// The decode matvec kernel (kernels/cuda/matvec_kernel.cuh) built for the host and run through
// the SIMT emulator: several matrices of awkward row counts in one plain launch for 1..3 tokens,
// and the two MoE modes, against the same per-unit dot products summed in row order (the
// formats themselves are checked against the CPU reference in cuda_emulation_test). Runs
// everywhere (no GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/matvec_kernel.cuh"
#include "tests/cuda/kernel_check.h"
#include "tests/cuda/moe_decode_test_util.h"

namespace rs::cuda::detail {
namespace {

template <int NT, int MODE>
std::string run(GgmlType t, const MvParams& p) {
  const unsigned gy = MODE == static_cast<int>(MvMode::kMoeUp) ? static_cast<unsigned>(p.n_sel) : 1u;
  std::string err = "unsupported type";
  RS_CUDA_TYPE_SWITCH(t, err = simt::launch({static_cast<unsigned>(mv_blocks(p)), gy},
                                            {kMvWarps * 32}, 0, matvec_kernel<kT, NT, MODE>, p));
  return err;
}

double row_dot(GgmlType t, const uint8_t* row, int64_t cols, const ActDev& a) {
  float acc[1] = {0.0f};
  RS_CUDA_TYPE_SWITCH(t, {
    for (int64_t u = 0; u < Fmt<kT>::units(cols); ++u) Fmt<kT>::template dot<1>(row, u, a, acc);
  })
  return acc[0];
}

struct Problem {
  GgmlType t;
  int64_t cols;
  size_t rb;
  std::vector<float> x;
  std::vector<int8_t> q;
  std::vector<float> ds;
  bool q8;
  Problem(GgmlType type, int64_t c, int64_t n_tok, std::mt19937& rng) : t(type), cols(c) {
    rb = row_bytes(t, cols);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    x.resize(n_tok * cols);
    for (auto& v : x) v = nd(rng);
    q8 = testing_kernels::moe_decode_q8(t);
    q.resize(n_tok * cols);
    ds.resize(n_tok * cols / 32 * 2);
    if (q8)
      for (int64_t i = 0; i < n_tok; ++i)
        testing_kernels::quantize_q8(x.data() + i * cols, cols, q.data() + i * cols,
                                     ds.data() + i * (cols / 32) * 2);
  }
  ActDev act(int64_t tok) const {
    return ActDev{x.data() + tok * cols, cols, q8 ? q.data() + tok * cols : nullptr,
                  q8 ? reinterpret_cast<const float2*>(ds.data()) + tok * (cols / 32) : nullptr,
                  cols};
  }
  std::vector<uint8_t> weights(int64_t rows, std::mt19937& rng) const {
    std::normal_distribution<float> nd(0.0f, 0.3f);
    std::vector<float> f(rows * cols);
    for (auto& v : f) v = nd(rng);
    return testing_kernels::quantize_rows(t, f, rows, cols);
  }
  MvParams params(const std::vector<uint8_t>& w, int64_t rows, int n_tok) const {
    MvParams p;
    p.type = t;
    p.w = w.data();
    p.row_stride = rb;
    p.cols = cols;
    p.rows = rows;
    p.x = x.data();
    p.ldx = cols;
    p.q = q8 ? q.data() : nullptr;
    p.ds = q8 ? ds.data() : nullptr;
    p.n_tok = n_tok;
    return p;
  }
};

class MatvecEmu : public ::testing::TestWithParam<GgmlType> {};

template <int NT>
void plain_case(GgmlType t, int64_t cols, std::mt19937& rng) {
  SCOPED_TRACE(std::to_string(NT) + " tokens, cols " + std::to_string(cols));
  const Problem pr(t, cols, NT, rng);
  // Four matrices in one launch: 7, 1, 13 and 4 rows (partial blocks, a one-row matrix).
  const int64_t rows[4] = {7, 1, 13, 4};
  std::vector<std::vector<uint8_t>> w;
  std::vector<std::vector<float>> y;
  for (int64_t r : rows) {
    w.push_back(pr.weights(r, rng));
    y.emplace_back(NT * (r + 3), NAN);
  }
  MvParams p = pr.params(w[0], rows[0], NT);
  p.y = y[0].data();
  p.ldy = rows[0] + 3;
  for (int m = 1; m < 4; ++m) {
    p.more[m - 1] = MvMat{w[m].data(), pr.rb, rows[m], y[m].data(), rows[m] + 3};
  }
  p.n_more = 3;
  ASSERT_EQ((run<NT, static_cast<int>(MvMode::kPlain)>(t, p)), "");
  for (int m = 0; m < 4; ++m)
    for (int tok = 0; tok < NT; ++tok)
      for (int64_t r = 0; r < rows[m]; ++r) {
        const double want = row_dot(t, w[m].data() + r * pr.rb, cols, pr.act(tok));
        const float got = y[m][tok * (rows[m] + 3) + r];
        EXPECT_NEAR(got, want, 1e-5 * (1 + std::fabs(want))) << "matrix " << m << " row " << r;
      }
}

TEST_P(MatvecEmu, SeveralMatricesInOneLaunch) {
  const GgmlType t = GetParam();
  simt::set_order(simt::Order::kShuffled, 5);
  std::mt19937 rng(3 + static_cast<int>(t));
  const int64_t cols = t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16 ? 264
                       : t == GgmlType::Q8_0 || t == GgmlType::Q4_0                   ? 1184
                                                                                       : 1280;
  plain_case<1>(t, cols, rng);
  plain_case<3>(t, cols, rng);
  simt::set_order(simt::Order::kForward);
}

TEST_P(MatvecEmu, MoeModes) {
  const GgmlType t = GetParam();
  std::mt19937 rng(9 + static_cast<int>(t));
  const int64_t cols = t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16 ? 72 : 256;
  const int64_t E = 5, R = 6, k = 3;
  const Problem up(t, cols, k, rng);  // k tokens: down reads token i for selection i
  const std::vector<uint8_t> w = up.weights(E * R, rng);
  const std::vector<int32_t> ids = {4, 0, 2};
  const std::vector<float> sw = {0.5f, -0.25f, 1.5f};
  // up: one token against each selected expert.
  MvParams p = up.params(w, R, 1);
  p.mode = MvMode::kMoeUp;
  p.expert_stride = R * up.rb;
  p.ids = ids.data();
  p.n_sel = static_cast<int>(k);
  std::vector<float> y(k * R, NAN);
  p.y = y.data();
  p.ldy = R;
  ASSERT_EQ((run<1, static_cast<int>(MvMode::kMoeUp)>(t, p)), "");
  for (int64_t i = 0; i < k; ++i)
    for (int64_t r = 0; r < R; ++r) {
      const double want = row_dot(t, w.data() + (ids[i] * R + r) * up.rb, cols, up.act(0));
      EXPECT_NEAR(y[i * R + r], want, 1e-5 * (1 + std::fabs(want)));
    }
  // down: token i against selection i, weighted, accumulated onto y.
  p.mode = MvMode::kMoeDown;
  p.sel_w = sw.data();
  p.n_tok = static_cast<int>(k);
  p.accumulate = true;
  std::vector<float> acc(R, 0.75f);
  p.y = acc.data();
  ASSERT_EQ((run<1, static_cast<int>(MvMode::kMoeDown)>(t, p)), "");
  for (int64_t r = 0; r < R; ++r) {
    double want = 0.75;
    for (int64_t i = 0; i < k; ++i)
      want += sw[i] * row_dot(t, w.data() + (ids[i] * R + r) * up.rb, cols, up.act(i));
    EXPECT_NEAR(acc[r], want, 1e-5 * (1 + std::fabs(want)));
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, MatvecEmu,
                         ::testing::Values(GgmlType::F32, GgmlType::F16, GgmlType::BF16,
                                           GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K,
                                           GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::IQ4_XS),
                         [](const auto& info) { return std::string(type_name(info.param)); });

}  // namespace
}  // namespace rs::cuda::detail
