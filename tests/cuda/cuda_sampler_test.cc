// The GPU sampler (kernels/cuda/cuda_sampler.h) on a device against sample_ref: the same cases
// as the host emulation test (tests/cuda/sample_emu_test.cc), plus the 248K vocabulary of the
// real models. Skips, saying why, where no CUDA device is usable.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cuda/cuda_sampler.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/sample_cases.h"

namespace rs::cuda {
namespace {

using testing_sample::Case;

std::vector<int32_t> run_device(std::vector<Case>& cases, DeviceSampler* sampler) {
  const int64_t V = cases[0].vocab;
  std::vector<float> x;
  std::vector<SampleRequest> reqs;
  for (Case& c : cases) {
    x.insert(x.end(), c.logits.begin(), c.logits.end());
    reqs.push_back({&c.params, &c.counts, c.step});
  }
  DeviceBuffer d = testing::upload(x);
  std::vector<int32_t> ids(cases.size(), -1);
  const absl::Status st = sampler->Sample(d.as<float>(), V, V, reqs, ids.data(), nullptr);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return ids;
}

struct Shape {
  int64_t vocab;
  int n;
  bool ties;
};

class CudaSampler : public ::testing::TestWithParam<Shape> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaSampler, SameTokenAsReference) {
  const Shape sh = GetParam();
  DeviceSampler sampler;
  auto cases = testing_sample::make_cases(sh.vocab, sh.n, 1234 + static_cast<uint32_t>(sh.vocab), sh.ties);
  const std::vector<int32_t> got = run_device(cases, &sampler);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    EXPECT_EQ(got[i], testing_sample::reference_token(c))
        << c.name << " T=" << c.params.temperature << " k=" << c.params.top_k
        << " p=" << c.params.top_p << " min_p=" << c.params.min_p;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaSampler,
                         ::testing::Values(Shape{1, 4, false}, Shape{7, 20, false},
                                           Shape{513, 40, false}, Shape{513, 40, true},
                                           Shape{3001, 40, false}, Shape{3001, 20, true},
                                           Shape{20011, 8, false}, Shape{248320, 40, false},
                                           Shape{248320, 12, true}),
                         [](const auto& info) {
                           return "V" + std::to_string(info.param.vocab) +
                                  (info.param.ties ? "_ties" : "");
                         });

TEST(CudaSamplerDraws, ManyStepsAgreeAndBuffersGrow) {
  RS_SKIP_WITHOUT_CUDA();
  DeviceSampler sampler;
  auto base = testing_sample::make_cases(997, 1, 77, false);
  base[0].params.temperature = 0.9f;
  base[0].params.top_k = 50;
  base[0].params.top_p = 0.8f;
  for (int n : {1, 3, 200}) {  // the sampler's buffers grow between calls
    std::vector<Case> cases;
    for (int s = 0; s < n; ++s) {
      Case c = base[0];
      c.step = static_cast<uint64_t>(s);
      cases.push_back(std::move(c));
    }
    const auto got = run_device(cases, &sampler);
    for (size_t i = 0; i < cases.size(); ++i)
      EXPECT_EQ(got[i], testing_sample::reference_token(cases[i])) << "step " << i;
  }
}

}  // namespace
}  // namespace rs::cuda
