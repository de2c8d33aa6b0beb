// The chunked delta rule kernel (kernels/cuda/dn_chunk_kernel.cuh) built for the host and run
// through the SIMT emulator against the token-by-token recurrence (delta_rule_recurrent_ref):
// outputs and final state, with a nonzero incoming state, at chunk-boundary lengths and awkward
// head sizes. Runs everywhere (no GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/dn_chunk_kernel.cuh"
#include "kernels/ops.h"

namespace rs::cuda::dn {
namespace {

struct Case {
  int64_t T, Hk, Hv, dk, dv;
};

std::vector<float> rnd(int64_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  double mx = 1e-6, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    mx = std::max(mx, std::fabs(static_cast<double>(want[i])));
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(e <= err)) err = e;  // NaN sticks
  }
  return err / mx;
}

class DnChunkEmu : public ::testing::TestWithParam<Case> {};

TEST_P(DnChunkEmu, MatchesRecurrence) {
  const Case c = GetParam();
  const DeltaNetDims d{c.T, c.Hk, c.Hv, c.dk, c.dv};
  auto q = rnd(c.T * c.Hk * c.dk, 1, -1, 1), k = rnd(c.T * c.Hk * c.dk, 2, -1, 1);
  l2_norm_ref(q.data(), c.T * c.Hk, c.dk, 1e-6f);
  l2_norm_ref(k.data(), c.T * c.Hk, c.dk, 1e-6f);
  for (auto& x : q) x /= std::sqrt(static_cast<float>(c.dk));
  const auto v = rnd(c.T * c.Hv * c.dv, 3, -1, 1), g = rnd(c.T * c.Hv, 4, -5, 0),
             beta = rnd(c.T * c.Hv, 5, 0.01f, 0.99f), S0 = rnd(c.Hv * c.dk * c.dv, 6, -0.5f, 0.5f);
  std::vector<float> S_ref = S0, o_ref(c.T * c.Hv * c.dv);
  delta_rule_recurrent_ref(d, q.data(), k.data(), v.data(), g.data(), beta.data(), S_ref.data(),
                           o_ref.data());
  for (simt::Order order : {simt::Order::kForward, simt::Order::kReverse}) {
    simt::set_order(order);
    std::vector<float> S = S0, o(o_ref.size(), NAN);
    ChunkArgs a;
    a.q = q.data();
    a.k = k.data();
    a.v = v.data();
    a.g = g.data();
    a.beta = beta.data();
    a.S = S.data();
    a.out = o.data();
    a.T = c.T;
    a.Hk = c.Hk;
    a.Hv = c.Hv;
    a.dk = c.dk;
    a.dv = c.dv;
    const std::string err = simt::launch(
        {static_cast<unsigned>(c.Hv), static_cast<unsigned>((c.dv + kChunkCols - 1) / kChunkCols)},
        {kChunkThreads}, chunk_smem_bytes(c.dk), dn_chunk_kernel, a);
    ASSERT_EQ(err, "");
    EXPECT_LT(rel_err(o, o_ref), 1e-4) << "T=" << c.T;
    EXPECT_LT(rel_err(S, S_ref), 1e-4) << "T=" << c.T;
  }
  simt::set_order(simt::Order::kForward);
}

INSTANTIATE_TEST_SUITE_P(Shapes, DnChunkEmu,
                         ::testing::Values(Case{1, 2, 4, 128, 128}, Case{63, 2, 4, 128, 128},
                                           Case{64, 1, 2, 128, 128}, Case{65, 2, 4, 128, 128},
                                           Case{130, 1, 3, 48, 80}, Case{70, 2, 2, 64, 32}),
                         [](const auto& info) {
                           const Case& c = info.param;
                           return "T" + std::to_string(c.T) + "_Hv" + std::to_string(c.Hv) +
                                  "_dk" + std::to_string(c.dk) + "_dv" + std::to_string(c.dv);
                         });

}  // namespace
}  // namespace rs::cuda::dn
