// CUDA matvec / MoE matvec / tensor-core matmul / embedding lookup against the CPU references
// (matmul_ref, dequantize_row_ref), every supported format, awkward shapes. Skips, saying why,
// where no CUDA device is usable.
//
// Tolerances, per output element with L1 = sum_j |w_j x_j| and W1 = sum_j |w_j| amax_j / 254
// (amax_j = max |x| over the 32-block holding j: the largest move of x_j under the q8 rounding):
//   q8 matvec (integer formats):  |err| <= 1.01 W1 + 1e-5 L1 + 1e-6
//   f32-activation matvec (F32/F16/BF16 weights): |err| <= 1e-5 L1 + 1e-6
//   tensor-core matmul (f16 inputs, f32 accumulation): |err| <= 2e-3 L1 + 1e-5
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/formats.h"
#include "kernels/matmul.h"
#include "tests/cuda/cuda_test_util.h"

namespace rs::cuda {
namespace {

using testing::download;
using testing::poisoned;
using testing::upload;

const GgmlType kTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16,
                           GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K,
                           GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::IQ4_XS};

// A quantised random matrix on the host: bytes (with row_stride >= row bytes) and its exact
// dequantised values.
struct HostMatrix {
  GgmlType type;
  int64_t rows, cols;
  size_t row_stride;
  std::vector<uint8_t> bytes;
  std::vector<float> deq;  // [rows][cols]

  WeightView view(const void* data) const {
    WeightView w;
    w.type = type;
    w.data = data;
    w.cols = cols;
    w.rows = rows;
    w.row_stride = row_stride;
    return w;
  }
};

HostMatrix make_matrix(GgmlType t, int64_t rows, int64_t cols, size_t pad, std::mt19937& rng) {
  HostMatrix m{t, rows, cols, row_bytes(t, cols) + pad, {}, {}};
  m.bytes.assign(m.row_stride * rows, 0);
  m.deq.resize(rows * cols);
  std::vector<float> src = testing::randn(rng, cols, 0.5f);
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : src) v = std::normal_distribution<float>(0.0f, 0.5f)(rng);
    quantize_row_ref(t, src.data(), m.bytes.data() + r * m.row_stride, cols);
    dequantize_row_ref(t, m.bytes.data() + r * m.row_stride, m.deq.data() + r * cols, cols);
  }
  return m;
}

// Per-output tolerance for the matvec of one row with one token (see the file comment).
double matvec_tol(GgmlType t, const float* w, const float* x, int64_t cols) {
  double l1 = 0, w1 = 0;
  for (int64_t b = 0; b < cols; b += 32) {
    double amax = 0;
    for (int64_t j = b; j < b + 32 && j < cols; ++j) amax = std::max(amax, std::abs(double(x[j])));
    for (int64_t j = b; j < b + 32 && j < cols; ++j) {
      l1 += std::abs(double(w[j]) * x[j]);
      w1 += std::abs(double(w[j])) * amax / 254.0;
    }
  }
  return (matvec_uses_q8(t) ? 1.01 * w1 : 0.0) + 1e-5 * l1 + 1e-6;
}

double tc_tol(const float* w, const float* x, int64_t cols) {
  double l1 = 0;
  for (int64_t j = 0; j < cols; ++j) l1 += std::abs(double(w[j]) * x[j]);
  return 2e-3 * l1 + 1e-5;
}

// ---- matvec -----------------------------------------------------------------------------------
// (type, rows, cols, n_tok, row padding bytes)
using MvParam = std::tuple<GgmlType, int64_t, int64_t, int64_t, size_t>;

class CudaMatvecTest : public ::testing::TestWithParam<MvParam> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaMatvecTest, MatchesReference) {
  const auto [type, rows, cols, n_tok, pad] = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(1000 * static_cast<int>(type) + rows * 7 + cols + n_tok));
  const HostMatrix m = make_matrix(type, rows, cols, pad, rng);
  const int64_t ldx = cols + 4;  // a gap between token rows
  std::vector<float> x = testing::randn(rng, n_tok * ldx);
  std::vector<float> ref(n_tok * rows);
  matmul_ref(m.view(m.bytes.data()), x.data(), ldx, n_tok, ref.data(), rows);

  DeviceBuffer dw = upload(m.bytes), dx = upload(x);
  DeviceBuffer dy = poisoned<float>(n_tok * rows);
  DeviceBuffer ws = poisoned<uint8_t>(matmul_workspace_bytes(type, cols, n_tok) + 256);
  RS_ASSERT_OK(matmul(m.view(dw.get()), dx.as<float>(), ldx, n_tok, dy.as<float>(), rows,
                      ws.get(), ws.size(), nullptr));
  const std::vector<float> y = download<float>(dy, n_tok * rows);
  int bad = 0;
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      const double tol = matvec_tol(type, &m.deq[r * cols], &x[t * ldx], cols);
      const double err = std::abs(double(y[t * rows + r]) - ref[t * rows + r]);
      if (!(err <= tol) && bad++ < 5)
        ADD_FAILURE() << type_name(type) << " t=" << t << " r=" << r << ": got "
                      << y[t * rows + r] << ", ref " << ref[t * rows + r] << ", tol " << tol;
    }
  EXPECT_EQ(bad, 0);
}

