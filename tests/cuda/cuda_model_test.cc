// The whole model on the GPU (--backend cuda) against the fast CPU path on generated tiny models
// and the golden models: the same greedy ids and logits within NMSE 1e-4, for prefill (tensor
// cores) and decode (matvec), prompts longer than one device sub-step, several sequences in one
// step, and copied sequence states. Skips, saying so, without a GPU. The golden models come
// from $RS_GOLDEN_DIR (bench/gpu_pack.sh carries them to the GPU machine) or the shared folder.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_ops.h"
#include "worker/model.h"
#include "worker/synthetic.h"

namespace rs {
namespace {

std::shared_ptr<const gguf::File> Open(const std::string& spec, std::string* skip) {
  if (spec.rfind("golden/", 0) == 0) {
    const char* env = std::getenv("RS_GOLDEN_DIR");
    const std::string dir = env ? env : std::string(RS_SHARED_DIR) + "/golden";
    const std::string path = dir + "/" + spec.substr(7) + "/model.gguf";
    if (!std::filesystem::exists(path)) {
      *skip = "golden model " + path + " not found (set RS_GOLDEN_DIR)";
      return nullptr;
    }
    auto f = gguf::File::Open(path);
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? std::shared_ptr<const gguf::File>(std::move(*f)) : nullptr;
  }
  auto f = MakeSyntheticModel(spec, 11);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::shared_ptr<const gguf::File>(std::move(*f)) : nullptr;
}

std::unique_ptr<Model> Load(std::shared_ptr<const gguf::File> f, Backend b) {
  ModelOptions o;
  o.backend = b;
  o.cuda_ctx = 256;  // small, so that the long-prompt test also grows the KV cache
  auto m = Model::Load(std::move(f), o);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

double Nmse(const float* a, const float* ref, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(a[i]) - ref[i];
    num += d * d;
    den += double(ref[i]) * ref[i];
  }
  return den > 0 ? num / den : num;
}

int32_t Argmax(const float* x, int64_t n) {
  int64_t b = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[b]) b = i;
  return static_cast<int32_t>(b);
}

// Top-1 minus top-2 logit.
float Margin(const float* x, int64_t n) {
  float a = -INFINITY, b = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] > a) {
      b = a;
      a = x[i];
    } else if (x[i] > b) {
      b = x[i];
    }
  }
  return a - b;
}

std::vector<int32_t> Prompt(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& t : ids) t = static_cast<int32_t>(rng() % std::min<int64_t>(vocab, 5000));
  return ids;
}

class CudaModelTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    std::string why;
    if (!cuda::cuda_available(&why)) GTEST_SKIP() << "no CUDA device: " << why;
    std::string skip;
    file_ = Open(GetParam(), &skip);
    if (!skip.empty()) GTEST_SKIP() << skip;
    ASSERT_NE(file_, nullptr);
    cpu_ = Load(file_, Backend::kCpu);
    gpu_ = Load(file_, Backend::kCuda);
    ASSERT_NE(cpu_, nullptr);
    ASSERT_NE(gpu_, nullptr);
    V_ = cpu_->config().n_vocab;
  }
  std::shared_ptr<const gguf::File> file_;
  std::unique_ptr<Model> cpu_, gpu_;
  int64_t V_ = 0;
};

// Prefill (tensor-core path) then greedy decode (matvec path). Both backends are fed the CPU's
// greedy ids (teacher forcing), so one near-tie cannot derail the rest: every row's logits must
// be within NMSE 1e-4, and the GPU must pick the CPU's id wherever the CPU's margin is clear.
TEST_P(CudaModelTest, GreedyDecodeMatchesCpu) {
  const std::vector<int32_t> prompt = Prompt(37, V_, 1);
  auto sc = cpu_->NewSequence(64);
  auto sg = gpu_->NewSequence(64);
  std::vector<float> lc, lg;
  StepItem ic{sc.get(), prompt.data(), static_cast<int64_t>(prompt.size()), false};
  StepItem ig{sg.get(), prompt.data(), static_cast<int64_t>(prompt.size()), false};
  ASSERT_TRUE(cpu_->Forward({&ic, 1}, &lc).ok());
  auto st = gpu_->Forward({&ig, 1}, &lg);
  ASSERT_TRUE(st.ok()) << st;
  int flips = 0;
  double worst = 0;
  for (int step = 0; step < 16; ++step) {
    ASSERT_EQ(lc.size(), static_cast<size_t>(V_));
    ASSERT_EQ(lg.size(), static_cast<size_t>(V_));
    cpu_->MaskUnused(lc.data(), 1);
    gpu_->MaskUnused(lg.data(), 1);
    for (int64_t i = 0; i < V_; ++i) ASSERT_TRUE(std::isfinite(lg[i]) || std::isinf(lc[i])) << i;
    // Unused (masked) ids are -inf in both; compare the rest.
    std::vector<float> a, b;
    for (int64_t i = 0; i < V_; ++i)
      if (std::isfinite(lc[i])) {
        a.push_back(lg[i]);
        b.push_back(lc[i]);
      }
    const double e = Nmse(a.data(), b.data(), static_cast<int64_t>(a.size()));
    worst = std::max(worst, e);
    EXPECT_LE(e, 1e-4) << "step " << step;
    const int32_t want = Argmax(lc.data(), V_);
    const int32_t got = Argmax(lg.data(), V_);
    if (got != want) {
      ++flips;
      EXPECT_LT(Margin(lc.data(), V_), 1e-3f * std::max(1.0f, std::fabs(lc[want])))
          << "step " << step << ": GPU picked " << got << ", CPU " << want;
    }
    const int32_t next = want;
    StepItem dc{sc.get(), &next, 1, false};
    StepItem dg{sg.get(), &next, 1, false};
    ASSERT_TRUE(cpu_->Forward({&dc, 1}, &lc).ok());
    st = gpu_->Forward({&dg, 1}, &lg);
    ASSERT_TRUE(st.ok()) << st;
  }
  EXPECT_EQ(sg->n_past, sc->n_past);
  std::printf("  %s: worst logits NMSE %.3g over 17 rows, %d near-tie flips\n", GetParam(), worst,
              flips);
}

