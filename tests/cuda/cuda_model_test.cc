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

// True when every matrix of the model is F32: the exact test models. There the GPU must match
// the CPU to NMSE 1e-4 and pick the same greedy ids. Quantised models read q8-rounded
// activations on both backends (rounded differently: blocks of 32 on the GPU's matvec, f16 on
// its tensor cores), and these tiny random models amplify that rounding (the CPU fast path
// alone is ~5e-3 from the reference on dense-tiny:Q6_K), so there the criterion is the
// fidelity checker's: the GPU no further from the exact reference backend than twice the CPU
// fast path is (mean NMSE over the rows).
bool AllF32(const gguf::File& f) {
  for (const auto& t : f.tensors())
    if (t.ne.size() >= 2 && t.ne[1] > 1 && t.type != GgmlType::F32) return false;
  return true;
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
    exact_ = AllF32(*file_);
    cpu_ = Load(file_, Backend::kCpu);
    gpu_ = Load(file_, Backend::kCuda);
    ASSERT_NE(cpu_, nullptr);
    ASSERT_NE(gpu_, nullptr);
    if (!exact_) {
      ref_ = Load(file_, Backend::kReference);
      ASSERT_NE(ref_, nullptr);
    }
    V_ = cpu_->config().n_vocab;
  }
  // NMSE of a against b over the entries that are finite in b (masked ids are -inf).
  double Err(const float* a, const float* b) const {
    double num = 0, den = 0;
    for (int64_t i = 0; i < V_; ++i)
      if (std::isfinite(b[i])) {
        const double d = double(a[i]) - b[i];
        num += d * d;
        den += double(b[i]) * b[i];
      }
    return den > 0 ? num / den : num;
  }
  std::shared_ptr<const gguf::File> file_;
  std::unique_ptr<Model> cpu_, gpu_, ref_;
  bool exact_ = true;
  int64_t V_ = 0;
};

// Prefill then greedy decode (matvec path), fed the same ids on every backend (the CPU's greedy
// choice: teacher forcing, so one near-tie cannot derail the rest).
TEST_P(CudaModelTest, GreedyDecodeMatchesCpu) {
  const std::vector<int32_t> prompt = Prompt(37, V_, 1);
  std::vector<Model*> ms = {cpu_.get(), gpu_.get()};
  if (ref_) ms.push_back(ref_.get());
  std::vector<std::unique_ptr<SeqState>> ss;
  for (Model* m : ms) ss.push_back(m->NewSequence(64));
  std::vector<std::vector<float>> l(ms.size());
  double worst = 0, sum_gpu = 0, sum_cpu = 0;
  int rows = 0, flips = 0;
  const int32_t* toks = prompt.data();
  int64_t n = static_cast<int64_t>(prompt.size());
  int32_t next = 0;
  for (int step = 0; step <= 16; ++step) {
    for (size_t i = 0; i < ms.size(); ++i) {
      StepItem it{ss[i].get(), toks, n, false};
      auto st = ms[i]->Forward({&it, 1}, &l[i]);
      ASSERT_TRUE(st.ok()) << BackendName(ms[i]->backend()) << ": " << st;
      ASSERT_EQ(l[i].size(), static_cast<size_t>(V_));
      ms[i]->MaskUnused(l[i].data(), 1);
    }
    const float* lc = l[0].data();
    const float* lg = l[1].data();
    for (int64_t i = 0; i < V_; ++i)
      ASSERT_TRUE(std::isfinite(lg[i]) || !std::isfinite(lc[i])) << "step " << step << " id " << i;
    const double e = Err(lg, lc);
    worst = std::max(worst, e);
    const int32_t want = Argmax(lc, V_), got = Argmax(lg, V_);
    if (exact_) {
      EXPECT_LE(e, 1e-4) << "step " << step;
      if (got != want) {
        ++flips;
        EXPECT_LT(Margin(lc, V_), 1e-4f * std::max(1.0f, std::fabs(lc[want])))
            << "step " << step << ": GPU picked " << got << ", CPU " << want;
      }
    } else {
      sum_gpu += Err(lg, l[2].data());
      sum_cpu += Err(lc, l[2].data());
    }
    ++rows;
    next = want;
    toks = &next;
    n = 1;
  }
  EXPECT_EQ(ss[1]->n_past, ss[0]->n_past);
  if (exact_) {
    std::printf("  %s: GPU vs CPU worst logits NMSE %.3g over %d rows, %d near-tie flips\n",
                GetParam(), worst, rows, flips);
  } else {
    const double mg = sum_gpu / rows, mc = sum_cpu / rows;
    std::printf("  %s: mean NMSE vs the reference: GPU %.3g, CPU fast %.3g (GPU vs CPU worst %.3g)\n",
                GetParam(), mg, mc, worst);
    EXPECT_LE(mg, 2 * mc + 1e-5) << "the GPU is further from the reference than twice the CPU";
  }
}

