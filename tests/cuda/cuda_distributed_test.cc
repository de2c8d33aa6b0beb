// CUDA workers in a distributed group (pipeline + expert parallelism, Gloo over loopback, ranks
// as threads of this process): ranks on the GPU run their layers' mixers on the device and the
// rest on the host CPU. The last stage's logits must match one whole CPU model, for groups of
// GPU + CPU ranks and of two GPU ranks, with the GPU ranks holding only their layers' mixers
// (as group workers do) or the whole model, and none, half or all of their routed experts on
// the device (the rest run on the host CPU). Groups of GPU ranks also run the device path (rows on
// the GPU: the residual stream, dispatch and combine stay on the device), over Gloo staged
// through the device (several ranks share one GPU) and over NCCL (one GPU per rank; skips with
// fewer GPUs); its logits must equal the host path's bit for bit. Skips without a GPU.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/communicator.h"
#include "parallel/moe_dispatch.h"
#ifdef RIGSERVE_HAVE_NCCL
#include <cuda_runtime.h>

#include "parallel/nccl/nccl_comm.h"
#endif
#include "tests/cuda/cuda_test_util.h"
#include "worker/model.h"
#include "worker/synthetic.h"

namespace rs {
namespace {

std::shared_ptr<const gguf::File> Tiny(const std::string& spec) {
  auto r = MakeSyntheticModel(spec, 11);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? std::shared_ptr<const gguf::File>(std::move(*r)) : nullptr;
}

std::unique_ptr<Model> Load(std::shared_ptr<const gguf::File> f, bool cuda, int device = 0) {
  ModelOptions o;
  o.n_threads = 1;
  o.cuda_device = device;
  if (cuda) o.backend = Backend::kCuda;
  auto m = Model::Load(std::move(f), o);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
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
  std::vector<int> layer_owner;
  std::vector<bool> rank_on_gpu;
  bool shard = true;  // GPU ranks keep only their layers' mixers on the device (as workers do)
  int gpu_experts = 0;  // 0: all experts on the host CPU; 1: every other of the rank's on its GPU;
                        // 2: all of the rank's on its GPU
  int rows = 0;  // 0: rows in host memory; 1: on the GPU, Gloo staged; 2: on the GPUs, NCCL
};

class CudaDistributed : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaDistributed, LastStageMatchesOneCpuModel) {
  const Case c = GetParam();
  auto f = Tiny(c.spec);
  ASSERT_TRUE(f);
  auto whole = Load(f, false);
  ASSERT_TRUE(whole);
  const ModelConfig& cfg = whole->config();
  ASSERT_EQ(static_cast<int64_t>(c.layer_owner.size()), cfg.n_layer);
  const int world = static_cast<int>(c.rank_on_gpu.size());
  if (c.rows == 2) {
#ifndef RIGSERVE_HAVE_NCCL
    GTEST_SKIP() << "built without NCCL";
#else
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < world)
      GTEST_SKIP() << "NCCL needs one GPU per rank: " << world << " ranks, " << n << " GPU(s)";
    std::string why;
    if (!par::NcclAvailable(&why)) GTEST_SKIP() << why;
#endif
  }
  Model::Placement pl;
  pl.layer_owner = c.layer_owner;
  if (cfg.moe)
    for (int64_t l = 0; l < cfg.n_layer; ++l) {
      std::vector<int> owners(cfg.n_expert);
      for (int64_t e = 0; e < cfg.n_expert; ++e) owners[e] = static_cast<int>((e * 7 + l) % world);
      pl.expert_owner.push_back(owners);
    }
  std::mt19937 g(3);
  std::vector<int32_t> p1(23), p2(70);
  for (auto& x : p1) x = g() % cfg.n_vocab;
  for (auto& x : p2) x = g() % cfg.n_vocab;
  std::vector<int32_t> d1 = {5}, d2 = {9};
  std::vector<std::vector<float>> want;
  {
    auto s1 = whole->NewSequence(), s2 = whole->NewSequence();
    std::vector<float> lg;
    StepItem a[2] = {{s1.get(), p1.data(), 23, false}, {s2.get(), p2.data(), 70, false}};
    ASSERT_TRUE(whole->Forward(a, &lg).ok());
    want.push_back(lg);
    StepItem b[2] = {{s1.get(), d1.data(), 1, false}, {s2.get(), d2.data(), 1, false}};
    ASSERT_TRUE(whole->Forward(b, &lg).ok());
    want.push_back(lg);
  }
  auto store = par::MakeMemoryKvStore();
  std::vector<std::vector<std::vector<float>>> got(world);
  std::vector<std::string> errors(world);
  std::vector<std::thread> threads;
  static int generation = 0;
  const std::string prefix = absl::StrCat("cuda/", c.spec, "/", generation++, "/");
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      auto comm = par::CreateGlooCommunicator(r, world, store.get(), prefix, "127.0.0.1",
                                              std::chrono::milliseconds(30000));
      if (!comm.ok()) { errors[r] = std::string(comm.status().message()); return; }
      auto m = Load(f, c.rank_on_gpu[r], c.rows == 2 ? r : 0);
      if (!m) { errors[r] = "load failed"; return; }
      if (c.rank_on_gpu[r] && c.shard) {
        std::vector<char> mine(c.layer_owner.size());
        for (size_t l = 0; l < mine.size(); ++l) mine[l] = c.layer_owner[l] == r;
        std::vector<std::vector<int32_t>> ge;
        if (c.gpu_experts > 0 && cfg.moe) {
          ge.resize(cfg.n_layer);
          for (int64_t l = 0; l < cfg.n_layer; ++l) {
            int nth = 0;
            for (int64_t e = 0; e < cfg.n_expert; ++e)
              if (pl.expert_owner[l][e] == r && (c.gpu_experts == 2 || nth++ % 2 == 0))
                ge[l].push_back(static_cast<int32_t>(e));
          }
        }
        if (auto st = m->ShardCuda(mine, ge); !st.ok()) { errors[r] = st.ToString(); return; }
        // A shard runs no whole-model step.
        auto s = m->NewSequence();
        std::vector<float> none;
        const int32_t tok = 1;
        StepItem it{s.get(), &tok, 1, false};
        if (m->Forward({&it, 1}, &none).ok()) { errors[r] = "a shard ran a whole-model step"; return; }
      }
      // The rows' communicator of the device path.
      std::unique_ptr<par::Communicator> data;
      if (c.rows == 1) {
        par::RowMemory* mem = m->CudaRows();
        if (!mem) { errors[r] = "no device row memory"; return; }
        data = par::MakeStagedCommunicator(comm->get(), mem);
      }
#ifdef RIGSERVE_HAVE_NCCL
      if (c.rows == 2) {
        auto nc = par::CreateNcclCommunicator(r, world, store.get(), prefix + "nccl", r,
                                              std::chrono::milliseconds(30000));
        if (!nc.ok()) { errors[r] = nc.status().ToString(); return; }
        data = std::move(*nc);
      }
#endif
      // The host path first (the reference of the device path), then the path under test.
      if (c.rows > 0)
        if (auto st = m->ReserveDeviceRows(world); !st.ok()) { errors[r] = st.ToString(); return; }
      std::vector<par::Communicator*> paths = {nullptr};
      if (c.rows > 0) paths.push_back(data.get());
      for (par::Communicator* dc : paths) {
        auto s1 = m->NewSequence(), s2 = m->NewSequence();
        std::vector<float> lg;
        StepItem a[2] = {{s1.get(), p1.data(), 23, false}, {s2.get(), p2.data(), 70, false}};
        if (auto st = m->ForwardDistributed(a, comm->get(), pl, &lg, dc); !st.ok()) { errors[r] = st.ToString(); return; }
        got[r].push_back(lg);
        StepItem b[2] = {{s1.get(), d1.data(), 1, false}, {s2.get(), d2.data(), 1, false}};
        if (auto st = m->ForwardDistributed(b, comm->get(), pl, &lg, dc); !st.ok()) { errors[r] = st.ToString(); return; }
        got[r].push_back(lg);
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) ASSERT_EQ(errors[r], "") << "rank " << r;
  const int last = c.layer_owner.back();
  const int64_t V = cfg.n_vocab;
  if (c.rows > 0) {
    ASSERT_EQ(got[last].size(), 4u);
    for (int s = 0; s < 2; ++s) {
      ASSERT_EQ(got[last][2 + s].size(), got[last][s].size());
      size_t diff = 0;
      for (size_t i = 0; i < got[last][s].size(); ++i) diff += got[last][2 + s][i] != got[last][s][i];
      EXPECT_EQ(diff, 0u) << "device rows (" << (c.rows == 1 ? "staged" : "nccl")
                          << ") vs host rows, step " << s << ": " << diff << " logits differ";
    }
  }
  for (int s = 0; s < 2; ++s) {
    ASSERT_EQ(got[last][s].size(), want[s].size()) << "step " << s;
    // F32 models: the device mixers differ from the CPU by rounding only.
    EXPECT_LT(Nmse(got[last][s], want[s]), 1e-6) << c.spec << " step " << s;
    for (int row = 0; row < 2; ++row) {
      std::vector<float> a(got[last][s].begin() + row * V, got[last][s].begin() + (row + 1) * V);
      std::vector<float> b(want[s].begin() + row * V, want[s].begin() + (row + 1) * V);
      whole->MaskUnused(a.data(), 1);
      whole->MaskUnused(b.data(), 1);
      EXPECT_EQ(std::max_element(a.begin(), a.end()) - a.begin(),
                std::max_element(b.begin(), b.end()) - b.begin())
          << c.spec << " step " << s << " row " << row;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Groups, CudaDistributed,
    ::testing::Values(Case{"moe-tiny:F32", {0, 0, 0, 1, 1, 1, 1, 1}, {true, false}},
                      Case{"moe-tiny:F32", {0, 0, 1, 1, 1, 1, 0, 0}, {false, true}},
                      Case{"moe-tiny:F32", {0, 0, 0, 0, 1, 1, 1, 1}, {true, true}},
                      Case{"moe-tiny:F32", {0, 1, 0, 1, 0, 1, 0, 1}, {true, true}, false},
                      Case{"moe-tiny:F32", {0, 0, 0, 1, 1, 1, 1, 1}, {true, false}, true, 1},
                      Case{"moe-tiny:F32", {0, 0, 0, 0, 1, 1, 1, 1}, {true, true}, true, 2},
                      Case{"dense-tiny:F32", {0, 1, 1, 1, 1, 1, 1, 1}, {true, false}},
                      // Rows on the device: every expert on the GPUs, half of them, none.
                      Case{"moe-tiny:F32", {0, 0, 0, 0, 1, 1, 1, 1}, {true, true}, true, 2, 1},
                      Case{"moe-tiny:F32", {0, 1, 1, 0, 2, 2, 1, 0}, {true, true, true}, true, 1, 1},
                      Case{"moe-tiny:F32", {0, 0, 1, 1, 1, 1, 0, 0}, {true, true}, true, 0, 1},
                      Case{"dense-tiny:F32", {0, 0, 0, 1, 1, 1, 1, 1}, {true, true}, true, 0, 1},
                      Case{"moe-tiny:F32", {0, 0, 0, 0, 1, 1, 1, 1}, {true, true}, true, 1, 2}),
    [](const ::testing::TestParamInfo<Case>& i) {
      std::string s = i.param.spec;
      for (auto& ch : s)
        if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
      std::string gpus;
      for (bool b : i.param.rank_on_gpu) gpus += b ? "G" : "C";
      return s + "_" + gpus + "_" + std::to_string(i.index);
    });

}  // namespace
}  // namespace rs
