// Flash prefill attention (cuda_glue.h attention_prefill) on a device against attention_ref, for
// the three cache types and several GQA shapes (the emulation test's and the models'). Skips
// without a GPU; the argument checks run everywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_glue.h"
#include "kernels/formats.h"
#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/kernel_check.h"

namespace rs::cuda {
namespace {

struct Case {
  GgmlType kv;
  int64_t T, n_past, nh, nkv, hd;
};

class CudaFlashPrefill : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaFlashPrefill, MatchesAttentionRef) {
  const Case c = GetParam();
  const auto p = testing_kernels::make_attn(c.kv, c.T, c.n_past, c.nh, c.nkv, c.hd);
  DeviceBuffer dq = testing::upload(p.q), dk = testing::upload(p.k), dv = testing::upload(p.v);
  DeviceBuffer out = testing::poisoned<float>(p.q.size());
  RS_ASSERT_OK(attention_prefill(dq.as<float>(), c.T, c.nh, c.hd,
                                 KvView{c.kv, dk.get(), c.nkv, c.hd, p.rb, 0},
                                 KvView{c.kv, dv.get(), c.nkv, c.hd, p.rb, 0}, c.n_past, p.scale,
                                 out.as<float>(), nullptr));
  // Device expf; outputs are mixtures of V rows (|v| ~ 1-4).
  EXPECT_LE(testing_kernels::max_abs(testing::download<float>(out, p.q.size()), p.want), 5e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaFlashPrefill,
    ::testing::Values(Case{GgmlType::F32, 7, 0, 4, 2, 64}, Case{GgmlType::Q8_0, 37, 19, 8, 1, 128},
                      Case{GgmlType::F16, 5, 40, 6, 2, 96}, Case{GgmlType::F16, 20, 3, 16, 2, 256},
                      Case{GgmlType::F32, 3, 0, 32, 1, 32},
                      Case{GgmlType::F16, 128, 3000, 16, 2, 256},   // 35B-A3B shape, deep in the cache
                      Case{GgmlType::Q8_0, 300, 700, 24, 4, 256}),  // 27B
    [](const auto& info) {
      const Case& c = info.param;
      return std::string(type_name(c.kv)) + "_T" + std::to_string(c.T) + "_past" +
             std::to_string(c.n_past) + "_R" + std::to_string(c.nh / c.nkv) + "_hd" +
             std::to_string(c.hd);
    });

TEST(CudaFlashPrefillArgs, RefusesUnsupportedShapes) {
  const KvView k{GgmlType::F16, nullptr, 1, 64, 128, 0};
  absl::Status st = attention_prefill(nullptr, 4, 64, 64, k, k, 0, 1.0f, nullptr);  // R = 64
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(std::string(st.message()).find("nh 64"), std::string::npos) << st;
  const KvView k4{GgmlType::Q4_K, nullptr, 1, 64, 128, 0};
  st = attention_prefill(nullptr, 4, 2, 64, k4, k4, 0, 1.0f, nullptr);
  EXPECT_NE(std::string(st.message()).find("Q4_K"), std::string::npos) << st;
}

}  // namespace
}  // namespace rs::cuda
