// The fused DeltaNet decode kernel on a device against the CPU reference ops (same problems as
// tests/cuda/dn_decode_emu_test.cc, plus the real models' head shapes). Skips without a GPU.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cuda/cuda_glue.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/dn_decode_test_util.h"

namespace rs::cuda {
namespace {

struct Shape {
  int64_t B, Hk, Hv, dk, dv, K;
  int64_t S = 1;  // column groups per value head (DecodeArgs::col_split)
};

class CudaDnDecode : public ::testing::TestWithParam<Shape> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaDnDecode, MatchesReferenceOps) {
  const Shape sh = GetParam();
  testing_dn::Problem p = testing_dn::make_problem(sh.B, sh.Hk, sh.Hv, sh.dk, sh.dv, sh.K, 7);
  testing_dn::Problem ref = p;
  std::vector<DeviceBuffer> states;
  std::vector<uint8_t*> bases;
  for (auto& s : p.state) {
    states.push_back(testing::upload(s));
    bases.push_back(states.back().as<uint8_t>());
  }
  DeviceBuffer d_bases = testing::upload(bases);
  DeviceBuffer d_conv_w = testing::upload(p.conv_w), d_a = testing::upload(p.ssm_a),
               d_dt = testing::upload(p.dt_bias), d_nw = testing::upload(p.norm_w),
               d_z = testing::upload(p.z), d_b = testing::upload(p.b), d_al = testing::upload(p.al);
  DeviceBuffer d_y = testing::poisoned<float>(p.B * p.Hv * p.dv);
  DeviceBuffer d_cnt = testing::upload(std::vector<int32_t>(p.B * p.Hk, 0));
  DeviceBuffer d_ncnt = testing::upload(std::vector<int32_t>(p.B * p.Hv, 0));
  DeviceBuffer d_npart = testing::poisoned<float>(p.B * p.Hv * sh.S);
  // y's q8 blocks (dv % 32 == 0 shapes): the same bits as quantize_act of y.
  const bool q8 = p.dv % 32 == 0;
  const int64_t ny = p.B * p.Hv * p.dv;
  DeviceBuffer d_yq = testing::poisoned<int8_t>(ny), d_yds = testing::poisoned<float>(ny / 16);
  DeviceBuffer qws = testing::poisoned<uint8_t>(act_q8_bytes(p.Hv * p.dv, p.B));
  for (int step = 0; step < 3; ++step) {
    const std::vector<float> want = testing_dn::reference(ref);
    DeviceBuffer d_u = testing::upload(p.u);
    dn::DecodeArgs a;
    a.Hk = p.Hk; a.Hv = p.Hv; a.dk = p.dk; a.dv = p.dv; a.K = p.K;
    a.u = d_u.as<float>(); a.z = d_z.as<float>(); a.b = d_b.as<float>(); a.al = d_al.as<float>();
    a.conv_w = d_conv_w.as<float>(); a.ssm_a = d_a.as<float>(); a.dt_bias = d_dt.as<float>();
    a.norm_w = d_nw.as<float>();
    a.q_scale = 1.0f / std::sqrt(static_cast<float>(p.dk));
    a.eps = p.eps;
    a.seq_base = d_bases.as<uint8_t*>();
    a.ssm_off = static_cast<size_t>(p.conv_floats()) * 4;
    a.y = d_y.as<float>();
    a.counters = d_cnt.as<int>();
    a.col_split = sh.S;
    if (sh.S > 1) {
      a.norm_part = d_npart.as<float>();
      a.norm_cnt = d_ncnt.as<int>();
    }
    if (q8) {
      a.yq = d_yq.as<int8_t>();
      a.yds = d_yds.as<float>();
    }
    RS_ASSERT_OK(dn_decode(a, p.B, nullptr));
    for (int32_t v : testing::download<int32_t>(d_cnt, p.B * p.Hk))
      ASSERT_EQ(v, 0) << "a counter was not set back";
    for (int32_t v : testing::download<int32_t>(d_ncnt, p.B * p.Hv))
      ASSERT_EQ(v, 0) << "a norm counter was not set back";
    if (q8) {
      DeviceAct qa;
      RS_ASSERT_OK(quantize_act(d_y.as<float>(), p.Hv * p.dv, p.B, p.Hv * p.dv, qws.get(),
                                qws.size(), &qa));
      std::vector<int8_t> q1(ny), q2(ny);
      std::vector<float> s1(ny / 16), s2(ny / 16);
      RS_ASSERT_OK(synchronize());
      RS_ASSERT_OK(copy_to_host(q1.data(), d_yq.get(), ny));
      RS_ASSERT_OK(copy_to_host(q2.data(), qa.q, ny));
      RS_ASSERT_OK(copy_to_host(s1.data(), d_yds.get(), s1.size() * 4));
      RS_ASSERT_OK(copy_to_host(s2.data(), qa.ds, s2.size() * 4));
      EXPECT_EQ(q1, q2) << "step " << step;
      EXPECT_EQ(s1, s2) << "step " << step;
    }
    const auto y = testing::download<float>(d_y, p.B * p.Hv * p.dv);
    // Device expf / fma differ from the host's by a few ulp.
    EXPECT_LE(testing_dn::max_rel(y.data(), want.data(), static_cast<int64_t>(y.size())), 5e-5)
        << "step " << step;
    for (int64_t s = 0; s < p.B; ++s) {
      const auto st = testing::download<float>(states[s], p.state[s].size());
      EXPECT_LE(testing_dn::max_rel(st.data(), ref.state[s].data(), p.conv_floats()), 1e-7) << s;
      EXPECT_LE(testing_dn::max_rel(st.data() + p.conv_floats(),
                                    ref.state[s].data() + p.conv_floats(), p.ssm_floats()),
                5e-5)
          << s;
    }
    for (auto& x : p.u) x = -0.5f * x + 0.1f;
    for (auto& x : ref.u) x = -0.5f * x + 0.1f;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaDnDecode,
                         ::testing::Values(Shape{1, 16, 32, 128, 128, 4},  // 35B-A3B
                                           Shape{4, 16, 48, 128, 128, 4},  // 27B, 4 sequences
                                           Shape{2, 16, 64, 128, 128, 4},  // 122B-A10B
                                           Shape{3, 2, 6, 48, 80, 4}, Shape{2, 1, 3, 64, 32, 3},
                                           Shape{1, 3, 3, 100, 96, 4},
                                           // Several blocks per value head (col_split):
                                           Shape{1, 16, 32, 128, 128, 4, 4},  // 35B-A3B
                                           Shape{4, 16, 48, 128, 128, 4, 4},  // 27B
                                           Shape{3, 2, 6, 48, 64, 4, 2},
                                           Shape{2, 1, 3, 64, 96, 3, 3},
                                           Shape{1, 3, 3, 100, 96, 4, 2}),
                         [](const auto& info) {
                           const Shape& s = info.param;
                           return "B" + std::to_string(s.B) + "_Hk" + std::to_string(s.Hk) +
                                  "_Hv" + std::to_string(s.Hv) + "_dk" + std::to_string(s.dk) +
                                  "_dv" + std::to_string(s.dv) + "_S" + std::to_string(s.S);
                         });

TEST(CudaDnDecodeArgs, RefusesShapesOutsideTheTile) {
  dn::DecodeArgs a;
  a.Hk = 2; a.Hv = 3; a.dk = 128; a.dv = 128; a.K = 4;
  absl::Status st = dn_decode(a, 1, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  a.Hv = 4;
  a.dv = 1024;
  st = dn_decode(a, 1, nullptr);
  EXPECT_NE(std::string(st.message()).find("dv 1024"), std::string::npos) << st;
  a.dv = 128;  // a valid shape, but two value heads per key head and no counters
  st = dn_decode(a, 1, nullptr);
  EXPECT_NE(std::string(st.message()).find("need the counters"), std::string::npos) << st;
  a.Hv = 2;
  a.col_split = 3;  // does not divide dv
  st = dn_decode(a, 1, nullptr);
  EXPECT_NE(std::string(st.message()).find("col_split 3"), std::string::npos) << st;
  a.col_split = 4;  // no norm buffers
  st = dn_decode(a, 1, nullptr);
  EXPECT_NE(std::string(st.message()).find("norm_part"), std::string::npos) << st;
}

}  // namespace
}  // namespace rs::cuda
