// The Qwen3.5 model on generated tiny models: batching and chunking change nothing, prefill
// equals token-by-token decode, the fast CPU path equals the reference, q8_0 KV stays close to
// f16, MoE with all experts forced equals an independent dense mixture, bad files are refused.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "worker/model.h"
#include "worker/model_internal.h"
#include "worker/buffer_pool.h"
#include "worker/synthetic.h"

namespace rs {
namespace {

// Generated once per spec for the whole test binary.
std::shared_ptr<const gguf::File> Tiny(const std::string& spec) {
  static std::map<std::string, std::shared_ptr<const gguf::File>> cache;
  auto& f = cache[spec];
  if (!f) {
    auto r = MakeSyntheticModel(spec, 7);
    EXPECT_TRUE(r.ok()) << r.status();
    f = std::shared_ptr<const gguf::File>(std::move(*r));
  }
  return f;
}

std::unique_ptr<Model> Load(std::shared_ptr<const gguf::File> f, Backend b,
                            std::optional<GgmlType> kv = std::nullopt, int64_t k_used = 0) {
  ModelOptions o;
  o.backend = b;
  o.n_threads = 2;
  o.kv_type = kv;
  o.n_expert_used = k_used;
  auto m = Model::Load(std::move(f), o);
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(*m);
}

std::vector<int32_t> Prompt(int n, uint32_t seed, int vocab) {
  std::mt19937 g(seed);
  std::vector<int32_t> ids(n);
  for (auto& x : ids) x = static_cast<int32_t>(g() % vocab);
  return ids;
}

double Nmse(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return num / den;
}

// Logits of every position for `ids`, fed in chunks of the given sizes (0 = all at once).
std::vector<float> RunChunked(Model& m, const std::vector<int32_t>& ids,
                              const std::vector<int>& chunks) {
  auto seq = m.NewSequence();
  std::vector<float> all, logits;
  size_t pos = 0;
  size_t ci = 0;
  while (pos < ids.size()) {
    size_t n = ids.size() - pos;
    if (ci < chunks.size() && chunks[ci] > 0) n = std::min<size_t>(n, chunks[ci]);
    ++ci;
    StepItem it{seq.get(), ids.data() + pos, static_cast<int64_t>(n), true};
    EXPECT_TRUE(m.Forward({&it, 1}, &logits).ok());
    all.insert(all.end(), logits.begin(), logits.end());
    pos += n;
  }
  return all;
}

class ModelSpecs : public ::testing::TestWithParam<const char*> {};

TEST_P(ModelSpecs, LogitsAreFiniteAndNotFlat) {
  auto m = Load(Tiny(GetParam()), Backend::kCpu);
  const int V = static_cast<int>(m->config().n_vocab);
  auto all = RunChunked(*m, Prompt(20, 1, V), {});
  ASSERT_EQ(all.size(), 20u * V);
  double mn = 1e30, mx = -1e30;
  for (float x : all) {
    ASSERT_TRUE(std::isfinite(x));
    mn = std::min(mn, static_cast<double>(x));
    mx = std::max(mx, static_cast<double>(x));
  }
  EXPECT_GT(mx - mn, 1.0) << "logits are flat";
}

TEST_P(ModelSpecs, ChunkingChangesNothing) {
  for (Backend b : {Backend::kReference, Backend::kCpu}) {
    auto m = Load(Tiny(GetParam()), b);
    const int V = static_cast<int>(m->config().n_vocab);
    // Crosses the 64-token chunk boundary (shorter for the slow reference loops).
    auto ids = Prompt(b == Backend::kReference ? 80 : 150, 2, V);
    auto one = RunChunked(*m, ids, {});
    auto split = RunChunked(*m, ids, {1, 63, 2, 7, 5});
    auto decode = RunChunked(*m, ids, std::vector<int>(ids.size(), 1));
    EXPECT_LT(Nmse(split, one), 1e-10) << BackendName(b);
    EXPECT_LT(Nmse(decode, one), 1e-10) << BackendName(b);
  }
}

TEST_P(ModelSpecs, FastCpuMatchesReference) {
  // F32 weights: the fast path differs from the reference only by float rounding.
  auto f = Tiny(GetParam());
  auto ref = Load(f, Backend::kReference);
  auto cpu = Load(f, Backend::kCpu);
  auto ids = Prompt(70, 3, static_cast<int>(ref->config().n_vocab));
  EXPECT_LT(Nmse(RunChunked(*cpu, ids, {}), RunChunked(*ref, ids, {})), 1e-10);
}

TEST_P(ModelSpecs, BatchEqualsAlone) {
  auto m = Load(Tiny(GetParam()), Backend::kCpu);
  const int V = static_cast<int>(m->config().n_vocab);
  std::vector<std::vector<int32_t>> prompts = {Prompt(5, 10, V), Prompt(17, 11, V), Prompt(1, 12, V),
                                               Prompt(66, 13, V)};
  // Alone.
  std::vector<std::vector<float>> alone;
  for (auto& p : prompts) alone.push_back(RunChunked(*m, p, {}));
  // Together: first step feeds each prompt's first half, second step the rest, all in one batch.
  std::vector<std::unique_ptr<SeqState>> seqs;
  for (size_t i = 0; i < prompts.size(); ++i) seqs.push_back(m->NewSequence());
  std::vector<std::vector<float>> together(prompts.size());
  for (int phase = 0; phase < 2; ++phase) {
    std::vector<StepItem> items;
    std::vector<size_t> which;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const size_t half = (prompts[i].size() + 1) / 2;
      const size_t b = phase == 0 ? 0 : half, e = phase == 0 ? half : prompts[i].size();
      if (e > b) {
        items.push_back({seqs[i].get(), prompts[i].data() + b, static_cast<int64_t>(e - b), true});
        which.push_back(i);
      }
    }
    std::vector<float> logits;
    ASSERT_TRUE(m->Forward(items, &logits).ok());
    size_t off = 0;
    for (size_t j = 0; j < items.size(); ++j) {
      const size_t n = items[j].n_tok * V;
      together[which[j]].insert(together[which[j]].end(), logits.begin() + off, logits.begin() + off + n);
      off += n;
    }
  }
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_LT(Nmse(together[i], alone[i]), 1e-10) << i;
}

// Forward splits a CPU step of more than 2048 tokens into sub-steps (bounded workspace): a
// 2300-token item with every row's logits equals the same tokens fed in 700-token calls, and a
// batch whose second item is cut by the sub-step boundary gives each item its last row, equal
// to the item alone.
TEST_P(ModelSpecs, LongStepRunsInSubSteps) {
  auto m = Load(Tiny(GetParam()), Backend::kCpu);
  const int V = static_cast<int>(m->config().n_vocab);
  const auto ids = Prompt(2300, 5, V);
  const auto one = RunChunked(*m, ids, {});
  ASSERT_EQ(one.size(), ids.size() * V);
  EXPECT_LT(Nmse(one, RunChunked(*m, ids, {700, 700, 700, 700})), 1e-10);
  const auto a = Prompt(1500, 6, V), b = Prompt(1000, 7, V);
  auto sa = m->NewSequence(), sb = m->NewSequence();
  StepItem items[2] = {{sa.get(), a.data(), 1500, false}, {sb.get(), b.data(), 1000, false}};
  std::vector<float> logits;
  ASSERT_TRUE(m->Forward(items, &logits).ok());
  ASSERT_EQ(logits.size(), 2u * V);
  EXPECT_EQ(sa->n_past, 1500);
  EXPECT_EQ(sb->n_past, 1000);
  const auto alone_a = RunChunked(*m, a, {}), alone_b = RunChunked(*m, b, {});
  const std::vector<float> last_a(alone_a.end() - V, alone_a.end()), last_b(alone_b.end() - V, alone_b.end());
  EXPECT_LT(Nmse(std::vector<float>(logits.begin(), logits.begin() + V), last_a), 1e-10);
  EXPECT_LT(Nmse(std::vector<float>(logits.begin() + V, logits.end()), last_b), 1e-10);
}

TEST_P(ModelSpecs, Q8KvCloseToF16) {
  auto f = Tiny(GetParam());
  auto f16 = Load(f, Backend::kCpu, GgmlType::F16);
  auto q8 = Load(f, Backend::kCpu, GgmlType::Q8_0);
  auto ids = Prompt(100, 4, static_cast<int>(f16->config().n_vocab));
  const double e = Nmse(RunChunked(*q8, ids, {}), RunChunked(*f16, ids, {}));
  // q8_0 rounds each K/V element to 1/254 of its block's max: logits NMSE ~1e-4 on these
  // random models. The bound: 1e-3.
  EXPECT_LT(e, 1e-3) << "q8_0 KV vs f16 KV NMSE " << e;
  EXPECT_GT(e, 0.0) << "q8_0 KV should differ from f16 at all";
}

INSTANTIATE_TEST_SUITE_P(Tiny, ModelSpecs, ::testing::Values("dense-tiny:F32", "moe-tiny:F32"),
                         [](const auto& info) { return std::string(info.param).substr(0, 3) == "moe" ? std::string("Moe") : std::string("Dense"); });

// An independent dense mixture: every expert evaluated, weighted by the full router softmax,
// straight from the dequantised tensors.
class DenseMixture : public ExpertExecutor {
 public:
  DenseMixture(const gguf::File& f, const ModelConfig& c) : f_(f), c_(c) {}
  void Run(int64_t layer, const float* x, int64_t n_tok, const int32_t*, const float*,
           float* out) override {
    const int64_t H = c_.n_embd, E = c_.n_expert, I = c_.n_ff_exp;
    const std::string p = "blk." + std::to_string(layer) + ".";
    auto mat = [&](const std::string& name) {
      const gguf::TensorInfo* t = f_.find_tensor(p + name);
      std::vector<float> m(t->n_elements());
      dequantize_row_ref(t->type, f_.tensor_data(*t), m.data(), t->n_elements());
      return m;
    };
    auto router = mat("ffn_gate_inp.weight"), gate = mat("ffn_gate_exps.weight"),
         up = mat("ffn_up_exps.weight"), down = mat("ffn_down_exps.weight");
    for (int64_t t = 0; t < n_tok; ++t) {
      const float* xt = x + t * H;
      std::vector<double> pr(E);
      double mx = -1e30, sum = 0;
      for (int64_t e = 0; e < E; ++e) {
        double s = 0;
        for (int64_t h = 0; h < H; ++h) s += router[e * H + h] * xt[h];
        pr[e] = s;
        mx = std::max(mx, s);
      }
      for (auto& v : pr) sum += (v = std::exp(v - mx));
      for (int64_t h = 0; h < H; ++h) out[t * H + h] = 0;
      for (int64_t e = 0; e < E; ++e) {
        std::vector<double> act(I);
        for (int64_t i = 0; i < I; ++i) {
          double g = 0, u = 0;
          for (int64_t h = 0; h < H; ++h) {
            g += gate[(e * I + i) * H + h] * xt[h];
            u += up[(e * I + i) * H + h] * xt[h];
          }
          act[i] = g / (1 + std::exp(-g)) * u;
        }
        for (int64_t h = 0; h < H; ++h) {
          double d = 0;
          for (int64_t i = 0; i < I; ++i) d += down[(e * H + h) * I + i] * act[i];
          out[t * H + h] += static_cast<float>(pr[e] / sum * d);
        }
      }
    }
  }

