// The grouped MoE prefill kernels (kernels/cuda/moe_grouped_kernel.cuh) built for the host and
// run through the SIMT emulator: bucket sort, the grouped gemm for each weight format, and the
// weighted combine, against matmul_ref per (token, slot). Runs everywhere (no GPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <random>
#include <vector>

#include "kernels/cuda/moe_grouped_kernel.cuh"
#include "kernels/formats.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "tests/cuda/kernel_check.h"

namespace rs::cuda::moe {
namespace {

void run_gemm(GgmlType t, const GemmArgs& g, unsigned gy, std::string* err) {
  const unsigned gx = static_cast<unsigned>((g.rows + kTileN - 1) / kTileN);
  *err = "unsupported type";
  RS_CUDA_TYPE_SWITCH(t, *err = simt::launch({gx, gy}, {kGemmThreads}, 0, moe_gemm_kernel<kT>, g));
}

struct Case {
  GgmlType type;
  int64_t E, k, N, H, I;
};

class MoeGroupedEmu : public ::testing::TestWithParam<Case> {};

TEST_P(MoeGroupedEmu, MatchesPerTokenReference) {
  const Case c = GetParam();
  // Reverse thread order between barriers (the forward order is the other tests' default): the
  // sort's atomics and the tiles' barriers must not depend on it.
  simt::set_order(c.E % 2 ? simt::Order::kReverse : simt::Order::kShuffled, 3);
  std::mt19937 rng(5 + static_cast<int>(c.type));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto rnd = [&](int64_t n, float s) {
    std::vector<float> v(n);
    for (auto& x : v) x = s * nd(rng);
    return v;
  };
  // Experts: up (gate|up fused, 2I rows of H) and down (H rows of I).
  const std::vector<float> up_f = rnd(c.E * 2 * c.I * c.H, 0.1f), down_f = rnd(c.E * c.H * c.I, 0.1f);
  const auto up_q = testing_kernels::quantize_rows(c.type, up_f, c.E * 2 * c.I, c.H);
  const auto down_q = testing_kernels::quantize_rows(c.type, down_f, c.E * c.H, c.I);
  const size_t up_rb = row_bytes(c.type, c.H), down_rb = row_bytes(c.type, c.I);
  const std::vector<float> x = rnd(c.N * c.H, 1.0f);
  // Routing: k distinct experts per token, skewed (expert 0 popular, the last one never used).
  std::vector<int32_t> ids(c.N * c.k);
  std::vector<float> w(c.N * c.k);
  for (int64_t t = 0; t < c.N; ++t) {
    std::vector<int32_t> pool;
    for (int32_t e = 0; e < c.E - 1; ++e) pool.push_back(e);
    std::shuffle(pool.begin() + 1, pool.end(), rng);
    if (t % 3 == 0) std::swap(pool[0], pool[pool.size() - 1]);
    for (int64_t i = 0; i < c.k; ++i) {
      ids[t * c.k + i] = pool[i];
      w[t * c.k + i] = 0.2f + 0.1f * static_cast<float>(i);
    }
  }
  const int64_t S = c.N * c.k;
  std::vector<int32_t> perm(S, -7), inv(S, -7), off(c.E + 1, -7), tile_off(c.E + 1, -7);
  ASSERT_EQ(simt::launch({1}, {kSortThreads}, 2 * c.E * sizeof(int), moe_sort_kernel, ids.data(),
                         S, c.E, perm.data(), inv.data(), off.data(), tile_off.data()),
            "");
  for (int64_t s = 0; s < S; ++s) {
    ASSERT_EQ(perm[inv[s]], s);
    const int32_t e = ids[s];
    EXPECT_GE(inv[s], off[e]);
    EXPECT_LT(inv[s], off[e + 1]);
  }
  EXPECT_EQ(off[c.E], S);

  // gate|up for every position.
  std::vector<float> gu(S * 2 * c.I, NAN);
  GemmArgs g;
  g.w = up_q.data();
  g.expert_stride = 2 * c.I * up_rb;
  g.row_stride = up_rb;
  g.cols = c.H;
  g.rows = 2 * c.I;
  g.a = x.data();
  g.lda = c.H;
  g.by_token = true;
  g.perm = perm.data();
  g.k = c.k;
  g.off = off.data();
  g.tile_off = tile_off.data();
  g.E = c.E;
  g.y = gu.data();
  g.ldy = 2 * c.I;
  const unsigned gy = static_cast<unsigned>(max_tiles(S, c.E));
  std::string err;
  run_gemm(c.type, g, gy, &err);
  ASSERT_EQ(err, "");
  // swiglu on the host (the device's swiglu_rows is tested in cuda_ops_test).
  std::vector<float> hsw(S * c.I);
  for (int64_t p = 0; p < S; ++p)
    for (int64_t i = 0; i < c.I; ++i)
      hsw[p * c.I + i] = silu(gu[p * 2 * c.I + i]) * gu[p * 2 * c.I + c.I + i];
  std::vector<float> d(S * c.H, NAN);
  GemmArgs g2 = g;
  g2.w = down_q.data();
  g2.expert_stride = c.H * down_rb;
  g2.row_stride = down_rb;
  g2.cols = c.I;
  g2.rows = c.H;
  g2.a = hsw.data();
  g2.lda = c.I;
  g2.by_token = false;
  g2.y = d.data();
  g2.ldy = c.H;
  run_gemm(c.type, g2, gy, &err);
  ASSERT_EQ(err, "");
  std::vector<float> out(c.N * c.H, NAN);
  ASSERT_EQ(simt::launch({static_cast<unsigned>((c.H + kCombineThreads - 1) / kCombineThreads),
                          static_cast<unsigned>(c.N)},
                         {kCombineThreads}, 0, moe_combine_kernel, d.data(), c.H, inv.data(),
                         w.data(), c.k, c.H, out.data()),
            "");

  const auto want = testing_kernels::moe_reference(c.type, up_q, down_q, c.H, c.I, x, c.N, c.k,
                                                   ids, w);
  EXPECT_LE(testing_kernels::max_rel(out, want), 1e-5);
  simt::set_order(simt::Order::kForward);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, MoeGroupedEmu,
    ::testing::Values(Case{GgmlType::F32, 5, 2, 37, 64, 96}, Case{GgmlType::F16, 6, 3, 20, 96, 64},
                      Case{GgmlType::Q8_0, 7, 2, 45, 64, 160},
                      Case{GgmlType::Q4_K, 6, 3, 33, 256, 256},
                      Case{GgmlType::Q6_K, 4, 2, 40, 256, 512},
                      Case{GgmlType::IQ4_XS, 7, 3, 12, 256, 256}),
    [](const auto& info) { return std::string(type_name(info.param.type)); });

}  // namespace
}  // namespace rs::cuda::moe
