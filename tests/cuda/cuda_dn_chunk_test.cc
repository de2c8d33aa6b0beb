// The chunked delta rule (cuda_glue.h delta_rule_chunked) on a device against the recurrence
// (delta_rule_recurrent_ref) and against the device's token-by-token kernel. Skips without a GPU;
// the argument checks run everywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_glue.h"
#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace rs::cuda {
namespace {

struct Case {
  int64_t T, Hk, Hv, dk, dv;
};

std::vector<float> rnd(int64_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  double mx = 1e-6, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    mx = std::max(mx, std::fabs(static_cast<double>(want[i])));
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(e <= err)) err = e;
  }
  return err / mx;
}

class CudaDnChunk : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaDnChunk, MatchesRecurrence) {
  const Case c = GetParam();
  const DeltaNetDims d{c.T, c.Hk, c.Hv, c.dk, c.dv};
  auto q = rnd(c.T * c.Hk * c.dk, 1, -1, 1), k = rnd(c.T * c.Hk * c.dk, 2, -1, 1);
  l2_norm_ref(q.data(), c.T * c.Hk, c.dk, 1e-6f);
  l2_norm_ref(k.data(), c.T * c.Hk, c.dk, 1e-6f);
  for (auto& x : q) x /= std::sqrt(static_cast<float>(c.dk));
  const auto v = rnd(c.T * c.Hv * c.dv, 3, -1, 1), g = rnd(c.T * c.Hv, 4, -5, 0),
             beta = rnd(c.T * c.Hv, 5, 0.01f, 0.99f), S0 = rnd(c.Hv * c.dk * c.dv, 6, -0.5f, 0.5f);
  std::vector<float> S_ref = S0, o_ref(c.T * c.Hv * c.dv);
  delta_rule_recurrent_ref(d, q.data(), k.data(), v.data(), g.data(), beta.data(), S_ref.data(),
                           o_ref.data());
  DeviceBuffer dq = testing::upload(q), dk = testing::upload(k), dv = testing::upload(v),
               dg = testing::upload(g), db = testing::upload(beta), dS = testing::upload(S0);
  DeviceBuffer out = testing::poisoned<float>(o_ref.size());
  RS_ASSERT_OK(delta_rule_chunked(d, dq.as<float>(), dk.as<float>(), dv.as<float>(),
                                  dg.as<float>(), db.as<float>(), dS.as<float>(), out.as<float>()));
  EXPECT_LT(rel_err(testing::download<float>(out, o_ref.size()), o_ref), 1e-4);
  EXPECT_LT(rel_err(testing::download<float>(dS, S_ref.size()), S_ref), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaDnChunk,
                         ::testing::Values(Case{1, 2, 4, 128, 128}, Case{63, 2, 4, 128, 128},
                                           Case{65, 2, 4, 128, 128}, Case{130, 1, 3, 48, 80},
                                           Case{70, 2, 2, 64, 32},
                                           Case{512, 16, 32, 128, 128}),  // 35B-A3B, one step
                         [](const auto& info) {
                           const Case& c = info.param;
                           return "T" + std::to_string(c.T) + "_Hv" + std::to_string(c.Hv) +
                                  "_dk" + std::to_string(c.dk) + "_dv" + std::to_string(c.dv);
                         });

TEST(CudaDnChunkArgs, RefusesOddOrLargeKeyHeads) {
  const DeltaNetDims d{10, 1, 1, 129, 64};
  const absl::Status st = delta_rule_chunked(d, nullptr, nullptr, nullptr, nullptr, nullptr,
                                             nullptr, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(std::string(st.message()).find("dk 129"), std::string::npos) << st;
}

}  // namespace
}  // namespace rs::cuda
