// The chunked delta rule (cuda_glue.h delta_rule_chunked) on a device against the recurrence
// (delta_rule_recurrent_ref) and against the device's token-by-token kernel. Skips without a GPU;
// the argument checks run everywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_glue.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/kernel_check.h"

namespace rs::cuda {
namespace {

struct Case {
  int64_t T, Hk, Hv, dk, dv;
};

class CudaDnChunk : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaDnChunk, MatchesRecurrence) {
  const Case c = GetParam();
  const auto p = testing_kernels::make_delta(c.T, c.Hk, c.Hv, c.dk, c.dv);
  DeviceBuffer dq = testing::upload(p.q), dk = testing::upload(p.k), dv = testing::upload(p.v),
               dg = testing::upload(p.g), db = testing::upload(p.beta), dS = testing::upload(p.S0);
  DeviceBuffer out = testing::poisoned<float>(p.o_want.size());
  RS_ASSERT_OK(delta_rule_chunked(p.d, dq.as<float>(), dk.as<float>(), dv.as<float>(),
                                  dg.as<float>(), db.as<float>(), dS.as<float>(), out.as<float>()));
  EXPECT_LT(testing_kernels::max_rel(testing::download<float>(out, p.o_want.size()), p.o_want), 1e-4);
  EXPECT_LT(testing_kernels::max_rel(testing::download<float>(dS, p.S_want.size()), p.S_want), 1e-4);
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
