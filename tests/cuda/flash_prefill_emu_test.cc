// The flash prefill attention kernel (kernels/cuda/flash_prefill_kernel.cuh) built for the host
// and run through the SIMT emulator against attention_ref, for the three cache types and
// several GQA shapes, with and without earlier context. Runs everywhere (no GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/flash_prefill_kernel.cuh"
#include "kernels/formats.h"
#include "kernels/ops.h"

namespace rs::cuda::flash {
namespace {

struct Case {
  GgmlType kv;
  int64_t T, n_past, nh, nkv, hd;
};

class FlashPrefillEmu : public ::testing::TestWithParam<Case> {};

TEST_P(FlashPrefillEmu, MatchesAttentionRef) {
  const Case c = GetParam();
  std::mt19937 rng(3 + static_cast<uint32_t>(c.T));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t n_pos = c.n_past + c.T, row = c.nkv * c.hd;
  const size_t rb = row_bytes(c.kv, row);
  std::vector<uint8_t> kc(n_pos * rb), vc(n_pos * rb);
  std::vector<float> tmp(row);
  for (int64_t p = 0; p < n_pos; ++p) {
    for (auto& x : tmp) x = nd(rng);
    quantize_row_ref(c.kv, tmp.data(), kc.data() + p * rb, row);
    for (auto& x : tmp) x = nd(rng);
    quantize_row_ref(c.kv, tmp.data(), vc.data() + p * rb, row);
  }
  std::vector<float> q(c.T * c.nh * c.hd);
  for (auto& x : q) x = 2.0f * nd(rng);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
  std::vector<float> want(q.size()), got(q.size(), NAN);
  const KvView kv_k{c.kv, kc.data(), c.nkv, c.hd, rb, 0}, kv_v{c.kv, vc.data(), c.nkv, c.hd, rb, 0};
  attention_ref(q.data(), c.T, c.nh, c.hd, kv_k, kv_v, c.n_past, scale, want.data());

  PrefillArgs a;
  a.q = q.data();
  a.T = c.T;
  a.nh = c.nh;
  a.nkv = c.nkv;
  a.hd = c.hd;
  a.k = kc.data();
  a.v = vc.data();
  a.k_stride = a.v_stride = rb;
  a.n_past = c.n_past;
  a.scale = scale;
  a.out = got.data();
  const int64_t tpb = tokens_per_block(c.nh / c.nkv);
  const simt::Dim grid(static_cast<unsigned>((c.T + tpb - 1) / tpb), static_cast<unsigned>(c.nkv));
  std::string err = "unsupported";
  switch (c.kv) {
    case GgmlType::F32: err = simt::launch(grid, {kFlashThreads}, 0, flash_prefill_kernel<GgmlType::F32>, a); break;
    case GgmlType::F16: err = simt::launch(grid, {kFlashThreads}, 0, flash_prefill_kernel<GgmlType::F16>, a); break;
    case GgmlType::Q8_0: err = simt::launch(grid, {kFlashThreads}, 0, flash_prefill_kernel<GgmlType::Q8_0>, a); break;
    default: break;
  }
  ASSERT_EQ(err, "");
  double max_err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(e <= max_err)) max_err = e;  // NaN (an unwritten output) sticks
  }
  EXPECT_LE(max_err, 2e-5);  // outputs are convex mixtures of V rows (|v| ~ 1-4)
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
