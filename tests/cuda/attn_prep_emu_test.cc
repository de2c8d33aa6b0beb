// Attention's fused q/k preparation (kernels/cuda/attn_prep_kernel.cuh) built for the host and
// run through the SIMT emulator against the CPU reference ops in the model's order: split q and
// gate, rms_norm_ref per head, rope_neox_ref. Awkward head counts and sizes, partial rotary
// dims, several tokens at different positions. Runs everywhere (no GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/attn_prep_kernel.cuh"
#include "kernels/ops.h"
#include "tests/cuda/kernel_check.h"

namespace rs::cuda::glue {
namespace {

struct Case {
  int64_t n_tok, nh, nkv, hd, n_rot;
};

class AttnPrepEmu : public ::testing::TestWithParam<Case> {};

TEST_P(AttnPrepEmu, MatchesReferenceOps) {
  const Case c = GetParam();
  simt::set_order(c.hd % 64 ? simt::Order::kReverse : simt::Order::kShuffled, 8);
  std::mt19937 rng(static_cast<uint32_t>(c.hd * 31 + c.nh));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto rnd = [&](int64_t n, float mean) {
    std::vector<float> v(n);
    for (auto& x : v) x = mean + nd(rng);
    return v;
  };
  const int64_t nh = c.nh, nkv = c.nkv, hd = c.hd, N = c.n_tok;
  const std::vector<float> qg = rnd(N * nh * 2 * hd, 0.0f), k0 = rnd(N * nkv * hd, 0.0f);
  const std::vector<float> qn = rnd(hd, 1.0f), kn = rnd(hd, 1.0f);
  std::vector<int64_t> pos(N);
  for (int64_t t = 0; t < N; ++t) pos[t] = 3 + 517 * t;  // far apart: large angles too
  std::vector<float> q(N * nh * hd, NAN), gate(N * nh * hd, NAN), k = k0;
  AttnPrepArgs a;
  a.qg = qg.data();
  a.q = q.data();
  a.gate = gate.data();
  a.k = k.data();
  a.q_norm = qn.data();
  a.k_norm = kn.data();
  a.pos = pos.data();
  a.n_tok = N;
  a.nh = nh;
  a.nkv = nkv;
  a.hd = hd;
  a.n_rot = c.n_rot;
  a.eps = 1e-6f;
  a.theta = 1e7f;
  ASSERT_EQ(simt::launch({static_cast<unsigned>(N * (nh + nkv))}, {kAttnPrepThreads}, 0,
                         attn_prep_kernel, a),
            "");
  const auto want =
      testing_kernels::attn_prep_reference(qg, k0, qn, kn, pos, N, nh, nkv, hd, c.n_rot);
  EXPECT_EQ(gate, want.gate);
  EXPECT_LE(testing_kernels::max_abs(q, want.q), 2e-5);
  EXPECT_LE(testing_kernels::max_abs(k, want.k), 2e-5);
  simt::set_order(simt::Order::kForward);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttnPrepEmu,
                         ::testing::Values(Case{1, 3, 1, 64, 16}, Case{3, 4, 2, 256, 64},
                                           Case{2, 5, 1, 96, 96}, Case{2, 2, 2, 160, 32}),
                         [](const auto& info) {
                           const Case& c = info.param;
                           return "t" + std::to_string(c.n_tok) + "_h" + std::to_string(c.nh) +
                                  "_kv" + std::to_string(c.nkv) + "_d" + std::to_string(c.hd) +
                                  "_r" + std::to_string(c.n_rot);
                         });

}  // namespace
}  // namespace rs::cuda::glue