// Every position's logits (score) for a prompt longer than one device sub-step (512 tokens):
// the sub-step split, the KV cache growth past cuda_ctx, long attention, tensor-core prefill.
TEST_P(CudaModelTest, LongPromptAllLogits) {
  const int64_t T = 600;
  const std::vector<int32_t> prompt = Prompt(T, V_, 2);
  std::vector<float> lc, lg, lr;
  auto sc = cpu_->NewSequence(T);
  auto sg = gpu_->NewSequence(0);
  StepItem ic{sc.get(), prompt.data(), T, true};
  StepItem ig{sg.get(), prompt.data(), T, true};
  ASSERT_TRUE(cpu_->Forward({&ic, 1}, &lc).ok());
  auto st = gpu_->Forward({&ig, 1}, &lg);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(lg.size(), lc.size());
  if (exact_) {
    double worst = 0;
    for (int64_t t = 0; t < T; ++t) {
      const double e = Err(lg.data() + t * V_, lc.data() + t * V_);
      worst = std::max(worst, e);
      ASSERT_LE(e, 1e-4) << "position " << t;
    }
    std::printf("  %s: %lld positions, GPU vs CPU worst logits NMSE %.3g\n", GetParam(),
                static_cast<long long>(T), worst);
    return;
  }
  auto sr = ref_->NewSequence(T);
  StepItem ir{sr.get(), prompt.data(), T, true};
  ASSERT_TRUE(ref_->Forward({&ir, 1}, &lr).ok());
  double sg_ = 0, sc_ = 0;
  for (int64_t t = 0; t < T; ++t) {
    sg_ += Err(lg.data() + t * V_, lr.data() + t * V_);
    sc_ += Err(lc.data() + t * V_, lr.data() + t * V_);
  }
  std::printf("  %s: %lld positions, mean NMSE vs the reference: GPU %.3g, CPU fast %.3g\n",
              GetParam(), static_cast<long long>(T), sg_ / T, sc_ / T);
  EXPECT_LE(sg_ / T, 2 * sc_ / T + 1e-5);
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
  // Exact models run f32 matvecs either way. In quantised ones a token computed inside a
  // 22-token step goes through the tensor cores (f16), alone through the q8 matvec: they
  // differ by the q8 rounding (see AllF32), far below what a wrong row or offset gives (~1).
  const double tol = exact_ ? 1e-6 : 2e-2;
  EXPECT_LE(Nmse(lb.data(), l0.data(), V_), tol);
  EXPECT_LE(Nmse(lb.data() + V_, l1.data(), V_), tol);
  EXPECT_LE(Nmse(lb.data() + 2 * V_, l2.data(), V_), tol);
  // Reset: the same prompt again gives the first result again (deterministic kernels).
  c0->reset();
  std::vector<float> again;
  ASSERT_TRUE(gpu_->Forward({&i0, 1}, &again).ok());
  EXPECT_LE(Nmse(again.data(), l0.data(), V_), 1e-12);
}

