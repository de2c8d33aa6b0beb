// The flash prefill attention kernel (kernels/cuda/flash_prefill_kernel.cuh) built for the host
// and run through the SIMT emulator against attention_ref, for the three cache types and
// several GQA shapes, with and without earlier context. Runs everywhere (no GPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/flash_prefill_kernel.cuh"
#include "kernels/formats.h"
#include "kernels/ops.h"
#include "tests/cuda/kernel_check.h"

namespace rs::cuda::flash {
namespace {

struct Case {
  GgmlType kv;
  int64_t T, n_past, nh, nkv, hd;
};

class FlashPrefillEmu : public ::testing::TestWithParam<Case> {};

TEST_P(FlashPrefillEmu, MatchesAttentionRef) {
  const Case c = GetParam();
  const auto p = testing_kernels::make_attn(c.kv, c.T, c.n_past, c.nh, c.nkv, c.hd);
  std::vector<float> got(p.q.size(), NAN);
  PrefillArgs a;
  a.q = p.q.data();
  a.T = c.T;
  a.nh = c.nh;
  a.nkv = c.nkv;
  a.hd = c.hd;
  a.k = p.k.data();
  a.v = p.v.data();
  a.k_stride = a.v_stride = p.rb;
  a.n_past = c.n_past;
  a.scale = p.scale;
  a.out = got.data();
  const int64_t tpb = tokens_per_block(c.nh / c.nkv);
  const simt::Dim grid(static_cast<unsigned>((c.T + tpb - 1) / tpb), static_cast<unsigned>(c.nkv));
  // Two thread orders between barriers: a missing barrier changes the result.
  for (simt::Order order : {simt::Order::kForward, simt::Order::kReverse}) {
    simt::set_order(order);
    std::fill(got.begin(), got.end(), NAN);
    std::string err = "unsupported";
    switch (c.kv) {
      case GgmlType::F32: err = simt::launch(grid, {kFlashThreads}, 0, flash_prefill_kernel<GgmlType::F32>, a); break;
      case GgmlType::F16: err = simt::launch(grid, {kFlashThreads}, 0, flash_prefill_kernel<GgmlType::F16>, a); break;
      case GgmlType::Q8_0: err = simt::launch(grid, {kFlashThreads}, 0, flash_prefill_kernel<GgmlType::Q8_0>, a); break;
      default: break;
    }
    ASSERT_EQ(err, "");
    EXPECT_LE(testing_kernels::max_abs(got, p.want), 2e-5);  // mixtures of V rows (|v| ~ 1-4)
  }
  simt::set_order(simt::Order::kForward);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, FlashPrefillEmu,
    ::testing::Values(Case{GgmlType::F32, 7, 0, 4, 2, 64}, Case{GgmlType::Q8_0, 37, 19, 8, 1, 128},
                      Case{GgmlType::F16, 5, 40, 6, 2, 96}, Case{GgmlType::F16, 20, 3, 16, 2, 256},
                      Case{GgmlType::F32, 3, 0, 32, 1, 32}),  // R = 32: one token per block
    [](const auto& info) {
      const Case& c = info.param;
      return std::string(type_name(c.kv)) + "_T" + std::to_string(c.T) + "_past" +
             std::to_string(c.n_past) + "_R" + std::to_string(c.nh / c.nkv) + "_hd" +
             std::to_string(c.hd);
    });

}  // namespace
}  // namespace rs::cuda::flash
