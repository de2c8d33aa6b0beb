// The GPU sampler's kernel (kernels/cuda/sample_kernel.cuh) built for the host and run through
// the SIMT emulator against sample_ref: same token for every case, under two thread orders.
// Runs everywhere; tests/cuda/cuda_sampler_test.cc runs the same cases on a GPU.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cuda/sample_kernel.cuh"
#include "kernels/cuda/sample_pack.h"
#include "tests/cuda/sample_cases.h"

namespace rs::cuda::sampling {
namespace {

using testing_sample::Case;

// Runs the kernel over all cases as one batch (one block per row); returns the ids.
std::vector<int32_t> run_emulated(std::vector<Case>& cases) {
  const int64_t V = cases[0].vocab;
  std::vector<float> x;
  std::vector<SampleRequest> reqs;
  for (Case& c : cases) {
    x.insert(x.end(), c.logits.begin(), c.logits.end());
    reqs.push_back({&c.params, &c.counts, c.step});
  }
  Packed pk;
  pack_rows(reqs, &pk);
  std::vector<int32_t> ids(cases.size(), -1);
  const std::string err = simt::launch({static_cast<unsigned>(cases.size())}, {kThreads}, 0,
                                       sample_rows_kernel, x.data(), V, V, pk.rows.data(),
                                       pk.pens.data(), pk.biases.data(), ids.data());
  EXPECT_EQ(err, "");
  return ids;
}

struct Shape {
  int64_t vocab;
  int n;
  bool ties;
};

class SampleEmu : public ::testing::TestWithParam<Shape> {};

TEST_P(SampleEmu, SameTokenAsReference) {
  const Shape sh = GetParam();
  for (simt::Order o : {simt::Order::kForward, simt::Order::kShuffled}) {
    simt::set_order(o, 11);
    auto cases = testing_sample::make_cases(sh.vocab, sh.n, 1234 + static_cast<uint32_t>(sh.vocab), sh.ties);
    const std::vector<int32_t> got = run_emulated(cases);
    for (size_t i = 0; i < cases.size(); ++i) {
      const Case& c = cases[i];
      EXPECT_EQ(got[i], testing_sample::reference_token(c))
          << c.name << " T=" << c.params.temperature << " k=" << c.params.top_k
          << " p=" << c.params.top_p << " min_p=" << c.params.min_p
          << (o == simt::Order::kForward ? " forward" : " shuffled");
    }
  }
  simt::set_order(simt::Order::kForward);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SampleEmu,
                         ::testing::Values(Shape{1, 4, false}, Shape{7, 20, false},
                                           Shape{513, 40, false}, Shape{513, 40, true},
                                           Shape{3001, 40, false}, Shape{3001, 20, true},
                                           Shape{20011, 8, false}),
                         [](const auto& info) {
                           return "V" + std::to_string(info.param.vocab) +
                                  (info.param.ties ? "_ties" : "");
                         });

// Many draws of one distribution: the emulated kernel and the reference agree step by step.
TEST(SampleEmuDraws, TwoHundredStepsAgree) {
  auto base = testing_sample::make_cases(997, 1, 77, false);
  base[0].params.temperature = 0.9f;
  base[0].params.top_k = 50;
  base[0].params.top_p = 0.8f;
  std::vector<Case> cases;
  for (int s = 0; s < 200; ++s) {
    Case c = base[0];
    c.step = static_cast<uint64_t>(s);
    cases.push_back(std::move(c));
  }
  const auto got = run_emulated(cases);
  int distinct = 0;
  std::vector<int> seen(997, 0);
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(got[i], testing_sample::reference_token(cases[i])) << "step " << i;
    distinct += seen[got[i]]++ == 0;
  }
  EXPECT_GT(distinct, 3);  // really a distribution, not one token
}

}  // namespace
}  // namespace rs::cuda::sampling