 private:
  const gguf::File& f_;
  const ModelConfig& c_;
};

TEST(Moe, AllExpertsForcedEqualsDenseMixture) {
  auto f = Tiny("moe-tiny:F32");
  const int64_t E = Load(f, Backend::kCpu)->config().n_expert;
  auto routed = Load(f, Backend::kCpu, std::nullopt, E);
  auto dense = Load(f, Backend::kCpu, std::nullopt, E);
  DenseMixture mix(*f, dense->config());
  dense->set_expert_executor(&mix);
  auto ids = Prompt(9, 5, static_cast<int>(routed->config().n_vocab));
  EXPECT_LT(Nmse(RunChunked(*routed, ids, {}), RunChunked(*dense, ids, {})), 1e-9);
  // And top-k routing is not the same as all experts (the test can fail).
  auto topk = Load(f, Backend::kCpu);
  EXPECT_GT(Nmse(RunChunked(*topk, ids, {}), RunChunked(*dense, ids, {})), 1e-6);
}

TEST(ModelErrors, WrongShapeNamesTensorAndShapes) {
  auto plan = PlanFromSyntheticSpec("dense-tiny:F32");
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto f = Tiny("dense-tiny:F32");
  // Rebuild the same file with one tensor's shape changed.
  std::vector<gguf::TensorInfo> tensors = f->tensors();
  for (auto& t : tensors)
    if (t.name == "blk.0.ssm_out.weight") {
      std::swap(t.ne[0], t.ne[1]);
    }
  auto bad = gguf::File::FromParts(f->metadata(), tensors, f->tensor_data(f->tensors()[0]) - f->tensors()[0].offset,
                                   f->data_size(), nullptr);
  ASSERT_TRUE(bad.ok()) << bad.status();
  ModelOptions o;
  auto m = Model::Load(std::shared_ptr<const gguf::File>(std::move(*bad)), o);
  ASSERT_FALSE(m.ok());
  const std::string msg(m.status().message());
  EXPECT_NE(msg.find("blk.0.ssm_out.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected shape"), std::string::npos) << msg;
}

TEST(ModelErrors, CudaProfileOnCpuSaysWhyAndRunsNothing) {
  auto m = Load(Tiny("dense-tiny:F32"), Backend::kCpu);
  bool ran = false;
  auto p = m->ProfileCuda([&] {
    ran = true;
    return absl::OkStatus();
  });
  EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition) << p.status();
  EXPECT_NE(p.status().message().find("not on a GPU"), std::string::npos) << p.status();
  EXPECT_FALSE(ran);
}

