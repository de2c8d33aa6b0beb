// attn_prep (cuda_glue.h) on a device against the CPU reference ops in the model's order (split
// q and gate, rms_norm_ref per head, rope_neox_ref), Qwen3.5's head shape and awkward ones; and
// its refusals. Skips without a GPU.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_glue.h"
#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/kernel_check.h"

namespace rs::cuda {
namespace {

TEST(CudaAttnPrep, MatchesReferenceOps) {
  RS_SKIP_WITHOUT_CUDA();
  struct Case {
    int64_t n_tok, nh, nkv, hd, n_rot;
  };
  for (const Case c : {Case{1, 16, 2, 256, 64}, Case{5, 3, 1, 96, 32}, Case{2, 4, 4, 160, 160}}) {
    SCOPED_TRACE("hd " + std::to_string(c.hd));
    std::mt19937 rng(static_cast<uint32_t>(c.hd));
    const int64_t N = c.n_tok, nh = c.nh, nkv = c.nkv, hd = c.hd;
    const std::vector<float> qg = testing::randn(rng, N * nh * 2 * hd);
    const std::vector<float> k0 = testing::randn(rng, N * nkv * hd);
    std::vector<float> qn = testing::randn(rng, hd), kn = testing::randn(rng, hd);
    std::vector<int64_t> pos(N);
    for (int64_t t = 0; t < N; ++t) pos[t] = 7 + 1001 * t;
    DeviceBuffer dqg = testing::upload(qg), dk = testing::upload(k0), dqn = testing::upload(qn),
                 dkn = testing::upload(kn), dpos = testing::upload(pos),
                 dq = testing::poisoned<float>(N * nh * hd),
                 dg = testing::poisoned<float>(N * nh * hd);
    RS_ASSERT_OK(attn_prep(dqg.as<float>(), N, nh, nkv, hd, c.n_rot, dqn.as<float>(),
                           dkn.as<float>(), dpos.as<int64_t>(), 1e7f, 1e-6f, dq.as<float>(),
                           dg.as<float>(), dk.as<float>()));
    const auto want =
        testing_kernels::attn_prep_reference(qg, k0, qn, kn, pos, N, nh, nkv, hd, c.n_rot);
    EXPECT_EQ(testing::download<float>(dg, N * nh * hd), want.gate);
    // sincosf / pow on the device vs the host: a few ulps of the angle.
    EXPECT_LE(testing_kernels::max_abs(testing::download<float>(dq, N * nh * hd), want.q), 1e-4);
    EXPECT_LE(testing_kernels::max_abs(testing::download<float>(dk, N * nkv * hd), want.k), 1e-4);
  }
}

TEST(CudaAttnPrepArgs, RefusesOddRotaryDims) {
  const absl::Status st = attn_prep(nullptr, 1, 2, 1, 64, 63, nullptr, nullptr, nullptr, 1e7f,
                                    1e-6f, nullptr, nullptr, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(std::string(st.message()).find("n_rot 63"), std::string::npos) << st;
}

}  // namespace
}  // namespace rs::cuda