// A decode batch of sequences at different lengths (their KV stores and attention in one launch
// each for the batch, every token on its own cache) equals each sequence decoding alone, with
// and without graphs.
TEST_P(CudaModelTest, DecodeBatchEqualsAlone) {
  const std::vector<int32_t> p0 = Prompt(31, V_, 8), p1 = Prompt(3, V_, 9), p2 = Prompt(12, V_, 10);
  auto a0 = gpu_->NewSequence(), a1 = gpu_->NewSequence(), a2 = gpu_->NewSequence();
  std::vector<float> l;
  for (auto [s, p] : {std::pair{a0.get(), &p0}, std::pair{a1.get(), &p1},
                      std::pair{a2.get(), &p2}}) {
    StepItem it{s, p->data(), static_cast<int64_t>(p->size()), false};
    ASSERT_TRUE(gpu_->Forward({&it, 1}, &l).ok());
  }
  int32_t toks[3] = {4, 9, 13};
  for (int step = 0; step < 4; ++step) {
    gpu_->set_cuda_graphs(step % 2 == 0);
    SeqState c0 = *a0, c1 = *a1, c2 = *a2;
    StepItem batch[3] = {{a0.get(), &toks[0], 1, false}, {a1.get(), &toks[1], 1, false},
                         {a2.get(), &toks[2], 1, false}};
    std::vector<float> lb;
    auto st = gpu_->Forward(batch, &lb);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_EQ(lb.size(), static_cast<size_t>(3 * V_));
    SeqState* alone[3] = {&c0, &c1, &c2};
    for (int i = 0; i < 3; ++i) {
      StepItem it{alone[i], &toks[i], 1, false};
      std::vector<float> la;
      ASSERT_TRUE(gpu_->Forward({&it, 1}, &la).ok());
      EXPECT_LE(Nmse(lb.data() + i * V_, la.data(), V_), exact_ ? 1e-9 : 2e-2)
          << "step " << step << " sequence " << i;
    }
    for (int i = 0; i < 3; ++i) toks[i] = Argmax(lb.data() + i * V_, V_);
  }
  gpu_->set_cuda_graphs(true);
  EXPECT_EQ(a0->n_past, 35);
  EXPECT_EQ(a1->n_past, 7);
}

// Decode steps replayed from CUDA graphs equal the same steps launched kernel by kernel, and
// ForwardGreedy (argmax on the device, unused ids masked) picks the argmax of Forward's logits.
TEST_P(CudaModelTest, GraphsAndGreedy) {
  const std::vector<int32_t> prompt = Prompt(23, V_, 6);
  auto s1 = gpu_->NewSequence(), s2 = gpu_->NewSequence(), s3 = gpu_->NewSequence();
  std::vector<float> l1, l2;
  std::vector<int32_t> g;
  for (SeqState* s : {s1.get(), s2.get(), s3.get()}) {
    StepItem it{s, prompt.data(), 23, false};
    ASSERT_TRUE(gpu_->Forward({&it, 1}, &l1).ok());
  }
  int32_t tok = 5;
  for (int step = 0; step < 6; ++step) {
    StepItem a{s1.get(), &tok, 1, false}, b{s2.get(), &tok, 1, false}, c{s3.get(), &tok, 1, false};
    gpu_->set_cuda_graphs(true);
    auto st = gpu_->Forward({&a, 1}, &l1);
    ASSERT_TRUE(st.ok()) << st;
    gpu_->set_cuda_graphs(false);
    ASSERT_TRUE(gpu_->Forward({&b, 1}, &l2).ok());
    gpu_->set_cuda_graphs(true);
    st = gpu_->ForwardGreedy({&c, 1}, &g);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_EQ(g.size(), 1u);
    EXPECT_LE(Nmse(l1.data(), l2.data(), V_), 1e-9) << "step " << step;
    gpu_->MaskUnused(l1.data(), 1);
    EXPECT_EQ(g[0], Argmax(l1.data(), V_)) << "step " << step;
    tok = g[0];
  }
  EXPECT_EQ(s1->n_past, 29);
  EXPECT_EQ(s3->n_past, 29);
}

// Two sequences decode the same tokens, one with a path switched on and one with it off (each
// carries the state the other leaves), with and without graphs: equal logits within tol. Leaves
// the switch on `back` and graphs on.
void DecodeBothWays(Model* gpu, int64_t V, void (Model::*set)(bool), bool back, double tol) {
  const std::vector<int32_t> prompt = Prompt(19, V, 4);
  auto s1 = gpu->NewSequence(), s2 = gpu->NewSequence();
  std::vector<float> l1, l2;
  for (SeqState* s : {s1.get(), s2.get()}) {
    StepItem it{s, prompt.data(), 19, false};
    ASSERT_TRUE(gpu->Forward({&it, 1}, &l1).ok());
  }
  int32_t tok = 3;
  for (int step = 0; step < 6; ++step) {
    gpu->set_cuda_graphs(step % 3 != 0);
    StepItem a{s1.get(), &tok, 1, false}, b{s2.get(), &tok, 1, false};
    (gpu->*set)(true);
    ASSERT_TRUE(gpu->Forward({&a, 1}, &l1).ok());
    (gpu->*set)(false);
    ASSERT_TRUE(gpu->Forward({&b, 1}, &l2).ok());
    EXPECT_LE(Nmse(l1.data(), l2.data(), V), tol) << "step " << step;
    gpu->MaskUnused(l1.data(), 1);
    tok = Argmax(l1.data(), V);
  }
  (gpu->*set)(back);
  gpu->set_cuda_graphs(true);
}