TEST(ModelErrors, UnsupportedArchitecture) {
  auto f = Tiny("dense-tiny:F32");
  auto kv = f->metadata();
  for (auto& e : kv)
    if (e.key == "general.architecture") e.value = gguf::Value::Str("llama");
  auto bad = gguf::File::FromParts(kv, f->tensors(), f->tensor_data(f->tensors()[0]) - f->tensors()[0].offset,
                                   f->data_size(), nullptr);
  ASSERT_TRUE(bad.ok()) << bad.status();
  auto m = Model::Load(std::shared_ptr<const gguf::File>(std::move(*bad)), ModelOptions{});
  ASSERT_FALSE(m.ok());
  EXPECT_NE(std::string(m.status().message()).find("unsupported architecture 'llama'"), std::string::npos)
      << m.status();
}

// ForwardGreedy returns, per logits row of Forward, the argmax over the non-padding ids.
TEST_P(ModelSpecs, ForwardGreedyIsArgmaxOfMaskedLogits) {
  auto m = Load(Tiny(GetParam()), Backend::kCpu);
  const int64_t V = m->config().n_vocab;
  const std::vector<int32_t> p = Prompt(9, 3, static_cast<int>(V));
  auto s1 = m->NewSequence(), s2 = m->NewSequence();
  std::vector<float> logits;
  std::vector<int32_t> ids;
  StepItem a{s1.get(), p.data(), 9, true}, b{s2.get(), p.data(), 9, true};
  ASSERT_TRUE(m->Forward({&a, 1}, &logits).ok());
  ASSERT_TRUE(m->ForwardGreedy({&b, 1}, &ids).ok());
  ASSERT_EQ(ids.size(), 9u);
  m->MaskUnused(logits.data(), 9);
  for (int64_t r = 0; r < 9; ++r) {
    const float* x = logits.data() + r * V;
    EXPECT_EQ(ids[r], std::max_element(x, x + V) - x) << r;
    EXPECT_TRUE(std::find(m->unused_token_ids().begin(), m->unused_token_ids().end(), ids[r]) ==
                m->unused_token_ids().end());
  }
  EXPECT_EQ(s2->n_past, 9);
}