// matvec_multi: six matrices over the same activations, types Q4_K Q4_K F32 Q4_K Q4_K Q4_K
// (so runs of 2, 1 and 3 launches) and awkward row counts, equal matrix by matrix to matvec.
TEST(CudaMatvecMulti, EqualsOneMatvecPerMatrix) {
  RS_SKIP_WITHOUT_CUDA();
  std::mt19937 rng(77);
  const int64_t cols = 512, n_tok = 3;
  const GgmlType types[6] = {GgmlType::Q4_K, GgmlType::Q4_K, GgmlType::F32,
                             GgmlType::Q4_K, GgmlType::Q4_K, GgmlType::Q4_K};
  const int64_t rows[6] = {37, 1, 8, 5, 64, 3};
  std::vector<HostMatrix> m;
  std::vector<DeviceBuffer> dw, dy, dy1;
  for (int i = 0; i < 6; ++i) {
    m.push_back(make_matrix(types[i], rows[i], cols, 0, rng));
    dw.push_back(upload(m.back().bytes));
    dy.push_back(poisoned<float>(n_tok * rows[i]));
    dy1.push_back(poisoned<float>(n_tok * rows[i]));
  }
  const std::vector<float> x = testing::randn(rng, n_tok * cols);
  DeviceBuffer dx = upload(x), ws = poisoned<uint8_t>(act_q8_bytes(cols, n_tok) + 256);
  DeviceAct a;
  RS_ASSERT_OK(quantize_act(dx.as<float>(), cols, n_tok, cols, ws.get(), ws.size(), &a));
  std::vector<WeightView> views;
  for (int i = 0; i < 6; ++i) views.push_back(m[i].view(dw[i].get()));
  std::vector<MatvecOut> outs;
  for (int i = 0; i < 6; ++i) outs.push_back({&views[i], dy[i].as<float>(), rows[i]});
  RS_ASSERT_OK(matvec_multi(outs.data(), outs.size(), a));
  for (int i = 0; i < 6; ++i) {
    RS_ASSERT_OK(matvec(views[i], a, dy1[i].as<float>(), rows[i]));
    const std::vector<float> got = download<float>(dy[i], n_tok * rows[i]);
    const std::vector<float> want = download<float>(dy1[i], n_tok * rows[i]);
    for (int64_t j = 0; j < n_tok * rows[i]; ++j)
      ASSERT_EQ(got[j], want[j]) << "matrix " << i << " element " << j;
  }
}

std::string mv_name(const ::testing::TestParamInfo<MvParam>& info) {
  const auto [type, rows, cols, n_tok, pad] = info.param;
  return std::string(type_name(type)) + "_r" + std::to_string(rows) + "_c" +
         std::to_string(cols) + "_t" + std::to_string(n_tok) + "_p" + std::to_string(pad);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaMatvecTest,
    ::testing::Combine(::testing::ValuesIn(kTypes), ::testing::Values(int64_t{1}, int64_t{37}),
                       ::testing::Values(int64_t{256}, int64_t{2304}),
                       ::testing::Values(int64_t{1}, int64_t{3}, int64_t{8}),
                       ::testing::Values(size_t{0}, size_t{32})),
    mv_name);

// Cols that are a multiple of 32 but not of 256 (block-32 formats and floats only).
INSTANTIATE_TEST_SUITE_P(
    Block32, CudaMatvecTest,
    ::testing::Combine(::testing::Values(GgmlType::F32, GgmlType::F16, GgmlType::BF16,
                                         GgmlType::Q8_0, GgmlType::Q4_0),
                       ::testing::Values(int64_t{130}), ::testing::Values(int64_t{96}),
                       ::testing::Values(int64_t{1}, int64_t{5}), ::testing::Values(size_t{0})),
    mv_name);

// ---- prefill matmul on tensor cores ------------------------------------------------------------
using TcParam = std::tuple<GgmlType, int64_t, int64_t, int64_t>;  // type, rows, cols, n_tok

