// Fused MoE decode (cuda_ops.h moe_decode) on a device: the emulation test's problems
// (moe_decode_test_util.h) through the checked API, every weight format, routed and shared
// experts; and its refusals. Skips without a GPU.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/cuda/cuda_ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/moe_decode_test_util.h"

namespace rs::cuda {
namespace {

using testing_kernels::MoeDecodeCase;

class CudaMoeDecode : public ::testing::TestWithParam<MoeDecodeCase> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaMoeDecode, MatchesPerSlotReference) {
  const MoeDecodeCase c = GetParam();
  const auto p = testing_kernels::make_moe_decode(c);
  const bool q8 = testing_kernels::moe_decode_q8(c.type);
  const int64_t H = c.H, I = c.I, N = c.N, S = p.slots(), ldh = moe_decode_ldh(I, c.Is);
  ASSERT_EQ(ldh, p.ldh());
  DeviceBuffer dgate = testing::upload(c.fused ? p.fused : p.gate), dup = testing::upload(p.up),
               ddown = testing::upload(p.down), dsg = testing::upload(p.sh_gate),
               dsu = testing::upload(p.sh_up), dsd = testing::upload(p.sh_down),
               dx = testing::upload(p.x), dids = testing::upload(p.ids), dw = testing::upload(p.w),
               dlog = testing::upload(p.sh_logit);
  const WeightView gate{c.type, dgate.get(), H, c.E * (c.fused ? 2 : 1) * I, p.hrb};
  const WeightView up{c.type, dup.get(), H, c.E * I, p.hrb};
  const WeightView down{c.type, ddown.get(), I, c.E * H, p.irb};
  const WeightView sg{c.type, dsg.get(), H, c.Is, p.hrb}, su{c.type, dsu.get(), H, c.Is, p.hrb};
  const WeightView sd{c.type, dsd.get(), c.Is, H, p.isrb};
  MoeDecodeWeights w;
  w.gate = &gate;
  w.up = c.fused ? nullptr : &up;
  w.down = &down;
  if (c.Is) {
    w.sh_gate = &sg;
    w.sh_up = &su;
    w.sh_down = &sd;
  }
  DeviceBuffer xws = testing::poisoned<uint8_t>(act_q8_bytes(H, N));
  DeviceAct x{dx.as<float>(), H, nullptr, nullptr, H, N};
  if (q8) RS_ASSERT_OK(quantize_act(dx.as<float>(), H, N, H, xws.get(), xws.size(), &x));
  DeviceBuffer h = testing::poisoned<float>(S * ldh);
  const size_t wsb = moe_decode_workspace_bytes(S, ldh);
  DeviceBuffer ws = testing::poisoned<uint8_t>(wsb);
  std::vector<float> out0(N * H);
  for (int64_t i = 0; i < N * H; ++i) out0[i] = 0.5f * static_cast<float>(i % 7);
  DeviceBuffer out = c.accumulate ? testing::upload(out0) : testing::poisoned<float>(N * H);
  RS_ASSERT_OK(moe_decode(w, c.E, I, c.Is, x, dids.as<int32_t>(), dw.as<float>(), c.k,
                          c.Is ? dlog.as<float>() : nullptr, h.as<float>(), ws.get(), wsb,
                          out.as<float>(), c.accumulate));
  // The q8 activations the kernels read (the device's quantiser), and h's q8 blocks in ws.
  std::vector<int8_t> xq;
  std::vector<float> xds;
  if (q8) {
    xq.resize(N * H);
    xds.resize(N * H / 32 * 2);
    RS_ASSERT_OK(synchronize());
    RS_ASSERT_OK(copy_to_host(xq.data(), x.q, xq.size()));
    RS_ASSERT_OK(copy_to_host(xds.data(), x.ds, xds.size() * 4));
  }
  std::vector<int8_t> hq(S * ldh);
  std::vector<float> hds(S * (ldh / 32) * 2);
  if (q8) {
    auto l = act_q8_layout("test", h.as<float>(), ldh, S, ldh, ws.get(), wsb);
    RS_ASSERT_OK(l.status());
    RS_ASSERT_OK(synchronize());
    RS_ASSERT_OK(copy_to_host(hq.data(), l->q, hq.size()));
    RS_ASSERT_OK(copy_to_host(hds.data(), l->ds, hds.size() * 4));
  }
  testing_kernels::check_moe_decode(p, q8 ? xq.data() : nullptr, q8 ? xds.data() : nullptr,
                                    testing::download<float>(h, S * ldh), q8 ? hq.data() : nullptr,
                                    q8 ? hds.data() : nullptr,
                                    testing::download<float>(out, N * H), out0);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, CudaMoeDecode,
    ::testing::Values(
        MoeDecodeCase{GgmlType::F32, 10, 8, 2, 64, 256, 40, false, false, false},
        MoeDecodeCase{GgmlType::F32, 5, 2, 3, 64, 40, 24, true, true, true},
        MoeDecodeCase{GgmlType::F16, 6, 3, 2, 96, 64, 96, false, false, true},
        MoeDecodeCase{GgmlType::BF16, 5, 2, 1, 64, 48, 0, true, false, false},
        MoeDecodeCase{GgmlType::Q8_0, 7, 2, 1, 64, 160, 32, false, true, false},
        MoeDecodeCase{GgmlType::Q4_0, 5, 3, 2, 64, 96, 64, true, false, false},
        // 35b-a3b's shapes (H 2048, I = Is = 512, 8 routed experts, a batch of 8 tokens) with
        // 24 experts, not 256: the host quantises every expert (256 took minutes).
        MoeDecodeCase{GgmlType::Q4_K, 24, 8, 8, 2048, 512, 512, true, false, false},
        MoeDecodeCase{GgmlType::Q4_K, 6, 3, 2, 256, 256, 512, true, false, true},
        MoeDecodeCase{GgmlType::Q5_K, 5, 2, 1, 256, 256, 256, false, true, false},
        MoeDecodeCase{GgmlType::Q6_K, 16, 8, 1, 2048, 512, 512, false, false, false},
        MoeDecodeCase{GgmlType::IQ4_XS, 7, 3, 1, 256, 256, 256, true, true, false}),
    [](const auto& info) {
      return std::string(type_name(info.param.type)) + "_" + std::to_string(info.index);
    });

TEST(CudaMoeDecodeArgs, RefusesMismatchedShapesAndTypes) {
  // Checked before anything touches the device, so this runs without a GPU too.
  const WeightView gate{GgmlType::Q4_K, nullptr, 256, 5 * 2 * 64, 144};
  const WeightView down{GgmlType::Q4_K, nullptr, 64, 4 * 256, 36};  // 4 experts, not 5
  DeviceAct x{nullptr, 256, nullptr, nullptr, 256, 1};
  MoeDecodeWeights w;
  w.gate = &gate;
  w.down = &down;
  absl::Status st = moe_decode(w, 5, 64, 0, x, nullptr, nullptr, 2, nullptr, nullptr, nullptr, 0,
                               nullptr, false);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(std::string(st.message()).find("down 1024x64"), std::string::npos) << st;
  const WeightView down5{GgmlType::Q4_K, nullptr, 64, 5 * 256, 36};
  const WeightView sg{GgmlType::Q8_0, nullptr, 256, 64, 272};
  w.down = &down5;
  w.sh_gate = &sg;
  w.sh_up = &sg;
  w.sh_down = &down5;
  float logit = 0;
  st = moe_decode(w, 5, 64, 64, x, nullptr, nullptr, 2, &logit, nullptr, nullptr, 0, nullptr,
                  false);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(std::string(st.message()).find("shared expert types (Q8_0"), std::string::npos) << st;
  EXPECT_FALSE(moe_decode_shared_fits(gate, down5, sg, sg, down5));
  EXPECT_TRUE(moe_decode_shared_fits(gate, down5, gate, gate, down5));
}

}  // namespace
}  // namespace rs::cuda
