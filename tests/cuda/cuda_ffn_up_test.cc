// The dense FFN's fused up kernel (cuda_ops.h ffn_up) on a device: the emulation test's problems
// (ffn_up_test_util.h) through the checked API, plus a 27b-shaped one, and the composition the
// model runs (ffn_up, then the down matvec on h's q8 blocks) against the unfused ops (matvec
// pair, SwiGLU, quantize_act, matvec); and its refusals. Skips without a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/ffn_up_test_util.h"

namespace rs::cuda {
namespace {

using testing_kernels::FfnUpCase;

class CudaFfnUp : public ::testing::TestWithParam<FfnUpCase> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaFfnUp, MatchesRowReference) {
  FfnUpCase c = GetParam();
  if (c.I % 32 != 0) GTEST_SKIP() << "ffn_up needs I % 32 == 0 (the emulator covers the kernel)";
  const auto p = testing_kernels::make_ffn_up(c);
  DeviceBuffer dg = testing::upload(p.gate), du = testing::upload(p.up), dx = testing::upload(p.x);
  const WeightView gate{c.type, dg.get(), c.H, c.I, p.rb}, up{c.type, du.get(), c.H, c.I, p.rb};
  ASSERT_TRUE(ffn_up_fits(gate, up));
  DeviceBuffer xws = testing::poisoned<uint8_t>(act_q8_bytes(c.H, c.N));
  DeviceAct x{dx.as<float>(), c.H, nullptr, nullptr, c.H, c.N};
  if (p.q8) RS_ASSERT_OK(quantize_act(dx.as<float>(), c.H, c.N, c.H, xws.get(), xws.size(), &x));
  // The device's q8 of x must be the problem's (the same quantiser), so the reference holds.
  if (p.q8) {
    std::vector<int8_t> xq(c.N * c.H);
    RS_ASSERT_OK(synchronize());
    RS_ASSERT_OK(copy_to_host(xq.data(), x.q, xq.size()));
    ASSERT_EQ(xq, p.xq);
  }
  // Poison of 0xFF bytes: a NaN pattern the check compares bytewise.
  DeviceBuffer h = testing::poisoned<float>(c.N * c.ldh);
  float poison;
  std::memset(&poison, 0xFF, 4);
  const size_t wsb = ffn_up_workspace_bytes(c.I, c.N);
  DeviceBuffer ws = testing::poisoned<uint8_t>(wsb);
  DeviceAct ha;
  RS_ASSERT_OK(ffn_up(gate, up, x, h.as<float>(), c.ldh, c.q8_out, ws.get(), wsb, &ha));
  EXPECT_EQ(ha.x, h.as<float>());
  EXPECT_EQ(ha.cols, c.I);
  EXPECT_EQ(ha.n_tok, c.N);
  std::vector<int8_t> hq;
  std::vector<float> hds;
  if (c.q8_out) {
    ASSERT_NE(ha.q, nullptr);
    hq.resize(c.N * c.I);
    hds.resize(c.N * c.I / 32 * 2);
    RS_ASSERT_OK(synchronize());
    RS_ASSERT_OK(copy_to_host(hq.data(), ha.q, hq.size()));
    RS_ASSERT_OK(copy_to_host(hds.data(), ha.ds, hds.size() * 4));
  } else {
    EXPECT_EQ(ha.q, nullptr);
  }
  testing_kernels::check_ffn_up(p, testing::download<float>(h, c.N * c.ldh), poison,
                                c.q8_out ? hq.data() : nullptr, c.q8_out ? hds.data() : nullptr);
}

std::vector<FfnUpCase> device_cases() {
  std::vector<FfnUpCase> v = testing_kernels::ffn_up_cases();
  v.push_back({GgmlType::Q4_K, 1, 5120, 17408, 17408, true});  // 27b's FFN, one token
  v.push_back({GgmlType::Q4_K, 8, 5120, 1024, 1024, true});    // 27b's width, 8 tokens
  return v;
}

INSTANTIATE_TEST_SUITE_P(Formats, CudaFfnUp, ::testing::ValuesIn(device_cases()),
                         [](const auto& info) {
                           return std::string(type_name(info.param.type)) + "_" +
                                  std::to_string(info.index);
                         });

// The model's fused FFN (ffn_up, then down over h's q8) equals the unfused ops it replaced.
TEST(CudaFfnUpModel, FusedEqualsUnfusedOps) {
  RS_SKIP_WITHOUT_CUDA();
  for (const GgmlType t : {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16}) {
    for (const int64_t N : {1, 3, 8}) {
      const int64_t H = 512, I = 1536;
      const FfnUpCase c{t, N, H, I, I, t != GgmlType::F16};
      const auto p = testing_kernels::make_ffn_up(c);
      std::mt19937 rng(5);
      std::normal_distribution<float> nd(0.0f, 0.1f);
      std::vector<float> down_f(H * I);
      for (auto& v : down_f) v = nd(rng);
      const std::vector<uint8_t> down_q = testing_kernels::quantize_rows(t, down_f, H, I);
      DeviceBuffer dg = testing::upload(p.gate), du = testing::upload(p.up),
                   dd = testing::upload(down_q), dx = testing::upload(p.x);
      const WeightView gate{t, dg.get(), H, I, p.rb}, up{t, du.get(), H, I, p.rb},
          down{t, dd.get(), I, H, row_bytes(t, I)};
      DeviceBuffer xws = testing::poisoned<uint8_t>(act_q8_bytes(H, N));
      DeviceAct x{dx.as<float>(), H, nullptr, nullptr, H, N};
      if (c.q8_out) RS_ASSERT_OK(quantize_act(dx.as<float>(), H, N, H, xws.get(), xws.size(), &x));
      // Fused.
      DeviceBuffer h = testing::poisoned<float>(N * I), ws = testing::poisoned<uint8_t>(
                                                             ffn_up_workspace_bytes(I, N));
      DeviceBuffer y1 = testing::poisoned<float>(N * H);
      DeviceAct ha;
      RS_ASSERT_OK(ffn_up(gate, up, x, h.as<float>(), I, c.q8_out, ws.get(), ws.size(), &ha));
      RS_ASSERT_OK(matvec(down, ha, y1.as<float>(), H));
      // Unfused.
      DeviceBuffer g = testing::poisoned<float>(N * I), u = testing::poisoned<float>(N * I),
                   y2 = testing::poisoned<float>(N * H),
                   hws = testing::poisoned<uint8_t>(act_q8_bytes(I, N));
      RS_ASSERT_OK(matvec(gate, x, g.as<float>(), I));
      RS_ASSERT_OK(matvec(up, x, u.as<float>(), I));
      RS_ASSERT_OK(swiglu(g.as<float>(), u.as<float>(), N * I, g.as<float>()));
      DeviceAct ga{g.as<float>(), I, nullptr, nullptr, I, N};
      if (c.q8_out) RS_ASSERT_OK(quantize_act(g.as<float>(), I, N, I, hws.get(), hws.size(), &ga));
      RS_ASSERT_OK(matvec(down, ga, y2.as<float>(), H));
      const std::vector<float> a = testing::download<float>(y1, N * H),
                               b = testing::download<float>(y2, N * H);
      EXPECT_LE(testing_kernels::max_rel(a, b), 1e-5) << type_name(t) << " N=" << N;
    }
  }
}

TEST(CudaFfnUpArgs, RefusesMismatchedWeights) {
  // Checked before anything touches the device, so this runs without a GPU too.
  const WeightView gate{GgmlType::Q4_K, nullptr, 256, 64, 144};
  const WeightView up6{GgmlType::Q6_K, nullptr, 256, 64, 210};
  const WeightView up40{GgmlType::Q4_K, nullptr, 256, 40, 144};
  EXPECT_FALSE(ffn_up_fits(gate, up6));
  EXPECT_FALSE(ffn_up_fits(up40, up40));  // rows not a multiple of 32
  EXPECT_TRUE(ffn_up_fits(gate, gate));
  DeviceAct x{nullptr, 256, nullptr, nullptr, 256, 1};
  DeviceAct ha;
  float h[64];
  absl::Status st = ffn_up(gate, up6, x, h, 64, true, nullptr, 0, &ha);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(std::string(st.message()).find("up (Q6_K 64x256"), std::string::npos) << st;
  // A null weight is refused by name.
  st = ffn_up(gate, gate, x, h, 64, true, nullptr, 0, &ha);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(std::string(st.message()).find("weight data is null"), std::string::npos) << st;
}

}  // namespace
}  // namespace rs::cuda