class CudaMatmulTcTest : public ::testing::TestWithParam<TcParam> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaMatmulTcTest, MatchesReference) {
  const auto [type, rows, cols, n_tok] = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(77 * static_cast<int>(type) + rows + cols * 3 + n_tok));
  const HostMatrix m = make_matrix(type, rows, cols, 0, rng);
  std::vector<float> x = testing::randn(rng, n_tok * cols);
  std::vector<float> ref(n_tok * rows);
  matmul_ref(m.view(m.bytes.data()), x.data(), cols, n_tok, ref.data(), rows);

  DeviceBuffer dw = upload(m.bytes), dx = upload(x);
  DeviceBuffer dy = poisoned<float>(n_tok * rows);
  RS_ASSERT_OK(matmul_tc(m.view(dw.get()), dx.as<float>(), cols, n_tok, dy.as<float>(), rows));
  const std::vector<float> y = download<float>(dy, n_tok * rows);
  int bad = 0;
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      const double tol = tc_tol(&m.deq[r * cols], &x[t * cols], cols);
      const double err = std::abs(double(y[t * rows + r]) - ref[t * rows + r]);
      if (!(err <= tol) && bad++ < 5)
        ADD_FAILURE() << type_name(type) << " t=" << t << " r=" << r << ": got "
                      << y[t * rows + r] << ", ref " << ref[t * rows + r] << ", tol " << tol;
    }
  EXPECT_EQ(bad, 0);
}

std::string tc_name(const ::testing::TestParamInfo<TcParam>& info) {
  const auto [type, rows, cols, n_tok] = info.param;
  return std::string(type_name(type)) + "_r" + std::to_string(rows) + "_c" +
         std::to_string(cols) + "_t" + std::to_string(n_tok);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaMatmulTcTest,
    ::testing::Combine(::testing::ValuesIn(kTypes), ::testing::Values(int64_t{100}),
                       ::testing::Values(int64_t{512}, int64_t{2304}),
                       ::testing::Values(int64_t{9}, int64_t{130})),
    tc_name);

// ---- MoE: one launch for the selected experts ---------------------------------------------------
class CudaMoeTest : public ::testing::TestWithParam<GgmlType> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaMoeTest, UpAndDownMatchPerExpertReference) {
  const GgmlType type = GetParam();
  constexpr int64_t E = 6, I = 64, H = 512;
  std::mt19937 rng(static_cast<uint32_t>(500 + static_cast<int>(type)));
  const HostMatrix up = make_matrix(type, E * I, H, 0, rng);    // {H, I, E}
  const HostMatrix down = make_matrix(type, E * H, I * 4, 0, rng);  // {4I, H, E}
  const int64_t Iw = I * 4;  // down's input width
  const std::vector<int32_t> ids = {4, 1, 5};
  const std::vector<float> sel_w = {0.5f, 0.3f, 0.2f};
  const int64_t n_sel = static_cast<int64_t>(ids.size());
  std::vector<float> x = testing::randn(rng, H);
  std::vector<float> xd = testing::randn(rng, n_sel * Iw);

  // References: per-expert slices through matmul_ref.
  std::vector<float> ref_up(n_sel * I), ref_down(H, 0.0f), base = testing::randn(rng, H);
  for (int64_t i = 0; i < n_sel; ++i) {
    const WeightView wu = up.view(up.bytes.data()).slice_rows(ids[i] * I, I);
    matmul_ref(wu, x.data(), H, 1, &ref_up[i * I], I);
    std::vector<float> yd(H);
    const WeightView wd = down.view(down.bytes.data()).slice_rows(ids[i] * H, H);
    matmul_ref(wd, &xd[i * Iw], Iw, 1, yd.data(), H);
    for (int64_t r = 0; r < H; ++r) ref_down[r] += sel_w[i] * yd[r];
  }

