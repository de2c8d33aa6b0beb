// The chunked delta rule kernel (kernels/cuda/dn_chunk_kernel.cuh) built for the host and run
// through the SIMT emulator against the token-by-token recurrence (delta_rule_recurrent_ref):
// outputs and final state, with a nonzero incoming state, at chunk-boundary lengths and awkward
// head sizes. Runs everywhere (no GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/dn_chunk_kernel.cuh"
#include "tests/cuda/kernel_check.h"

namespace rs::cuda::dn {
namespace {

struct Case {
  int64_t T, Hk, Hv, dk, dv;
};

class DnChunkEmu : public ::testing::TestWithParam<Case> {};

TEST_P(DnChunkEmu, MatchesRecurrence) {
  const Case c = GetParam();
  const auto p = testing_kernels::make_delta(c.T, c.Hk, c.Hv, c.dk, c.dv);
  for (simt::Order order : {simt::Order::kForward, simt::Order::kReverse}) {
    simt::set_order(order);
    std::vector<float> S = p.S0, o(p.o_want.size(), NAN);
    ChunkArgs a;
    a.q = p.q.data();
    a.k = p.k.data();
    a.v = p.v.data();
    a.g = p.g.data();
    a.beta = p.beta.data();
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
    EXPECT_LT(testing_kernels::max_rel(o, p.o_want), 1e-4) << "T=" << c.T;
    EXPECT_LT(testing_kernels::max_rel(S, p.S_want), 1e-4) << "T=" << c.T;
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
