// Fast CPU matmul / vec_dot against the reference, for every compute type, both code paths
// (AVX2 and scalar), awkward lengths, several token counts and thread counts.
//
// Tolerances. For integer formats the fast path multiplies by q8-quantised activations, so the
// tight comparison is against a double-precision reference over the dequantised weights and the
// same q8 activations (quantize_act_*): the integer part is exact and only the f32 block
// accumulation differs, |err| <= 1e-5 * sum|w||x| is ~100x the expected rounding. The real
// matmul_ref (exact f32 activations) is also compared, with a bound from the activation
// rounding: per block of 32/256 each activation moves by at most max|x_block| / 254.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/formats.h"
#include "kernels/matmul.h"
#include "kernels/matmul_cpu_internal.h"
#include "kernels/quant_blocks.h"

namespace rs {
namespace {

using matmul_internal::ActKind;

const GgmlType kTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16,
                           GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K,
                           GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::IQ4_XS};

// The activations exactly as the fast path sees them (f32 for float weights).
std::vector<float> effective_acts(GgmlType t, const float* x, int64_t n) {
  std::vector<float> out(x, x + n);
  switch (matmul_internal::act_kind(t)) {
    case ActKind::kF32: break;
    case ActKind::kQ8x32: {
      std::vector<qblk::ActQ8x32> a(n / 32);
      matmul_internal::quantize_act_q8x32(x, a.data(), n);
      for (int64_t i = 0; i < n; ++i) out[i] = a[i / 32].d * a[i / 32].qs[i % 32];
      break;
    }
    case ActKind::kQ8x256: {
      std::vector<qblk::ActQ8x256> a(n / 256);
      matmul_internal::quantize_act_q8x256(x, a.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        out[i] = a[i / 256].d * a[i / 256].qs[i % 256];
        int s = 0;  // the per-16 sums the k-quant kernels rely on
        if (i % 16 == 15) {
          for (int j = 0; j < 16; ++j) s += a[i / 256].qs[i % 256 - 15 + j];
          EXPECT_EQ(s, a[i / 256].bsums[(i % 256) / 16]);
        }
      }
      break;
    }
  }
  return out;
}

// Max change of each activation from the q8 rounding (0 for f32 activations).
std::vector<float> act_rounding(GgmlType t, const float* x, int64_t n) {
  std::vector<float> out(n, 0.0f);
  const ActKind k = matmul_internal::act_kind(t);
  if (k == ActKind::kF32) return out;
  const int64_t bs = k == ActKind::kQ8x32 ? 32 : 256;
  for (int64_t b = 0; b < n / bs; ++b) {
    float amax = 0;
    for (int64_t j = 0; j < bs; ++j) amax = std::max(amax, std::fabs(x[b * bs + j]));
    for (int64_t j = 0; j < bs; ++j) out[b * bs + j] = amax / 254.0f * 1.001f;
  }
  return out;
}

struct Matrix {
  GgmlType type;
  int64_t rows, cols;
  std::vector<uint8_t> data;
  std::vector<float> deq;  // rows x cols, dequantised by the reference
  WeightView view() const {
    WeightView w;
    w.type = type; w.data = data.data(); w.cols = cols; w.rows = rows;
    w.row_stride = row_bytes(type, cols);
    return w;
  }
};

Matrix random_matrix(GgmlType t, int64_t rows, int64_t cols, uint32_t seed) {
  Matrix m{t, rows, cols, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> src(rows * cols);
  for (auto& v : src) v = nd(rng) * 0.05f;
  const size_t rb = row_bytes(t, cols);
  m.data.resize(rb * rows);
  m.deq.resize(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    quantize_row_ref(t, src.data() + r * cols, m.data.data() + r * rb, cols);
    dequantize_row_ref(t, m.data.data() + r * rb, m.deq.data() + r * cols, cols);
  }
  return m;
}

std::vector<float> random_acts(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = nd(rng) * (i % 61 == 0 ? 8.0f : 1.0f);
  return x;
}

// The activations of one token as the fast path sees them and their rounding bound.
struct ActRef {
  std::vector<float> eff, dx;
  ActRef(GgmlType t, const float* x, int64_t n) : eff(effective_acts(t, x, n)), dx(act_rounding(t, x, n)) {}
};

// Checks one result against both references.
void check_value(const float* w, const float* x, const ActRef& a, int64_t n, float got,
                 const std::string& where) {
  double ref_q = 0, ref_exact = 0, mag = 0, act_err = 0;
  for (int64_t i = 0; i < n; ++i) {
    ref_q += static_cast<double>(w[i]) * a.eff[i];
    ref_exact += static_cast<double>(w[i]) * x[i];
    mag += std::fabs(static_cast<double>(w[i]) * x[i]);
    act_err += std::fabs(static_cast<double>(w[i])) * a.dx[i];
  }
  ASSERT_NEAR(got, ref_q, 1e-5 * mag + 1e-30) << where << " vs the q8-aware reference";
  ASSERT_NEAR(got, ref_exact, act_err + 2e-5 * mag + 1e-30) << where << " vs the exact reference";
}
void check_value(GgmlType t, const float* w, const float* x, int64_t n, float got,
                 const std::string& where) {
  check_value(w, x, ActRef(t, x, n), n, got, where);
}

class PathTest : public ::testing::TestWithParam<bool> {  // true: AVX2
 protected:
  void SetUp() override {
    if (GetParam() && !matmul_internal::cpu_has_avx2()) GTEST_SKIP() << "CPU lacks AVX2/FMA/F16C";
    matmul_internal::set_force_scalar(!GetParam());
    ASSERT_EQ(matmul_internal::using_avx2(), GetParam());
  }
  void TearDown() override { matmul_internal::set_force_scalar(false); }
};

TEST_P(PathTest, VecDotAwkwardLengths) {
  for (GgmlType t : kTypes) {
    const int64_t bs = type_info(t)->block_size;
    std::vector<int64_t> lengths;
    if (bs == 1) lengths = {1, 7, 15, 16, 17, 33, 100, 1000, 4099};
    if (bs == 32) lengths = {32, 96, 160, 256, 1056, 4096 + 32};
    if (bs == 256) lengths = {256, 512, 768, 3 * 256 + 1024, 11 * 256};
    for (int64_t n : lengths) {
      const Matrix m = random_matrix(t, 1, n, static_cast<uint32_t>(n));
      const std::vector<float> x = random_acts(n, static_cast<uint32_t>(n) + 7);
      const float got = vec_dot_cpu(t, m.data.data(), x.data(), n);
      check_value(t, m.deq.data(), x.data(), n, got,
                  std::string(type_name(t)) + " n=" + std::to_string(n));
    }
  }
}

TEST_P(PathTest, VecDotExtremeValues) {
  // Q8_0 codes of -128 and activations at full scale: the sign trick must not overflow.
  const int64_t n = 64;
  std::vector<qblk::BlockQ8_0> b(2);
  for (auto& blk : b) {
    blk.d = f32_to_fp16(0.01f);
    for (int j = 0; j < 32; ++j) blk.qs[j] = static_cast<int8_t>(j % 2 ? -128 : 127);
  }
  std::vector<float> w(n), x(n);
  dequantize_row_ref(GgmlType::Q8_0, b.data(), w.data(), n);
  for (int64_t i = 0; i < n; ++i) x[i] = (i % 3 == 0) ? -5.0f : 5.0f;
  check_value(GgmlType::Q8_0, w.data(), x.data(), n, vec_dot_cpu(GgmlType::Q8_0, b.data(), x.data(), n),
              "Q8_0 extremes");
}

struct MatmulCase {
  int64_t rows, cols;
};

TEST_P(PathTest, MatmulEveryTypeTokensThreads) {
  for (GgmlType t : kTypes) {
    const int64_t bs = type_info(t)->block_size;
    // Rows not a multiple of anything; for F32 a wide case so the row tiles (~128 KiB) split.
    std::vector<MatmulCase> cases = {{37, bs == 1 ? 100 : (bs == 32 ? 160 : 512)},
                                     {131, bs == 1 ? 1000 : 1024}};
    if (t == GgmlType::F32) cases.push_back({37, 8192});
    if (t == GgmlType::Q4_K) cases.push_back({301, 4096});  // Q4_K tile = 56 rows
    for (const MatmulCase& mc : cases) {
      const Matrix m = random_matrix(t, mc.rows, mc.cols, 11);
      for (int64_t n_tok : {1, 2, 3, 6, 7, 13, 17, 64}) {
        const int64_t ldx = mc.cols + 3, ldy = mc.rows + 5;  // strided on purpose
        const std::vector<float> x = random_acts(ldx * n_tok, 99);
        for (int threads : {1, 2}) {
          std::vector<float> y(ldy * n_tok, NAN);
          matmul_cpu(m.view(), x.data(), ldx, n_tok, y.data(), ldy, threads);
          for (int64_t tk = 0; tk < n_tok; ++tk) {
            const ActRef a(t, x.data() + tk * ldx, mc.cols);
            for (int64_t r = 0; r < mc.rows; ++r) {
              check_value(m.deq.data() + r * mc.cols, x.data() + tk * ldx, a, mc.cols,
                          y[tk * ldy + r],
                          std::string(type_name(t)) + " rows=" + std::to_string(mc.rows) +
                              " cols=" + std::to_string(mc.cols) + " n_tok=" +
                              std::to_string(n_tok) + " threads=" + std::to_string(threads) +
                              " r=" + std::to_string(r) + " t=" + std::to_string(tk));
              if (HasFatalFailure()) return;
            }
            for (int64_t r = mc.rows; r < ldy && tk + 1 < n_tok; ++r)  // padding untouched
              ASSERT_TRUE(std::isnan(y[tk * ldy + r]));
          }
        }
      }
    }
  }
}

TEST_P(PathTest, MatmulCloseToMatmulRef) {
  for (GgmlType t : kTypes) {
    const int64_t cols = 512, rows = 45, n_tok = 5;
    const Matrix m = random_matrix(t, rows, cols, 5);
    const std::vector<float> x = random_acts(cols * n_tok, 6);
    std::vector<float> yr(rows * n_tok), yc(rows * n_tok);
    matmul_ref(m.view(), x.data(), cols, n_tok, yr.data(), rows);
    matmul_cpu(m.view(), x.data(), cols, n_tok, yc.data(), rows, 2);
    double num = 0, den = 0;
    for (size_t i = 0; i < yr.size(); ++i) {
      num += (yr[i] - yc[i]) * static_cast<double>(yr[i] - yc[i]);
      den += yr[i] * static_cast<double>(yr[i]);
    }
    const double nmse = num / den;
    // f32 activations: float rounding only. q8 activations: rounding noise uniform in
    // +-step/2 (variance step^2/12 = dx^2/3 with dx = step/2) against the activation power;
    // random weights carry that ratio to the outputs. Allow 3x the prediction.
    double noise = 0, power = 0;
    for (int64_t tk = 0; tk < n_tok; ++tk) {
      const ActRef a(t, x.data() + tk * cols, cols);
      for (int64_t i = 0; i < cols; ++i) {
        noise += a.dx[i] * static_cast<double>(a.dx[i]) / 3;
        power += x[tk * cols + i] * static_cast<double>(x[tk * cols + i]);
      }
    }
    const bool float_acts = matmul_internal::act_kind(t) == ActKind::kF32;
    EXPECT_LT(nmse, float_acts ? 1e-11 : 3 * noise / power) << type_name(t);
    if (!float_acts) EXPECT_GT(nmse, 0.05 * noise / power) << type_name(t) << ": suspiciously exact";
  }
}

TEST_P(PathTest, BatchedTokensEqualSingleTokensBitwise) {
  // A prompt in one call gives exactly the values of token-by-token calls (same kernel order),
  // and the thread count does not change any value.
  for (GgmlType t : kTypes) {
    const int64_t cols = 1024, rows = 70, n_tok = 9;
    const Matrix m = random_matrix(t, rows, cols, 8);
    const std::vector<float> x = random_acts(cols * n_tok, 9);
    std::vector<float> yb(rows * n_tok), y1(rows * n_tok), y2(rows * n_tok);
    matmul_cpu(m.view(), x.data(), cols, n_tok, yb.data(), rows, 1);
    matmul_cpu(m.view(), x.data(), cols, n_tok, y2.data(), rows, 2);
    for (int64_t tk = 0; tk < n_tok; ++tk)
      matmul_cpu(m.view(), x.data() + tk * cols, cols, 1, y1.data() + tk * rows, rows, 2);
    EXPECT_EQ(0, std::memcmp(yb.data(), y1.data(), yb.size() * 4)) << type_name(t);
    EXPECT_EQ(0, std::memcmp(yb.data(), y2.data(), yb.size() * 4)) << type_name(t);
  }
}

TEST_P(PathTest, SliceRowsOfStackedTensor) {
  // An expert's rows inside a stacked tensor: slice_rows gives the same values as the whole.
  const GgmlType t = GgmlType::Q4_K;
  const Matrix m = random_matrix(t, 64, 512, 3);
  const std::vector<float> x = random_acts(512, 4);
  std::vector<float> all(64), part(16);
  matmul_cpu(m.view(), x.data(), 512, 1, all.data(), 64, 2);
  matmul_cpu(m.view().slice_rows(32, 16), x.data(), 512, 1, part.data(), 16, 1);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(part[i], all[32 + i]);
}

TEST_P(PathTest, BatchEqualsSeparateCallsBitwise) {
  // matmul_cpu_batch: tasks of several types sharing one X (converted once), gathered token
  // rows in any order and with repeats, a task with its own X, a task with no tokens; every
  // value equals matmul_cpu on the same rows, for 1, 2 and 3 threads.
  const int64_t cols = 512, x_n = 7;
  const std::vector<float> x = random_acts(cols * x_n, 31), x2 = random_acts(cols * 3, 32);
  const Matrix m0 = random_matrix(GgmlType::Q4_K, 40, cols, 33);
  const Matrix m1 = random_matrix(GgmlType::Q6_K, 17, cols, 34);
  const Matrix m2 = random_matrix(GgmlType::Q8_0, 9, cols, 35);
  const Matrix m3 = random_matrix(GgmlType::F32, 5, cols, 36);
  const Matrix m4 = random_matrix(GgmlType::Q4_K, 23, cols, 37);
  const std::vector<int32_t> gather = {6, 0, 3, 3, 1};
  struct Case {
    const Matrix* m;
    const float* x;
    int64_t x_n;
    const int32_t* rows;
    int64_t n_tok;
  };
  const Case cases[] = {{&m0, x.data(), x_n, nullptr, x_n},
                        {&m1, x.data(), x_n, gather.data(), 5},
                        {&m2, x.data(), x_n, gather.data() + 1, 3},
                        {&m3, x.data(), x_n, gather.data(), 5},
                        {&m4, x2.data(), 3, nullptr, 3},
                        {&m4, x.data(), x_n, nullptr, 0},
                        {&m0, x.data(), x_n, gather.data() + 2, 1}};
  const int n_cases = sizeof(cases) / sizeof(cases[0]);
  for (int threads = 1; threads <= 3; ++threads) {
    std::vector<std::vector<float>> got(n_cases), want(n_cases);
    std::vector<MatmulTask> tasks(n_cases);
    for (int i = 0; i < n_cases; ++i) {
      const Case& c = cases[i];
      got[i].assign(c.m->rows * std::max<int64_t>(c.n_tok, 1), -1.0f);
      want[i].assign(got[i].size(), -1.0f);
      MatmulTask& t = tasks[i];
      t.w = c.m->view();
      t.x = c.x;
      t.ldx = cols;
      t.x_n = c.x_n;
      t.x_rows = c.rows;
      t.n_tok = c.n_tok;
      t.y = got[i].data();
      t.ldy = c.m->rows;
      for (int64_t k = 0; k < c.n_tok; ++k)
        matmul_cpu(c.m->view(), c.x + (c.rows ? c.rows[k] : k) * cols, cols, 1,
                   want[i].data() + k * c.m->rows, c.m->rows, 1);
    }
    matmul_cpu_batch(tasks.data(), n_cases, threads);
    for (int i = 0; i < n_cases; ++i)
      EXPECT_EQ(0, std::memcmp(got[i].data(), want[i].data(), got[i].size() * 4))
          << "task " << i << " (" << type_name(cases[i].m->type) << "), " << threads << " threads";
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, PathTest, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return std::string(i.param ? "Avx2" : "Scalar");
                         });

TEST(MatmulPaths, ScalarAndAvx2AgreeClosely) {
  if (!matmul_internal::cpu_has_avx2()) GTEST_SKIP() << "CPU lacks AVX2/FMA/F16C";
  for (GgmlType t : kTypes) {
    const int64_t cols = 768, rows = 33, n_tok = 3;
    const Matrix m = random_matrix(t, rows, cols, 21);
    const std::vector<float> x = random_acts(cols * n_tok, 22);
    std::vector<float> ya(rows * n_tok), ys(rows * n_tok);
    matmul_internal::set_force_scalar(false);
    matmul_cpu(m.view(), x.data(), cols, n_tok, ya.data(), rows, 2);
    matmul_internal::set_force_scalar(true);
    matmul_cpu(m.view(), x.data(), cols, n_tok, ys.data(), rows, 2);
    matmul_internal::set_force_scalar(false);
    for (size_t i = 0; i < ya.size(); ++i)
      ASSERT_NEAR(ya[i], ys[i], 1e-4 * (std::fabs(ys[i]) + 1)) << type_name(t) << " i=" << i;
  }
}

TEST(MatmulDeathTest, BadShapeOrTypeNamesTheCause) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<uint8_t> data(4096);
  std::vector<float> x(256), y(4);
  WeightView w;
  w.type = GgmlType::Q4_K; w.data = data.data(); w.cols = 100; w.rows = 2; w.row_stride = 144;
  EXPECT_DEATH(matmul_cpu(w, x.data(), 100, 1, y.data(), 2, 1),
               "100 columns are not a multiple of the Q4_K block size 256");
  w.type = GgmlType::Q2_K; w.cols = 256;
  EXPECT_DEATH(matmul_cpu(w, x.data(), 256, 1, y.data(), 2, 1), "no kernel for tensor type Q2_K");
}

}  // namespace
}  // namespace rs