// ForwardSample: per item the token sample_cpu draws from Forward's masked last row; items
// without params get -1; all_logits items and bad params are refused.
TEST_P(ModelSpecs, ForwardSampleIsSampleCpuOfMaskedLogits) {
  auto m = Load(Tiny(GetParam()), Backend::kCpu);
  const int64_t V = m->config().n_vocab;
  const std::vector<int32_t> p = Prompt(9, 3, static_cast<int>(V));
  SamplerParams sp;
  sp.temperature = 0.8f;
  sp.top_k = 20;
  sp.top_p = 0.9f;
  sp.presence_penalty = 0.5f;
  sp.seed = 42;
  TokenCounts counts;
  counts.AddPrompt(p);
  auto a1 = m->NewSequence(), a2 = m->NewSequence(), a3 = m->NewSequence();
  auto b1 = m->NewSequence(), b2 = m->NewSequence(), b3 = m->NewSequence();
  StepItem a[3] = {{a1.get(), p.data(), 9, false}, {a2.get(), p.data(), 5, false},
                   {a3.get(), p.data(), 7, false}};
  StepItem b[3] = {{b1.get(), p.data(), 9, false}, {b2.get(), p.data(), 5, false},
                   {b3.get(), p.data(), 7, false}};
  std::vector<float> logits;
  ASSERT_TRUE(m->Forward(a, &logits).ok());
  const SampleRequest reqs[3] = {{&sp, &counts, 3}, {nullptr, nullptr, 0}, {&sp, nullptr, 8}};
  std::vector<SampleResult> out;
  ASSERT_TRUE(m->ForwardSample(b, reqs, &out).ok());
  ASSERT_EQ(out.size(), 3u);
  SamplerScratch sc;
  const TokenCounts none;
  m->MaskUnused(logits.data(), 3);
  EXPECT_EQ(out[0].token, sample_cpu(logits.data(), V, sp, counts, 3, &sc).token);
  EXPECT_EQ(out[1].token, -1);
  EXPECT_EQ(out[2].token, sample_cpu(logits.data() + 2 * V, V, sp, none, 8, &sc).token);
  EXPECT_EQ(b3->n_past, 7);

  StepItem all{b1.get(), p.data(), 2, true};
  EXPECT_FALSE(m->ForwardSample({&all, 1}, {reqs, 1}, &out).ok());
  SamplerParams bad = sp;
  bad.top_p = 0.0f;
  const SampleRequest bad_req{&bad, nullptr, 0};
  const absl::Status st = m->ForwardSample({&b[0], 1}, {&bad_req, 1}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(std::string(st.message()).find("top_p"), std::string::npos) << st;
}

}  // namespace
}  // namespace rs