// Every position's logits (score) for a prompt longer than one device sub-step (512 tokens):
// exercises the sub-step split, the KV cache growth past cuda_ctx, and long attention.
TEST_P(CudaModelTest, LongPromptAllLogits) {
  const int64_t T = 700;
  const std::vector<int32_t> prompt = Prompt(T, V_, 2);
  auto sc = cpu_->NewSequence(T);
  auto sg = gpu_->NewSequence(0);
  std::vector<float> lc, lg;
  StepItem ic{sc.get(), prompt.data(), T, true};
  StepItem ig{sg.get(), prompt.data(), T, true};
  ASSERT_TRUE(cpu_->Forward({&ic, 1}, &lc).ok());
  auto st = gpu_->Forward({&ig, 1}, &lg);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(lg.size(), lc.size());
  double worst = 0;
  for (int64_t t = 0; t < T; ++t) {
    const double e = Nmse(lg.data() + t * V_, lc.data() + t * V_, V_);
    worst = std::max(worst, e);
    ASSERT_LE(e, 1e-4) << "position " << t;
  }
  std::printf("  %s: %lld positions, worst logits NMSE %.3g\n", GetParam(),
              static_cast<long long>(T), worst);
}

// Three sequences in one step (a prefill chunk and two decodes) equal each run alone on the GPU;
// a copied state continues exactly like the original; reset starts over.
TEST_P(CudaModelTest, BatchCopyAndReset) {
  const std::vector<int32_t> p0 = Prompt(20, V_, 3), p1 = Prompt(9, V_, 4), p2 = Prompt(5, V_, 5);
  auto a0 = gpu_->NewSequence(), a1 = gpu_->NewSequence(), a2 = gpu_->NewSequence();
  std::vector<float> l;
  for (auto [s, p] : {std::pair{a1.get(), &p1}, std::pair{a2.get(), &p2}}) {
    StepItem it{s, p->data(), static_cast<int64_t>(p->size()), false};
    ASSERT_TRUE(gpu_->Forward({&it, 1}, &l).ok());
  }
  // Copies taken now continue alone below.
  SeqState c1 = *a1, c2 = *a2;
  auto c0 = gpu_->NewSequence();
  const int32_t t1 = 7, t2 = 11;
  StepItem batch[3] = {{a0.get(), p0.data(), 20, false}, {a1.get(), &t1, 1, false},
                       {a2.get(), &t2, 1, false}};
  std::vector<float> lb;
  auto st = gpu_->Forward(batch, &lb);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(lb.size(), static_cast<size_t>(3 * V_));
  std::vector<float> l0, l1, l2;
  StepItem i0{c0.get(), p0.data(), 20, false}, i1{&c1, &t1, 1, false}, i2{&c2, &t2, 1, false};
  ASSERT_TRUE(gpu_->Forward({&i0, 1}, &l0).ok());
  ASSERT_TRUE(gpu_->Forward({&i1, 1}, &l1).ok());
  ASSERT_TRUE(gpu_->Forward({&i2, 1}, &l2).ok());
  EXPECT_LE(Nmse(lb.data(), l0.data(), V_), 1e-4);
  EXPECT_LE(Nmse(lb.data() + V_, l1.data(), V_), 1e-4);
  EXPECT_LE(Nmse(lb.data() + 2 * V_, l2.data(), V_), 1e-4);
  // Reset: the same prompt again gives the first result again.
  c0->reset();
  std::vector<float> again;
  ASSERT_TRUE(gpu_->Forward({&i0, 1}, &again).ok());
  EXPECT_LE(Nmse(again.data(), l0.data(), V_), 1e-10);
}

INSTANTIATE_TEST_SUITE_P(Models, CudaModelTest,
                         ::testing::Values("dense-tiny:F32", "moe-tiny:F32", "dense-tiny:Q4_K_M",
                                           "moe-tiny:Q4_K_M", "moe-tiny:Q8_0", "dense-tiny:Q6_K",
                                           "golden/dense-mini-f32", "golden/moe-mini-f32",
                                           "golden/dense-tiny-q4km"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                           std::string s = i.param;
                           for (char& c : s)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

// Without a GPU, --backend cuda fails at load with a message that says why.
TEST(CudaModelLoad, ClearErrorWithoutGpu) {
  std::string why;
  if (cuda::cuda_available(&why)) GTEST_SKIP() << "a GPU is present";
  auto f = MakeSyntheticModel("dense-tiny:F32", 1);
  ASSERT_TRUE(f.ok());
  ModelOptions o;
  o.backend = Backend::kCuda;
  auto m = Model::Load(std::shared_ptr<const gguf::File>(std::move(*f)), o);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(std::string(m.status().message()).find("no usable GPU"), std::string::npos)
      << m.status();
}

}  // namespace
}  // namespace rs