  DeviceBuffer dup = upload(up.bytes), ddown = upload(down.bytes), dx = upload(x),
               dxd = upload(xd), dids = upload(ids), dselw = upload(sel_w), dbase = upload(base);
  DeviceBuffer yup = poisoned<float>(n_sel * I);
  DeviceBuffer ws1 = poisoned<uint8_t>(act_q8_bytes(H, 1) + 256);
  DeviceBuffer ws2 = poisoned<uint8_t>(act_q8_bytes(Iw, n_sel) + 256);
  DeviceAct a{dx.as<float>(), H, nullptr, nullptr, H, 1};
  DeviceAct ad{dxd.as<float>(), Iw, nullptr, nullptr, Iw, n_sel};
  if (matvec_uses_q8(type)) {
    RS_ASSERT_OK(quantize_act(dx.as<float>(), H, 1, H, ws1.get(), ws1.size(), &a));
    RS_ASSERT_OK(quantize_act(dxd.as<float>(), Iw, n_sel, Iw, ws2.get(), ws2.size(), &ad));
  }
  RS_ASSERT_OK(moe_matvec_up(up.view(dup.get()), I, dids.as<int32_t>(), n_sel, a, yup.as<float>()));
  // down, accumulating onto `base`
  RS_ASSERT_OK(moe_matvec_down(down.view(ddown.get()), H, dids.as<int32_t>(), dselw.as<float>(),
                               n_sel, ad, dbase.as<float>(), /*accumulate=*/true));
  const std::vector<float> gu = download<float>(yup, n_sel * I);
  const std::vector<float> gd = download<float>(dbase, H);
  for (int64_t i = 0; i < n_sel; ++i)
    for (int64_t r = 0; r < I; ++r) {
      const double tol = matvec_tol(type, &up.deq[(ids[i] * I + r) * H], x.data(), H);
      ASSERT_NEAR(gu[i * I + r], ref_up[i * I + r], tol) << "up sel " << i << " row " << r;
    }
  for (int64_t r = 0; r < H; ++r) {
    double tol = 1e-6 * std::abs(base[r]);
    for (int64_t i = 0; i < n_sel; ++i)
      tol += sel_w[i] * matvec_tol(type, &down.deq[(ids[i] * H + r) * Iw], &xd[i * Iw], Iw);
    ASSERT_NEAR(gd[r], base[r] + ref_down[r], tol) << "down row " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, CudaMoeTest, ::testing::ValuesIn(kTypes),
                         [](const ::testing::TestParamInfo<GgmlType>& info) {
                           return std::string(type_name(info.param));
                         });

// ---- embedding lookup ---------------------------------------------------------------------------
class CudaEmbeddingTest : public ::testing::TestWithParam<GgmlType> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaEmbeddingTest, RowsEqualReferenceDequantisation) {
  const GgmlType type = GetParam();
  constexpr int64_t rows = 50, cols = 768;
  std::mt19937 rng(static_cast<uint32_t>(900 + static_cast<int>(type)));
  const HostMatrix m = make_matrix(type, rows, cols, 0, rng);
  const std::vector<int32_t> ids = {3, 0, 49, 3, 17};
  const int64_t n = static_cast<int64_t>(ids.size());
  DeviceBuffer dw = upload(m.bytes), dids = upload(ids), dout = poisoned<float>(n * cols);
  RS_ASSERT_OK(embedding_lookup(m.view(dw.get()), dids.as<int32_t>(), n, dout.as<float>()));
  const std::vector<float> got = download<float>(dout, n * cols);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < cols; ++c) {
      const float ref = m.deq[ids[t] * cols + c];
      ASSERT_NEAR(got[t * cols + c], ref, 1e-6 * std::abs(ref) + 1e-7)
          << type_name(type) << " token " << t << " col " << c;
    }
}

INSTANTIATE_TEST_SUITE_P(Formats, CudaEmbeddingTest, ::testing::ValuesIn(kTypes),
                         [](const ::testing::TestParamInfo<GgmlType>& info) {
                           return std::string(type_name(info.param));
                         });

// ---- argument checks (run without a device too: they fail before any CUDA call) --------------
TEST(CudaMatvecArgs, RejectsUnsupportedTypeAndBadShapes) {
  WeightView w;
  w.type = GgmlType::Q2_K;
  w.data = reinterpret_cast<void*>(0x1000);
  w.cols = 256;
  w.rows = 4;
  w.row_stride = 84;
  DeviceAct a{nullptr, 0, nullptr, nullptr, 256, 1};
  absl::Status st = matvec(w, a, nullptr, 4);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("Q2_K"), std::string::npos) << st.message();
  w.type = GgmlType::Q4_K;
  w.cols = 100;
  w.row_stride = 144;
  st = matvec(w, a, nullptr, 4);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("100"), std::string::npos) << st.message();
  EXPECT_TRUE(cuda_supports(GgmlType::IQ4_XS));
  EXPECT_FALSE(cuda_supports(GgmlType::Q3_K));
  EXPECT_TRUE(matvec_uses_q8(GgmlType::Q6_K));
  EXPECT_FALSE(matvec_uses_q8(GgmlType::BF16));
}

TEST(CudaProbe, SaysWhyWhenNoDevice) {
  std::string why;
  if (cuda_available(&why)) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_FALSE(why.empty());
}

}  // namespace
}  // namespace rs::cuda