// The fused DeltaNet decode kernel vs the separate kernels. Exact models: float rounding only.
// Quantised ones: the q8 rounding of ssm_out's input amplifies it (see AllF32), still far below a
// wrong state or head (~1).
TEST_P(CudaModelTest, FusedDeltaNetDecodeMatchesSeparateKernels) {
  DecodeBothWays(gpu_.get(), V_, &Model::set_cuda_fused_deltanet, false, exact_ ? 1e-8 : 2e-2);
}

// Dense models: the fused FFN up kernel (gate/up + SwiGLU + q8 in one launch) against the
// matvec pair and swiglu_q8 (MoE models: the same path both ways).
TEST_P(CudaModelTest, FusedFfnUpMatchesMatvecPair) {
  DecodeBothWays(gpu_.get(), V_, &Model::set_cuda_fused_ffn_up, false, exact_ ? 1e-8 : 2e-2);
}

// Decode steps (1 and 3 sequences) with the fused MoE kernels (routed + shared experts in two
// launches) equal the same steps through the per-token matvecs and the separate shared expert,
// with and without graphs. Dense models: SwiGLU and the norms with their q8 output against the
// separate quantisers.
TEST_P(CudaModelTest, FusedMoeDecodeMatchesPerToken) {
  constexpr int kSeqs = 3;
  std::vector<std::unique_ptr<SeqState>> a, b;
  std::vector<int32_t> toks(kSeqs);
  std::vector<float> la, lb;
  for (int i = 0; i < kSeqs; ++i) {
    const std::vector<int32_t> p = Prompt(7 + i, V_, 40 + i);
    a.push_back(gpu_->NewSequence());
    b.push_back(gpu_->NewSequence());
    StepItem x{a.back().get(), p.data(), static_cast<int64_t>(p.size()), false};
    StepItem y{b.back().get(), p.data(), static_cast<int64_t>(p.size()), false};
    ASSERT_TRUE(gpu_->Forward({&x, 1}, &la).ok());
    ASSERT_TRUE(gpu_->Forward({&y, 1}, &lb).ok());
    toks[i] = p.back();
  }
  for (int step = 0; step < 6; ++step) {
    gpu_->set_cuda_graphs(step % 3 != 0);
    const int n = step % 2 ? kSeqs : 1;
    std::vector<StepItem> ia, ib;
    for (int i = 0; i < n; ++i) {
      ia.push_back({a[i].get(), &toks[i], 1, false});
      ib.push_back({b[i].get(), &toks[i], 1, false});
    }
    gpu_->set_cuda_fused_moe_decode(true);
    ASSERT_TRUE(gpu_->Forward(ia, &la).ok());
    gpu_->set_cuda_fused_moe_decode(false);
    ASSERT_TRUE(gpu_->Forward(ib, &lb).ok());
    EXPECT_LE(Nmse(la.data(), lb.data(), n * V_), exact_ ? 1e-8 : 2e-2) << "step " << step;
    for (int i = 0; i < n; ++i) toks[i] = Argmax(la.data() + i * V_, V_);
  }
  gpu_->set_cuda_fused_moe_decode(true);
  gpu_->set_cuda_graphs(true);
}

// Programmatic dependent launch changes when kernels start, not what they compute: every
// kernel waits for the one before it, so the logits are equal (sm_90+; skipped elsewhere).
TEST_P(CudaModelTest, ProgrammaticLaunchDecodeMatchesPlain) {
  if (!cuda::programmatic_launch_supported())
    GTEST_SKIP() << "programmatic dependent launch needs sm_90 or later";
  DecodeBothWays(gpu_.get(), V_, &Model::set_cuda_programmatic_launch, false, 1e-12);
  EXPECT_FALSE(cuda::programmatic_launch());
}

// Split-K attention's first pass per KV head (gqa) vs per query head (in tiles of 32 positions):
// the same arithmetic up to the order of additions (quantised models: a rounding difference can
// move a q8 step).
TEST_P(CudaModelTest, GqaAttentionDecodeMatchesPerHead) {
  DecodeBothWays(gpu_.get(), V_, &Model::set_cuda_gqa_attention, false, exact_ ? 1e-8 : 2e-2);
}

