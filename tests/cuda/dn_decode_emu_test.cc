// The fused DeltaNet decode kernel (kernels/cuda/dn_decode_kernel.cuh) built for the host and run
// through the SIMT emulator against the CPU reference ops: output, conv state and recurrent
// state, for several batch sizes and head shapes. Runs everywhere (no GPU).
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cuda/dn_decode_kernel.cuh"
#include "tests/cuda/dn_decode_test_util.h"
#include "tests/cuda/moe_decode_test_util.h"

namespace rs::cuda::dn {
namespace {

struct Shape {
  int64_t B, Hk, Hv, dk, dv, K;
  int64_t S = 1;  // column groups per value head (DecodeArgs::col_split)
};

class DnDecodeEmu : public ::testing::TestWithParam<Shape> {};

TEST_P(DnDecodeEmu, MatchesReferenceOps) {
  const Shape sh = GetParam();
  for (simt::Order order : {simt::Order::kForward, simt::Order::kReverse}) {
    simt::set_order(order);
    testing_dn::Problem p = testing_dn::make_problem(sh.B, sh.Hk, sh.Hv, sh.dk, sh.dv, sh.K, 99);
    testing_dn::Problem ref = p;
    // Two steps: the second reads the state the first wrote.
    for (int step = 0; step < 2; ++step) {
      const std::vector<float> want = testing_dn::reference(ref);
      std::vector<uint8_t*> bases;
      for (auto& s : p.state) bases.push_back(reinterpret_cast<uint8_t*>(s.data()));
      std::vector<float> y(p.B * p.Hv * p.dv, NAN);
      DecodeArgs a;
      a.Hk = p.Hk; a.Hv = p.Hv; a.dk = p.dk; a.dv = p.dv; a.K = p.K;
      a.u = p.u.data(); a.z = p.z.data(); a.b = p.b.data(); a.al = p.al.data();
      a.conv_w = p.conv_w.data(); a.ssm_a = p.ssm_a.data(); a.dt_bias = p.dt_bias.data();
      a.norm_w = p.norm_w.data();
      a.q_scale = 1.0f / std::sqrt(static_cast<float>(p.dk));
      a.eps = p.eps;
      a.seq_base = bases.data();
      a.conv_off = 0;
      a.ssm_off = static_cast<size_t>(p.conv_floats()) * 4;
      a.y = y.data();
      std::vector<int> counters(p.B * p.Hk, 0), norm_cnt(p.B * p.Hv, 0);
      std::vector<float> norm_part(p.B * p.Hv * sh.S, NAN);
      a.counters = counters.data();
      a.col_split = sh.S;
      if (sh.S > 1) {
        a.norm_part = norm_part.data();
        a.norm_cnt = norm_cnt.data();
      }
      // The q8 output (dv % 32 == 0 shapes), checked against quantize_act's rule on y.
      const bool q8 = p.dv % 32 == 0;
      std::vector<int8_t> yq(y.size(), 99);
      std::vector<float> yds(y.size() / 16, NAN);
      if (q8) {
        a.yq = yq.data();
        a.yds = yds.data();
      }
      const std::string err = simt::launch(
          {static_cast<unsigned>(p.Hk), static_cast<unsigned>(p.B),
           static_cast<unsigned>(p.Hv / p.Hk * sh.S)},
          {kDecodeThreads},
          decode_smem_bytes(p.Hk, p.Hv, p.dk, p.dv), dn_decode_kernel, a);
      ASSERT_EQ(err, "");
      for (int v : counters) ASSERT_EQ(v, 0) << "a counter was not set back";
      for (int v : norm_cnt) ASSERT_EQ(v, 0) << "a norm counter was not set back";
      EXPECT_LE(testing_dn::max_rel(y.data(), want.data(), static_cast<int64_t>(y.size())), 2e-5)
          << "step " << step;
      if (q8) {
        std::vector<int8_t> qr(32);
        std::vector<float> dr(2);
        for (size_t blk = 0; blk < y.size() / 32; ++blk) {
          testing_kernels::quantize_q8(y.data() + blk * 32, 32, qr.data(), dr.data());
          for (int i = 0; i < 32; ++i) ASSERT_EQ(yq[blk * 32 + i], qr[i]) << "block " << blk;
          ASSERT_EQ(yds[2 * blk], dr[0]) << "block " << blk;
          ASSERT_NEAR(yds[2 * blk + 1], dr[1], 1e-5 * 32 * 127 * dr[0]) << "block " << blk;
        }
      }
      for (int64_t s = 0; s < p.B; ++s) {
        EXPECT_LE(testing_dn::max_rel(p.state[s].data(), ref.state[s].data(), p.conv_floats()), 1e-7)
            << "conv state, seq " << s;
        EXPECT_LE(testing_dn::max_rel(p.state[s].data() + p.conv_floats(),
                                      ref.state[s].data() + p.conv_floats(), p.ssm_floats()),
                  2e-5)
            << "recurrent state, seq " << s;
      }
      for (auto& x : p.u) x = -0.5f * x + 0.1f;  // another token
      for (auto& x : ref.u) x = -0.5f * x + 0.1f;
    }
  }
  simt::set_order(simt::Order::kForward);
}

INSTANTIATE_TEST_SUITE_P(Shapes, DnDecodeEmu,
                         ::testing::Values(Shape{1, 2, 4, 128, 128, 4},   // R = 2, model dims
                                           Shape{3, 2, 6, 48, 80, 4},     // awkward: P = 6
                                           Shape{2, 1, 3, 64, 32, 3},     // R = 3, K = 3
                                           Shape{1, 3, 3, 100, 96, 4},    // dk not a multiple
                                           // Several blocks per value head (col_split):
                                           Shape{1, 2, 4, 128, 128, 4, 4},  // 35b's split
                                           Shape{3, 2, 6, 48, 64, 4, 2},
                                           Shape{2, 1, 3, 64, 96, 3, 3},  // R = 3: 9 readers
                                           Shape{1, 3, 3, 100, 96, 4, 2},  // 48 columns a block
                                           Shape{2, 1, 1, 40, 64, 2, 2}),  // R = 1, K = 2
                         [](const auto& info) {
                           const Shape& s = info.param;
                           return "B" + std::to_string(s.B) + "_Hk" + std::to_string(s.Hk) +
                                  "_Hv" + std::to_string(s.Hv) + "_dk" + std::to_string(s.dk) +
                                  "_dv" + std::to_string(s.dv) + "_S" + std::to_string(s.S);
                         });

}  // namespace
}  // namespace rs::cuda::dn
