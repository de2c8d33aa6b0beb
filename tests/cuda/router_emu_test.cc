// The fused router (kernels/cuda/router_kernel.cuh) built for the host and run through the SIMT
// emulator: its logits against the decode matvec's per-unit dot products (the same order), its
// ids and weights against router_topk_ref on those logits, the shared gate's logit, and the
// counter back at 0 after every launch; several blocks, several tokens, ties. Runs everywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/router_kernel.cuh"
#include "kernels/ops.h"

namespace rs::cuda::detail {
namespace {

struct Case {
  int64_t E, H, k, n_tok;
  bool shared;
};

class RouterEmu : public ::testing::TestWithParam<Case> {};

TEST_P(RouterEmu, LogitsAndChoiceMatchTheSeparatePath) {
  const Case c = GetParam();
  simt::set_order(c.E % 2 ? simt::Order::kReverse : simt::Order::kShuffled, 9);
  std::mt19937 rng(static_cast<uint32_t>(c.E * 13 + c.H));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> w(c.E * c.H), sh(c.H), x(c.n_tok * c.H);
  for (auto& v : w) v = 0.1f * nd(rng);
  for (auto& v : sh) v = 0.1f * nd(rng);
  for (auto& v : x) v = nd(rng);
  // Two experts with identical rows: tied logits, the lower index first.
  for (int64_t h = 0; h < c.H; ++h) w[5 * c.H + h] = w[2 * c.H + h] = 0.5f;
  std::vector<float> logits(c.n_tok * c.E, NAN), sh_logit(c.n_tok, NAN), wts(c.n_tok * c.k, NAN);
  std::vector<int32_t> ids(c.n_tok * c.k, -1);
  int counter = 0;
  RouterArgs a;
  a.w = reinterpret_cast<const uint8_t*>(w.data());
  a.row_stride = c.H * 4;
  a.sh = c.shared ? reinterpret_cast<const uint8_t*>(sh.data()) : nullptr;
  a.E = c.E;
  a.H = c.H;
  a.k = c.k;
  a.n_tok = c.n_tok;
  a.x = x.data();
  a.logits = logits.data();
  a.sh_logit = sh_logit.data();
  a.ids = ids.data();
  a.weights = wts.data();
  a.counter = &counter;
  const int64_t rows = c.E + (c.shared ? 1 : 0);
  for (int launch = 0; launch < 2; ++launch) {
    ASSERT_EQ(simt::launch({static_cast<unsigned>((rows + kRouterWarps - 1) / kRouterWarps)},
                           {32 * kRouterWarps}, 0, router_fused_kernel, a),
              "");
    EXPECT_EQ(counter, 0) << "launch " << launch;
  }
  const auto dot = [&](const float* row, int64_t t) {
    // The matvec's order: lane l sums units l, l + 32, ... (8 floats each), then the xor tree.
    const ActDev act{x.data() + t * c.H, c.H, nullptr, nullptr, c.H};
    float lane_acc[32] = {};
    for (int l = 0; l < 32; ++l)
      for (int64_t u = l; u < c.H / 8; u += 32)
        Fmt<GgmlType::F32>::template dot<1>(reinterpret_cast<const uint8_t*>(row), u, act,
                                            &lane_acc[l]);
    for (int o = 16; o > 0; o >>= 1) {
      float next[32];
      for (int l = 0; l < 32; ++l) next[l] = lane_acc[l] + lane_acc[l ^ o];
      for (int l = 0; l < 32; ++l) lane_acc[l] = next[l];
    }
    return lane_acc[0];
  };
  for (int64_t t = 0; t < c.n_tok; ++t) {
    for (int64_t e = 0; e < c.E; ++e)
      ASSERT_EQ(logits[t * c.E + e], dot(w.data() + e * c.H, t)) << "token " << t << " row " << e;
    if (c.shared) ASSERT_EQ(sh_logit[t], dot(sh.data(), t)) << "token " << t;
    std::vector<int32_t> want_ids(c.k);
    std::vector<float> want_w(c.k);
    router_topk_ref(logits.data() + t * c.E, c.E, c.k, want_ids.data(), want_w.data());
    for (int64_t i = 0; i < c.k; ++i) {
      EXPECT_EQ(ids[t * c.k + i], want_ids[i]) << "token " << t << " slot " << i;
      EXPECT_NEAR(wts[t * c.k + i], want_w[i], 1e-6) << "token " << t << " slot " << i;
    }
  }
  simt::set_order(simt::Order::kForward);
}

INSTANTIATE_TEST_SUITE_P(Shapes, RouterEmu,
                         ::testing::Values(Case{37, 96, 4, 3, true}, Case{64, 256, 8, 1, true},
                                           Case{256, 512, 8, 2, false},
                                           Case{9, 64, 9, 8, true}),  // k = E, 8 tokens
                         [](const auto& info) {
                           const Case& c = info.param;
                           return "E" + std::to_string(c.E) + "_H" + std::to_string(c.H) + "_k" +
                                  std::to_string(c.k) + "_t" + std::to_string(c.n_tok) +
                                  (c.shared ? "_sh" : "");
                         });

}  // namespace
}  // namespace rs::cuda::detail