// A decode batch of 17 sequences with the routed experts grouped by expert equals the same
// batch through the fused decode kernels (f32 activations vs q8: the tolerance of AllF32).
TEST_P(CudaModelTest, GroupedMoeDecodeMatchesPerToken) {
  constexpr int kSeqs = 17;
  std::vector<std::unique_ptr<SeqState>> a, b;
  std::vector<int32_t> toks(kSeqs);
  std::vector<float> la, lb;
  for (int i = 0; i < kSeqs; ++i) {
    const std::vector<int32_t> p = Prompt(5 + i % 4, V_, 20 + i);
    a.push_back(gpu_->NewSequence());
    b.push_back(gpu_->NewSequence());
    StepItem x{a.back().get(), p.data(), static_cast<int64_t>(p.size()), false};
    StepItem y{b.back().get(), p.data(), static_cast<int64_t>(p.size()), false};
    ASSERT_TRUE(gpu_->Forward({&x, 1}, &la).ok());
    ASSERT_TRUE(gpu_->Forward({&y, 1}, &lb).ok());
    toks[i] = p.back();
  }
  for (int step = 0; step < 3; ++step) {
    std::vector<StepItem> ia, ib;
    for (int i = 0; i < kSeqs; ++i) {
      ia.push_back({a[i].get(), &toks[i], 1, false});
      ib.push_back({b[i].get(), &toks[i], 1, false});
    }
    gpu_->set_cuda_grouped_moe_decode(false);
    ASSERT_TRUE(gpu_->Forward(ia, &la).ok());
    gpu_->set_cuda_grouped_moe_decode(true);
    ASSERT_TRUE(gpu_->Forward(ib, &lb).ok());
    EXPECT_LE(Nmse(lb.data(), la.data(), kSeqs * V_), exact_ ? 1e-8 : 2e-2) << "step " << step;
    for (int i = 0; i < kSeqs; ++i) toks[i] = Argmax(la.data() + i * V_, V_);
  }
  gpu_->set_cuda_grouped_moe_decode(false);
}

// ForwardSample on the device (penalties, top-k, top-p, the draw on the GPU) picks the token
// sample_cpu picks from the same step's logits, with and without graphs, several rows a step.
TEST_P(CudaModelTest, SamplingOnTheDevice) {
  const std::vector<int32_t> prompt = Prompt(17, V_, 8);
  SamplerParams sp[3];
  sp[0].temperature = 0.7f;
  sp[0].top_k = 40;
  sp[1].temperature = 1.1f;
  sp[1].top_p = 0.9f;
  sp[1].frequency_penalty = 0.8f;
  sp[1].repetition_penalty = 1.2f;
  sp[2].temperature = 0.0f;  // greedy rows mix with sampled ones
  sp[2].presence_penalty = 1.5f;
  for (int i = 0; i < 3; ++i) sp[i].seed = 100 + i;
  std::unique_ptr<SeqState> a[3], b[3];
  TokenCounts counts[3];
  for (int i = 0; i < 3; ++i) {
    a[i] = gpu_->NewSequence();
    b[i] = gpu_->NewSequence();
    counts[i].AddPrompt(prompt);
  }
  std::vector<float> logits;
  std::vector<SampleResult> out;
  SamplerScratch sc;
  int32_t tok[3] = {prompt[0], prompt[1], prompt[2]};
  for (int step = 0; step < 8; ++step) {
    gpu_->set_cuda_graphs(step % 2 == 0);
    StepItem ia[3], ib[3];
    SampleRequest reqs[3];
    for (int i = 0; i < 3; ++i) {
      const int32_t* t = step == 0 ? prompt.data() : &tok[i];
      const int64_t n = step == 0 ? 17 - i : 1;
      ia[i] = {a[i].get(), t, n, false};
      ib[i] = {b[i].get(), t, n, false};
      reqs[i] = {&sp[i], &counts[i], static_cast<uint64_t>(step)};
    }
    ASSERT_TRUE(gpu_->Forward(ia, &logits).ok());
    auto st = gpu_->ForwardSample(ib, reqs, &out);
    ASSERT_TRUE(st.ok()) << st;
    gpu_->MaskUnused(logits.data(), 3);
    for (int i = 0; i < 3; ++i) {
      const int32_t want = sample_cpu(logits.data() + i * V_, V_, sp[i], counts[i],
                                      static_cast<uint64_t>(step), &sc).token;
      EXPECT_EQ(out[i].token, want) << "step " << step << " row " << i;
      tok[i] = want;
      counts[i].AddOutput(want);
    }
  }
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
