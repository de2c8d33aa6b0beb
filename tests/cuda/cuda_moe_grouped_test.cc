// Grouped MoE prefill (cuda_glue.h moe_grouped) on a device against matmul_ref per (token, slot):
// fused and separate gate/up tensors, every weight format. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/cuda/cuda_glue.h"
#include "kernels/formats.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/kernel_check.h"

namespace rs::cuda {
namespace {

struct Case {
  GgmlType type;
  int64_t E, k, N, H, I;
  bool fused;
};

class CudaMoeGrouped : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaMoeGrouped, MatchesPerTokenReference) {
  const Case c = GetParam();
  std::mt19937 rng(11 + static_cast<int>(c.type));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto rnd = [&](int64_t n, float s) {
    std::vector<float> v(n);
    for (auto& x : v) x = s * nd(rng);
    return v;
  };
  const size_t hrb = row_bytes(c.type, c.H), irb = row_bytes(c.type, c.I);
  // gate|up as [E][2I][H]; the separate layout splits the same numbers into two tensors.
  const std::vector<float> gu_f = rnd(c.E * 2 * c.I * c.H, 0.1f), down_f = rnd(c.E * c.H * c.I, 0.1f);
  std::vector<float> g_f, u_f;
  for (int64_t e = 0; e < c.E; ++e) {
    const float* b = gu_f.data() + e * 2 * c.I * c.H;
    g_f.insert(g_f.end(), b, b + c.I * c.H);
    u_f.insert(u_f.end(), b + c.I * c.H, b + 2 * c.I * c.H);
  }
  const auto gu_q = testing_kernels::quantize_rows(c.type, gu_f, c.E * 2 * c.I, c.H);
  const auto g_q = testing_kernels::quantize_rows(c.type, g_f, c.E * c.I, c.H);
  const auto u_q = testing_kernels::quantize_rows(c.type, u_f, c.E * c.I, c.H);
  const auto d_q = testing_kernels::quantize_rows(c.type, down_f, c.E * c.H, c.I);
  const std::vector<float> x = rnd(c.N * c.H, 1.0f);
  std::vector<int32_t> ids(c.N * c.k);
  std::vector<float> w(c.N * c.k);
  for (int64_t t = 0; t < c.N; ++t) {
    std::vector<int32_t> pool(c.E);
    for (int32_t e = 0; e < c.E; ++e) pool[e] = e;
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int64_t i = 0; i < c.k; ++i) {
      ids[t * c.k + i] = pool[i];
      w[t * c.k + i] = 0.1f + 0.05f * static_cast<float>(i + t % 3);
    }
  }
  DeviceBuffer dgu = testing::upload(gu_q), dg = testing::upload(g_q), du = testing::upload(u_q),
               dd = testing::upload(d_q), dx = testing::upload(x), dids = testing::upload(ids),
               dw = testing::upload(w);
  const int64_t S = c.N * c.k;
  DeviceBuffer bgu = testing::poisoned<float>(S * 2 * c.I), bh = testing::poisoned<float>(S * c.I),
               bd = testing::poisoned<float>(S * c.H), out = testing::poisoned<float>(c.N * c.H);
  const size_t wsb = moe_grouped_workspace_bytes(S, c.E);
  DeviceBuffer ws = testing::poisoned<uint8_t>(wsb);
  const WeightView gate = c.fused ? WeightView{c.type, dgu.get(), c.H, c.E * 2 * c.I, hrb}
                                  : WeightView{c.type, dg.get(), c.H, c.E * c.I, hrb};
  const WeightView up{c.type, du.get(), c.H, c.E * c.I, hrb};
  const WeightView down{c.type, dd.get(), c.I, c.E * c.H, irb};
  RS_ASSERT_OK(moe_grouped(gate, c.fused ? nullptr : &up, down, c.E, c.I, c.H, dx.as<float>(), c.N,
                           dids.as<int32_t>(), dw.as<float>(), c.k, bgu.as<float>(), bh.as<float>(),
                           bd.as<float>(), ws.get(), wsb, out.as<float>(), nullptr));
  const auto want = testing_kernels::moe_reference(c.type, gu_q, d_q, c.H, c.I, x, c.N, c.k, ids, w);
  EXPECT_LE(testing_kernels::max_rel(testing::download<float>(out, c.N * c.H), want), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, CudaMoeGrouped,
    ::testing::Values(Case{GgmlType::F32, 5, 2, 37, 64, 96, true},
                      Case{GgmlType::F16, 6, 3, 70, 96, 64, false},
                      Case{GgmlType::BF16, 6, 3, 20, 96, 64, true},
                      Case{GgmlType::Q8_0, 7, 2, 45, 64, 160, false},
                      Case{GgmlType::Q4_0, 7, 2, 45, 64, 160, true},
                      Case{GgmlType::Q4_K, 64, 8, 120, 512, 256, true},  // many slots per expert
                      Case{GgmlType::Q5_K, 6, 3, 33, 256, 256, false},
                      Case{GgmlType::Q6_K, 4, 2, 40, 256, 512, true},
                      Case{GgmlType::IQ4_XS, 9, 4, 19, 256, 256, false}),
    [](const auto& info) {
      return std::string(type_name(info.param.type)) + (info.param.fused ? "_fused" : "_split");
    });

TEST(CudaMoeGroupedArgs, RefusesMismatchedShapes) {
  const WeightView gate{GgmlType::F32, nullptr, 64, 5 * 2 * 96, 256};
  const WeightView down{GgmlType::F32, nullptr, 96, 4 * 64, 384};  // 4 experts, not 5
  const absl::Status st = moe_grouped(gate, nullptr, down, 5, 96, 64, nullptr, 3, nullptr, nullptr,
                                      2, nullptr, nullptr, nullptr, nullptr, 1 << 20, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(std::string(st.message()).find("down 256x96"), std::string::npos) << st;
}

}  // namespace
}  // namespace rs::cuda