namespace rs {
namespace {

// A device shard's compact expert copy: the listed experts' rows, in list order.
TEST(ModelShard, GatherExpertRowsTakesTheListedExperts) {
  const int64_t E = 6, rows = 3, cols = 64;
  const size_t rb = row_bytes(GgmlType::Q8_0, cols);
  std::vector<uint8_t> data(E * rows * rb);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + 3);
  const WeightView w{GgmlType::Q8_0, data.data(), cols, E * rows, rb};
  const std::vector<int32_t> experts = {4, 0, 5};
  const std::vector<uint8_t> got = GatherExpertRows(w, rows, experts);
  ASSERT_EQ(got.size(), experts.size() * rows * rb);
  for (size_t i = 0; i < experts.size(); ++i)
    EXPECT_EQ(0, std::memcmp(got.data() + i * rows * rb, data.data() + experts[i] * rows * rb,
                             rows * rb))
        << "expert " << experts[i];
  EXPECT_TRUE(GatherExpertRows(w, rows, {}).empty());
}

// The CUDA model's state-slot pool: the smallest free buffer that fits; nothing too small.
TEST(ModelShard, BufferPoolGivesTheSmallestThatFits) {
  struct Buf {
    size_t n;
    int id;
    size_t size() const { return n; }
  };
  BufferPool<Buf> pool;
  EXPECT_FALSE(pool.Take(1).has_value());
  pool.Give({100, 1});
  pool.Give({300, 2});
  pool.Give({200, 3});
  EXPECT_EQ(pool.free_count(), 3u);
  EXPECT_FALSE(pool.Take(301).has_value());
  auto a = pool.Take(150);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->id, 3);
  auto b = pool.Take(100);
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->id, 1);
  pool.Give(*a);
  EXPECT_EQ(pool.Take(0)->id, 3);
  EXPECT_EQ(pool.Take(0)->id, 2);
  EXPECT_EQ(pool.free_count(), 0u);
}

TEST(ModelVocab, PaddingIdsAreMaskedForSampling) {
  auto f = MakeSyntheticModel("moe-tiny:F32", 7);
  ASSERT_TRUE(f.ok()) << f.status();
  std::shared_ptr<const gguf::File> file(std::move(*f));
  ModelOptions o;
  auto m = Model::Load(file, o);
  ASSERT_TRUE(m.ok()) << m.status();
  const auto& unused = (*m)->unused_token_ids();
  ASSERT_FALSE(unused.empty()) << "the tiny vocabulary is padded with [PADn] tokens";
  const gguf::Value* types = file->find("tokenizer.ggml.token_type");
  ASSERT_NE(types, nullptr);
  for (int32_t id : unused) EXPECT_EQ(types->array[id].i, 5) << id;
  const int64_t V = (*m)->config().n_vocab;
  std::vector<float> logits(2 * V, 0.0f);
  for (int32_t id : unused) logits[V + id] = 100.0f;  // the padding would win an argmax
  (*m)->MaskUnused(logits.data(), 2);
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t i = 0; i < V; ++i) {
      const bool pad = std::find(unused.begin(), unused.end(), i) != unused.end();
      if (pad) EXPECT_TRUE(std::isinf(logits[r * V + i]) && logits[r * V + i] < 0);
      else EXPECT_EQ(logits[r * V + i], 0.0f);
    }
}

}  // namespace
}  // namespace rs
