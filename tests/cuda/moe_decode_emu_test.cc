// The fused MoE decode kernels (kernels/cuda/moe_decode_kernel.cuh) built for the host and run
// through the SIMT emulator (moe_decode_test_util.h: the problem and its check): routed and
// shared experts, every weight format, awkward row counts (partial tiles, a shared expert wider
// or narrower than the routed ones), more slots than one warp pass takes, a skipped (negative)
// id, accumulate. Runs everywhere (no GPU).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/cuda/moe_decode_kernel.cuh"
#include "tests/cuda/moe_decode_test_util.h"

namespace rs::cuda::moed {
namespace {

using testing_kernels::MoeDecodeCase;

std::string run_up(GgmlType t, const UpArgs& a) {
  std::string err = "unsupported type";
  RS_CUDA_TYPE_SWITCH(t, err = simt::launch({static_cast<unsigned>(up_tiles(a)),
                                             static_cast<unsigned>(up_slots(a))},
                                            {kUpThreads}, 0, moe_up_kernel<kT>, a));
  return err;
}
std::string run_down(GgmlType t, const DownArgs& a) {
  std::string err = "unsupported type";
  RS_CUDA_TYPE_SWITCH(t, err = simt::launch({static_cast<unsigned>((a.H + kDownRows - 1) / kDownRows),
                                             static_cast<unsigned>(a.n_tok)},
                                            {kDownThreads}, 0, moe_down_kernel<kT>, a));
  return err;
}

class MoeDecodeEmu : public ::testing::TestWithParam<MoeDecodeCase> {};

TEST_P(MoeDecodeEmu, MatchesPerSlotReference) {
  const MoeDecodeCase c = GetParam();
  simt::set_order(c.E % 2 ? simt::Order::kReverse : simt::Order::kShuffled, 11);
  const auto p = testing_kernels::make_moe_decode(c);
  const bool q8 = testing_kernels::moe_decode_q8(c.type);
  const int64_t H = c.H, I = c.I, N = c.N, S = p.slots(), ldh = p.ldh();
  std::vector<int8_t> xq(N * H);
  std::vector<float> xds(N * H / 32 * 2);
  if (q8)
    for (int64_t t = 0; t < N; ++t)
      testing_kernels::quantize_q8(p.x.data() + t * H, H, xq.data() + t * H,
                                   xds.data() + t * (H / 32) * 2);
  std::vector<float> h(S * ldh, NAN);
  std::vector<int8_t> hq(S * ldh, 0);
  std::vector<float> hds(S * ldh / 32 * 2, NAN);

  UpArgs ua;
  ua.gate = c.fused ? p.fused.data() : p.gate.data();
  ua.up = c.fused ? p.fused.data() + I * p.hrb : p.up.data();
  ua.expert_stride = (c.fused ? 2 : 1) * I * p.hrb;
  ua.I = I;
  if (c.Is) {
    ua.sh_gate = p.sh_gate.data();
    ua.sh_up = p.sh_up.data();
    ua.Is = c.Is;
  }
  ua.row_stride = p.hrb;
  ua.H = H;
  ua.ids = p.ids.data();
  ua.k = c.k;
  ua.n_tok = N;
  ua.x = p.x.data();
  ua.xq = q8 ? xq.data() : nullptr;
  ua.xds = q8 ? xds.data() : nullptr;
  ua.h = h.data();
  ua.hq = q8 ? hq.data() : nullptr;
  ua.hds = q8 ? hds.data() : nullptr;
  ua.ldh = ldh;
  ASSERT_EQ(run_up(c.type, ua), "");

  DownArgs da;
  da.down = p.down.data();
  da.expert_stride = H * p.irb;
  da.row_stride = p.irb;
  da.I = I;
  if (c.Is) {
    da.sh_down = p.sh_down.data();
    da.sh_row_stride = p.isrb;
    da.Is = c.Is;
    da.sh_logit = p.sh_logit.data();
  }
  da.H = H;
  da.ids = p.ids.data();
  da.w = p.w.data();
  da.k = c.k;
  da.n_tok = N;
  da.h = h.data();
  da.hq = ua.hq;
  da.hds = ua.hds;
  da.ldh = ldh;
  std::vector<float> out(N * H);
  for (int64_t i = 0; i < N * H; ++i) out[i] = c.accumulate ? 0.5f * static_cast<float>(i % 7) : NAN;
  const std::vector<float> out0 = out;
  da.out = out.data();
  da.accumulate = c.accumulate;
  ASSERT_EQ(run_down(c.type, da), "");
  testing_kernels::check_moe_decode(p, ua.xq, ua.xds, h, ua.hq, ua.hds, out, out0);
  simt::set_order(simt::Order::kForward);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, MoeDecodeEmu,
    ::testing::Values(
        // k = 8 routed over I = 256 F32 rows: two warp passes of the down kernel.
        MoeDecodeCase{GgmlType::F32, 10, 8, 2, 64, 256, 40, false, false, false},
        MoeDecodeCase{GgmlType::F32, 5, 2, 3, 64, 40, 24, true, true, true},
        MoeDecodeCase{GgmlType::F16, 6, 3, 2, 96, 64, 96, false, false, true},
        MoeDecodeCase{GgmlType::BF16, 5, 2, 1, 64, 48, 0, true, false, false},
        MoeDecodeCase{GgmlType::Q8_0, 7, 2, 1, 64, 160, 32, false, true, false},
        MoeDecodeCase{GgmlType::Q4_0, 5, 3, 2, 64, 96, 64, true, false, false},
        MoeDecodeCase{GgmlType::Q4_K, 6, 3, 2, 256, 256, 512, true, false, true},
        MoeDecodeCase{GgmlType::Q5_K, 5, 2, 1, 256, 256, 256, false, true, false},
        MoeDecodeCase{GgmlType::Q6_K, 4, 2, 2, 512, 256, 0, false, false, false},
        MoeDecodeCase{GgmlType::IQ4_XS, 7, 3, 1, 256, 256, 256, true, true, false}),
    [](const auto& info) {
      return std::string(type_name(info.param.type)) + "_" + std::to_string(info.index);
    });

}  // namespace
}  // namespace rs::cuda::moed
