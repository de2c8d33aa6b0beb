// Pipeline + expert parallelism in one process: 2 and 3 ranks (threads, Gloo over loopback)
// run the same batches as one whole model; logits must agree within 1e-5 NMSE, for tiny dense
// and MoE models, even and uneven layer splits, experts spread over the ranks.
#include <cmath>
#include <map>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "parallel/communicator.h"
#include "worker/model.h"
#include "worker/synthetic.h"

namespace rs {
namespace {

std::shared_ptr<const gguf::File> Tiny(const std::string& spec) {
  static std::map<std::string, std::shared_ptr<const gguf::File>> cache;
  auto& f = cache[spec];
  if (!f) {
    auto r = MakeSyntheticModel(spec, 11);
    EXPECT_TRUE(r.ok()) << r.status();
    f = std::shared_ptr<const gguf::File>(std::move(*r));
  }
  return f;
}

std::unique_ptr<Model> Load(std::shared_ptr<const gguf::File> f) {
  ModelOptions o;
  o.n_threads = 1;
  auto m = Model::Load(std::move(f), o);
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(*m);
}

double Nmse(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return num / den;
}

struct Case {
  const char* spec;
  std::vector<int> layer_owner;  // per layer
};

// Two steps (a prefill batch of two sequences, then one decode token each) on one model and on
// `world` ranks; returns the max NMSE over both steps.
// expert_rank: >= 0 puts every expert there; -3 alternates experts over ranks; -1 scatters.
void Check(const Case& c, int world, int expert_rank = -1) {
  auto f = Tiny(c.spec);
  auto whole = Load(f);
  const ModelConfig& cfg = whole->config();
  ASSERT_EQ(static_cast<int64_t>(c.layer_owner.size()), cfg.n_layer);
  Model::Placement pl;
  pl.layer_owner = c.layer_owner;
  if (cfg.moe)
    for (int64_t l = 0; l < cfg.n_layer; ++l) {
      std::vector<int> owners(cfg.n_expert);
      for (int64_t e = 0; e < cfg.n_expert; ++e)
        owners[e] = expert_rank >= 0    ? expert_rank                          // all on one rank
                    : expert_rank == -3 ? static_cast<int>(e % world)          // alternate
                                        : static_cast<int>((e * 7 + l) % world);  // scattered
      pl.expert_owner.push_back(owners);
    }
  std::mt19937 g(3);
  std::vector<int32_t> p1(23), p2(70);
  for (auto& x : p1) x = g() % cfg.n_vocab;
  for (auto& x : p2) x = g() % cfg.n_vocab;
  std::vector<int32_t> d1 = {5}, d2 = {9};

  auto run_whole = [&](std::vector<std::vector<float>>* out) {
    auto s1 = whole->NewSequence(), s2 = whole->NewSequence();
    std::vector<float> lg;
    StepItem a[2] = {{s1.get(), p1.data(), 23, true}, {s2.get(), p2.data(), 70, true}};
    ASSERT_TRUE(whole->Forward(a, &lg).ok());
    out->push_back(lg);
    StepItem b[2] = {{s1.get(), d1.data(), 1, false}, {s2.get(), d2.data(), 1, false}};
    ASSERT_TRUE(whole->Forward(b, &lg).ok());
    out->push_back(lg);
  };
  std::vector<std::vector<float>> want;
  run_whole(&want);

  auto store = par::MakeMemoryKvStore();
  std::vector<std::vector<std::vector<float>>> got(world);
  std::vector<std::string> errors(world);
  std::vector<std::thread> threads;
  const std::string prefix = std::string(c.spec) + "/" + std::to_string(world) + "/";
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      auto comm = par::CreateGlooCommunicator(r, world, store.get(), prefix, "127.0.0.1",
                                              std::chrono::milliseconds(20000));
      if (!comm.ok()) { errors[r] = std::string(comm.status().message()); return; }
      auto m = Load(f);
      auto s1 = m->NewSequence(), s2 = m->NewSequence();
      std::vector<float> lg;
      StepItem a[2] = {{s1.get(), p1.data(), 23, true}, {s2.get(), p2.data(), 70, true}};
      if (auto st = m->ForwardDistributed(a, comm->get(), pl, &lg); !st.ok()) { errors[r] = std::string(st.message()); return; }
      got[r].push_back(lg);
      StepItem b[2] = {{s1.get(), d1.data(), 1, false}, {s2.get(), d2.data(), 1, false}};
      if (auto st = m->ForwardDistributed(b, comm->get(), pl, &lg); !st.ok()) { errors[r] = std::string(st.message()); return; }
      got[r].push_back(lg);
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) ASSERT_EQ(errors[r], "") << "rank " << r;
  const int last = c.layer_owner.back();
  for (int r = 0; r < world; ++r) {
    ASSERT_EQ(got[r].size(), 2u);
    if (r != last) {
      EXPECT_TRUE(got[r][0].empty() && got[r][1].empty()) << "only the last stage has logits";
      continue;
    }
    for (int s = 0; s < 2; ++s) {
      ASSERT_EQ(got[r][s].size(), want[s].size());
      EXPECT_LT(Nmse(got[r][s], want[s]), 1e-5) << c.spec << " step " << s;
    }
  }
}

TEST(Distributed, MoeThreeRanksEvenSplit) { Check({"moe-tiny:Q8_0", {0, 0, 0, 1, 1, 1, 2, 2}}, 3); }
TEST(Distributed, MoeTwoRanksUnevenSplit) { Check({"moe-tiny:Q8_0", {0, 1, 1, 1, 1, 1, 1, 1}}, 2); }
TEST(Distributed, MoeNonContiguousOwnersStillAgree) { Check({"moe-tiny:F32", {1, 0, 0, 2, 2, 1, 0, 2}}, 3); }
TEST(Distributed, DenseTwoRanks) { Check({"dense-tiny:Q8_0", {0, 0, 0, 1, 1, 1, 1, 1}}, 2); }
// Quantised weights: q8 activations make results discontinuous in tiny rounding differences,
// so these pass only because each (token, slot) is summed in the same order wherever it runs.
TEST(Distributed, QuantisedExpertsSplitWithinLayers) {
  Check({"moe-tiny:Q8_0", {1, 0, 0, 2, 2, 1, 0, 2}}, 3);
  Check({"moe-tiny:Q8_0", {0, 0, 0, 0, 1, 1, 1, 1}}, 2, /*expert_rank=*/-3);
}
TEST(Distributed, AllExpertsOnANonOwner) { Check({"moe-tiny:Q8_0", {0, 0, 0, 0, 0, 0, 0, 0}}, 2, 1); }
TEST(Distributed, DenseThreeRanks) { Check({"dense-tiny:F32", {0, 0, 1, 1, 1, 2, 2, 2}}, 3); }

}  // namespace
}  // namespace rs
