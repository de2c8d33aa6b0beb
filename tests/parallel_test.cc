// parallel/: the Gloo communicator (ranks as threads and as processes on 127.0.0.1), the file
// KvStore, MoE dispatch/combine against a local computation, the stage hand-off, timeouts, and
// the NCCL backend (skips without a CUDA device).
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "parallel/communicator.h"
#include "parallel/moe_dispatch.h"
#include "tests/fenced_row_memory.h"
#ifdef RIGSERVE_HAVE_NCCL
#include "parallel/nccl/nccl_comm.h"
#endif

namespace rs::par {
namespace {

using Ms = std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

double ElapsedMs(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Connects `size` ranks as threads over one in-process store and runs fn(comm) on each, every
// rank on its own thread. Failures inside fn are gtest failures (thread-safe in gtest).
void RunRanks(int size, Ms timeout, const std::function<void(Communicator&)>& fn,
              const std::string& prefix = "t") {
  auto store = MakeMemoryKvStore();
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      auto comm = CreateGlooCommunicator(r, size, store.get(), prefix, "127.0.0.1", timeout);
      ASSERT_TRUE(comm.ok()) << comm.status();
      EXPECT_EQ((*comm)->rank(), r);
      EXPECT_EQ((*comm)->size(), size);
      EXPECT_STREQ((*comm)->backend(), "gloo");
      fn(**comm);
    });
  }
  for (auto& t : threads) t.join();
}

float Val(int rank, size_t i, int salt) {
  return static_cast<float>((rank + 1) * 1000 + static_cast<int>(i % 997) + salt * 7) * 0.5f;
}

// Every op, checked on every rank. Returns the number of failed checks (for the child processes).
int CheckAllOps(Communicator& c) {
  int bad = 0;
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) {
      ++bad;
      ADD_FAILURE() << "rank " << c.rank() << ": " << what;
      std::fprintf(stderr, "rank %d: check failed: %s\n", c.rank(), what.c_str());
    }
  };
  const int n = c.size(), me = c.rank();

  // Point-to-point, two tags per ordered pair: the sender sends tag 1 then tag 2 from two
  // threads; the receiver takes tag 2 first. Every rank sends to and receives from every other.
  {
    std::vector<std::thread> senders;
    std::vector<std::vector<int32_t>> out(2 * n);
    for (int dst = 0; dst < n; ++dst) {
      if (dst == me) continue;
      for (int tag = 1; tag <= 2; ++tag) {
        auto& v = out[2 * dst + tag - 1];
        v.resize(100 * tag + dst);
        for (size_t i = 0; i < v.size(); ++i) v[i] = me * 100000 + dst * 1000 + tag * 100 + i;
        senders.emplace_back([&c, &check, &v, dst, tag] {
          absl::Status s = c.Send(dst, v.data(), v.size() * 4, tag);
          check(s.ok(), absl::StrCat("send tag ", tag, " to ", dst, ": ", s.ToString()));
        });
      }
    }
    for (int src = 0; src < n; ++src) {
      if (src == me) continue;
      for (int tag = 2; tag >= 1; --tag) {
        std::vector<int32_t> v(100 * tag + me, -1);
        absl::Status s = c.Recv(src, v.data(), v.size() * 4, tag);
        check(s.ok(), absl::StrCat("recv tag ", tag, " from ", src, ": ", s.ToString()));
        bool same = true;
        for (size_t i = 0; i < v.size(); ++i)
          same &= v[i] == static_cast<int32_t>(src * 100000 + me * 1000 + tag * 100 + i);
        check(same, absl::StrCat("payload of tag ", tag, " from ", src));
      }
    }
    for (auto& t : senders) t.join();
  }

  // Broadcast from each root, an odd size.
  for (int root = 0; root < n; ++root) {
    std::vector<uint8_t> b(1001);
    for (size_t i = 0; i < b.size(); ++i) b[i] = me == root ? static_cast<uint8_t>(i * 7 + root) : 0;
    absl::Status s = c.Broadcast(b.data(), b.size(), root);
    check(s.ok(), absl::StrCat("broadcast from ", root, ": ", s.ToString()));
    bool same = true;
    for (size_t i = 0; i < b.size(); ++i) same &= b[i] == static_cast<uint8_t>(i * 7 + root);
    check(same, absl::StrCat("broadcast payload from ", root));
  }

  // ReduceSum to each root (non-roots keep their data), and AllReduceSum, small and large.
  for (int root = 0; root < n; ++root) {
    for (size_t len : {size_t{1}, size_t{1000}, size_t{70001}}) {
      std::vector<float> v(len);
      for (size_t i = 0; i < len; ++i) v[i] = Val(me, i, root);
      absl::Status s = c.ReduceSum(v.data(), len, root);
      check(s.ok(), absl::StrCat("reduce to ", root, " of ", len, ": ", s.ToString()));
      bool same = true;
      for (size_t i = 0; i < len; ++i) {
        float want = 0;
        for (int r = 0; r < n; ++r) want += Val(r, i, root);
        if (me != root) want = Val(me, i, root);
        same &= v[i] == want;
      }
      check(same, absl::StrCat("reduce to ", root, " of ", len, " values"));
    }
  }
  for (size_t len : {size_t{1}, size_t{1000}, size_t{300007}}) {
    std::vector<float> v(len);
    for (size_t i = 0; i < len; ++i) v[i] = Val(me, i, 3);
    absl::Status s = c.AllReduceSum(v.data(), len);
    check(s.ok(), absl::StrCat("all-reduce of ", len, ": ", s.ToString()));
    bool same = true;
    for (size_t i = 0; i < len; ++i) {
      float want = 0;
      for (int r = 0; r < n; ++r) want += Val(r, i, 3);
      same &= v[i] == want;
    }
    check(same, absl::StrCat("all-reduce values, ", len));
  }

  // AllToAllV: rank s sends bytes(s, d) = ((s * 5 + d * 3) % 4) * 37 bytes to d (zero for some
  // pairs), laid out in reverse rank order with gaps; receives in rank order with gaps.
  for (int round = 0; round < 2; ++round) {
    auto bytes = [&](int s, int d) { return static_cast<size_t>(((s * 5 + d * 3 + round) % 4) * 37); };
    std::vector<size_t> so(n), sb(n), ro(n), rb(n);
    size_t off = 0;
    for (int d = n - 1; d >= 0; --d) {
      so[d] = off;
      sb[d] = bytes(me, d);
      off += sb[d] + 3;
    }
    std::vector<uint8_t> send(off);
    for (int d = 0; d < n; ++d)
      for (size_t i = 0; i < sb[d]; ++i) send[so[d] + i] = static_cast<uint8_t>(me * 31 + d * 7 + i);
    off = 5;
    for (int s = 0; s < n; ++s) {
      ro[s] = off;
      rb[s] = bytes(s, me);
      off += rb[s] + 1;
    }
    std::vector<uint8_t> recv(off, 0xEE);
    absl::Status st = c.AllToAllV(send.data(), so, sb, recv.data(), ro, rb);
    check(st.ok(), absl::StrCat("all-to-all-v round ", round, ": ", st.ToString()));
    bool same = true;
    for (int s = 0; s < n; ++s)
      for (size_t i = 0; i < rb[s]; ++i)
        same &= recv[ro[s] + i] == static_cast<uint8_t>(s * 31 + me * 7 + i);
    for (int s = 0; s < n; ++s) same &= recv[ro[s] + rb[s]] == 0xEE;  // the gaps stay untouched
    check(same, absl::StrCat("all-to-all-v payload round ", round));
  }

  // Barrier: rank 0 arrives 150 ms late; nobody leaves before it arrives.
  {
    static std::atomic<int64_t> dummy{0};
    (void)dummy;
    auto t0 = Clock::now();
    if (me == 0) std::this_thread::sleep_for(Ms(150));
    absl::Status s = c.Barrier();
    check(s.ok(), absl::StrCat("barrier: ", s.ToString()));
    check(ElapsedMs(t0) >= 100, absl::StrCat("barrier returned after ", ElapsedMs(t0), " ms"));
  }
  return bad;
}

TEST(GlooThreads, AllOpsTwoRanks) {
  RunRanks(2, Ms(5000), [](Communicator& c) { EXPECT_EQ(CheckAllOps(c), 0); });
}

TEST(GlooThreads, AllOpsThreeRanks) {
  RunRanks(3, Ms(5000), [](Communicator& c) { EXPECT_EQ(CheckAllOps(c), 0); });
}

TEST(GlooThreads, GroupOfOne) {
  RunRanks(1, Ms(1000), [](Communicator& c) {
    std::vector<float> v = {1, 2, 3};
    EXPECT_TRUE(c.AllReduceSum(v.data(), 3).ok());
    EXPECT_TRUE(c.ReduceSum(v.data(), 3, 0).ok());
    EXPECT_TRUE(c.Broadcast(v.data(), 12, 0).ok());
    EXPECT_TRUE(c.Barrier().ok());
    EXPECT_EQ(v, (std::vector<float>{1, 2, 3}));
    std::vector<float> w(3);
    EXPECT_TRUE(c.AllToAllV(v.data(), {0}, {12}, w.data(), {0}, {12}).ok());
    EXPECT_EQ(w, v);
    EXPECT_EQ(c.Send(0, v.data(), 4, 0).code(), absl::StatusCode::kInvalidArgument);
  });
}

TEST(GlooThreads, InvalidArguments) {
  auto store = MakeMemoryKvStore();
  EXPECT_EQ(CreateGlooCommunicator(2, 2, store.get(), "p", "127.0.0.1", Ms(100)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateGlooCommunicator(0, 2, nullptr, "p", "127.0.0.1", Ms(100)).status().code(),
            absl::StatusCode::kInvalidArgument);
  RunRanks(2, Ms(2000), [](Communicator& c) {
    float x = 0;
    EXPECT_EQ(c.Send(5, &x, 4, 0).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(c.Recv(c.rank(), &x, 4, 0).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(c.Broadcast(&x, 4, 2).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(c.AllToAllV(&x, {0}, {4}, &x, {0}, {4}).code(), absl::StatusCode::kInvalidArgument);
    // Still usable after argument errors.
    x = 1;
    EXPECT_TRUE(c.AllReduceSum(&x, 1).ok());
    EXPECT_EQ(x, 2);
  });
}

TEST(GlooThreads, PeerThatNeverShowsUpFailsConnectWithinTimeout) {
  auto store = MakeMemoryKvStore();
  auto t0 = Clock::now();
  auto comm = CreateGlooCommunicator(0, 2, store.get(), "lonely", "127.0.0.1", Ms(300));
  const double ms = ElapsedMs(t0);
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
  EXPECT_LT(ms, 1500);
  const std::string msg(comm.status().message());
  EXPECT_NE(msg.find("rank 0 of 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lonely/"), std::string::npos) << msg;  // the missing key
  EXPECT_NE(msg.find("300 ms"), std::string::npos) << msg;
}

TEST(GlooThreads, PeerThatClosesFailsTheOthersNextOp) {
  auto store = MakeMemoryKvStore();
  std::vector<std::thread> threads;
  std::atomic<int> closed{0};
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      auto comm = CreateGlooCommunicator(r, 3, store.get(), "close", "127.0.0.1", Ms(1000));
      ASSERT_TRUE(comm.ok()) << comm.status();
      float x = 1;
      ASSERT_TRUE((*comm)->AllReduceSum(&x, 1).ok());
      if (r == 2) {
        comm->reset();  // closes its sockets
        closed = 1;
        return;
      }
      while (!closed) std::this_thread::sleep_for(Ms(1));
      std::this_thread::sleep_for(Ms(50));
      auto t0 = Clock::now();
      absl::Status s = (*comm)->AllReduceSum(&x, 1);
      EXPECT_FALSE(s.ok());
      EXPECT_LT(ElapsedMs(t0), 1800) << s;
      EXPECT_NE(s.message().find("all-reduce-sum"), std::string::npos) << s;
      EXPECT_TRUE(absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s)) << s;
      // Broken from now on, immediately.
      t0 = Clock::now();
      absl::Status again = (*comm)->Barrier();
      EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition) << again;
      EXPECT_LT(ElapsedMs(t0), 50);
    });
  }
  for (auto& t : threads) t.join();
}

TEST(GlooThreads, SilentPeerTimesOutRecvAndCollective) {
  auto store = MakeMemoryKvStore();
  std::atomic<bool> done{false};
  std::thread silent([&] {
    auto comm = CreateGlooCommunicator(1, 2, store.get(), "silent", "127.0.0.1", Ms(400));
    ASSERT_TRUE(comm.ok()) << comm.status();
    while (!done) std::this_thread::sleep_for(Ms(5));  // connected, never answers
  });
  auto comm = CreateGlooCommunicator(0, 2, store.get(), "silent", "127.0.0.1", Ms(400));
  ASSERT_TRUE(comm.ok()) << comm.status();
  float x[4];
  auto t0 = Clock::now();
  absl::Status s = (*comm)->Recv(1, x, sizeof(x), 9);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_GE(ElapsedMs(t0), 350);
  EXPECT_LT(ElapsedMs(t0), 1200);
  EXPECT_NE(s.message().find("from rank 1"), std::string::npos) << s;
  EXPECT_NE(s.message().find("400 ms"), std::string::npos) << s;
  done = true;
  silent.join();

  // A collective against a silent peer, on a fresh group; timeout changed after connecting.
  done = false;
  std::thread silent2([&] {
    auto c = CreateGlooCommunicator(1, 2, store.get(), "silent2", "127.0.0.1", Ms(5000));
    ASSERT_TRUE(c.ok()) << c.status();
    while (!done) std::this_thread::sleep_for(Ms(5));
  });
  comm = CreateGlooCommunicator(0, 2, store.get(), "silent2", "127.0.0.1", Ms(5000));
  ASSERT_TRUE(comm.ok()) << comm.status();
  (*comm)->set_timeout(Ms(300));
  std::vector<float> v(1000, 1.0f);
  t0 = Clock::now();
  s = (*comm)->AllReduceSum(v.data(), v.size());
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_LT(ElapsedMs(t0), 1200);
  done = true;
  silent2.join();
}

// --- file store ---

std::string MakeTempDir() {
  char tmpl[] = "/tmp/rs_parallel_test.XXXXXX";
  const char* d = mkdtemp(tmpl);
  return d ? std::string(d) : std::string();
}

TEST(FileKvStore, SetGetOverwriteTimeout) {
  const std::string dir = MakeTempDir();
  ASSERT_FALSE(dir.empty());
  auto a = MakeFileKvStore(dir + "/sub");
  auto b = MakeFileKvStore(dir + "/sub");
  ASSERT_TRUE(a->Set("gen1/0", {'x', 'y'}).ok());
  auto v = b->Get("gen1/0", Ms(100));
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, (std::vector<char>{'x', 'y'}));
  ASSERT_TRUE(a->Set("gen1/0", {}).ok());
  v = b->Get("gen1/0", Ms(100));
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->empty());
  ASSERT_TRUE(a->Set("..", {'d'}).ok());  // odd keys stay inside the directory
  EXPECT_EQ(*b->Get("..", Ms(10)), std::vector<char>{'d'});
  auto t0 = Clock::now();
  v = b->Get("missing/key", Ms(150));
  EXPECT_EQ(v.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(ElapsedMs(t0), 140);
  EXPECT_LT(ElapsedMs(t0), 600);
  EXPECT_NE(v.status().message().find("missing/key"), std::string::npos);
  // A value that appears while waiting.
  std::thread late([&] {
    std::this_thread::sleep_for(Ms(50));
    ASSERT_TRUE(a->Set("late", std::vector<char>(10000, 'z')).ok());
  });
  v = b->Get("late", Ms(2000));
  late.join();
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->size(), 10000u);
  std::system(("rm -rf '" + dir + "'").c_str());
}

// --- MoE dispatch/combine ---

// Expert e maps x (H) to W_e x, W_e an H x H matrix of small random numbers.
struct ToyExperts {
  size_t H;
  std::vector<std::vector<float>> W;
  ToyExperts(int num_experts, size_t hidden, uint32_t seed) : H(hidden) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-0.5f, 0.5f);
    W.resize(num_experts);
    for (auto& w : W) {
      w.resize(H * H);
      for (auto& f : w) f = u(rng);
    }
  }
  void Apply(int e, const float* x, float weight, float* out) const {
    for (size_t i = 0; i < H; ++i) {
      float acc = 0;
      for (size_t j = 0; j < H; ++j) acc += W[e][i * H + j] * x[j];
      out[i] += weight * acc;
    }
  }
};

struct MoeCase {
  int layer, owner, num_experts, top_k;
  size_t hidden, tokens;
  std::vector<int> expert_rank;
  std::vector<float> x, weights;
  std::vector<int32_t> experts;
};

MoeCase MakeCase(int layer, int size, size_t tokens, uint32_t seed, int ranks_with_experts) {
  std::mt19937 rng(seed);
  MoeCase c;
  c.layer = layer;
  c.owner = static_cast<int>(rng() % size);
  c.num_experts = 12;
  c.top_k = 4;
  c.hidden = 16;
  c.tokens = tokens;
  c.expert_rank.resize(c.num_experts);
  for (int e = 0; e < c.num_experts; ++e) c.expert_rank[e] = static_cast<int>(rng() % ranks_with_experts);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  c.x.resize(tokens * c.hidden);
  for (auto& f : c.x) f = u(rng);
  for (size_t t = 0; t < tokens; ++t) {
    std::vector<int> pool(c.num_experts);
    for (int e = 0; e < c.num_experts; ++e) pool[e] = e;
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int j = 0; j < c.top_k; ++j) {
      c.experts.push_back(pool[j]);
      c.weights.push_back(std::fabs(u(rng)));
    }
  }
  return c;
}

void RunMoe(int size, int ranks_with_experts, uint32_t seed, bool per_slot = false) {
  const int kLayers = 6;
  std::vector<MoeCase> cases;
  for (int l = 0; l < kLayers; ++l)
    cases.push_back(MakeCase(l, size, l == 3 ? 0 : 1 + (seed + l * 13) % 40, seed * 100 + l,
                             ranks_with_experts));
  const ToyExperts experts(12, 16, seed);
  std::vector<MoeStats> stats(size);
  RunRanks(size, Ms(5000), [&](Communicator& c) {
    MoeDispatcher d(&c);
    for (const MoeCase& mc : cases) {
      MoeLayer l;
      l.layer = mc.layer;
      l.owner = mc.owner;
      l.hidden = mc.hidden;
      l.top_k = mc.top_k;
      l.expert_rank = &mc.expert_rank;
      l.per_slot = per_slot;
      std::vector<float> out, slot_out;
      if (c.rank() == mc.owner) {
        out.assign(mc.tokens * mc.hidden, 123.f);
        slot_out.assign(mc.tokens * mc.top_k * mc.hidden, 77.f);
        if (per_slot) l.slot_out = slot_out.data();
        l.num_tokens = mc.tokens;
        l.x = mc.x.data();
        l.experts = mc.experts.data();
        l.weights = mc.weights.data();
        l.out = out.data();
      }
      absl::Status s = d.Run(l, [&](const ExpertWork& w) {
        EXPECT_EQ(w.layer, mc.layer);
        for (size_t i = 0; i < w.num_tokens; ++i)
          for (int j = 0; j < w.top_k; ++j) {
            const int e = w.experts[i * w.top_k + j];
            if (e < 0) {
              EXPECT_EQ(w.weights[i * w.top_k + j], 0.f);
              continue;
            }
            EXPECT_EQ(mc.expert_rank[e], c.rank());
            EXPECT_EQ(w.per_slot, per_slot);
            float* o = per_slot ? w.out + (i * w.top_k + j) * w.hidden : w.out + i * w.hidden;
            experts.Apply(e, w.x + i * w.hidden, w.weights[i * w.top_k + j], o);
          }
        return absl::OkStatus();
      });
      ASSERT_TRUE(s.ok()) << s;
      if (c.rank() != mc.owner) continue;
      if (per_slot) {
        // Bit-exact against one worker that computes every slot and sums them in slot order.
        for (size_t t = 0; t < mc.tokens; ++t) {
          std::vector<float> sum(mc.hidden);
          for (int j = 0; j < mc.top_k; ++j) {
            std::vector<float> slot(mc.hidden, 0.f);
            experts.Apply(mc.experts[t * mc.top_k + j], &mc.x[t * mc.hidden],
                          mc.weights[t * mc.top_k + j], slot.data());
            for (size_t h = 0; h < mc.hidden; ++h) {
              ASSERT_EQ(slot_out[(t * mc.top_k + j) * mc.hidden + h], slot[h])
                  << "layer " << mc.layer << " token " << t << " slot " << j;
              sum[h] = j == 0 ? slot[h] : sum[h] + slot[h];
            }
          }
          for (size_t h = 0; h < mc.hidden; ++h) ASSERT_EQ(out[t * mc.hidden + h], sum[h]);
        }
        continue;
      }
      for (size_t t = 0; t < mc.tokens; ++t) {
        std::vector<float> want(mc.hidden, 0.f);
        for (int j = 0; j < mc.top_k; ++j)
          experts.Apply(mc.experts[t * mc.top_k + j], &mc.x[t * mc.hidden],
                        mc.weights[t * mc.top_k + j], want.data());
        for (size_t h = 0; h < mc.hidden; ++h)
          ASSERT_NEAR(out[t * mc.hidden + h], want[h], 1e-4f * (1 + std::fabs(want[h])))
              << "layer " << mc.layer << " token " << t << " h " << h;
      }
    }
    stats[c.rank()] = d.stats();
  });
  for (int r = ranks_with_experts; r < size; ++r) EXPECT_EQ(stats[r].tokens_computed, 0u);
  uint64_t sent = 0, received = 0;
  for (const auto& s : stats) {
    sent += s.bytes_sent;
    received += s.bytes_received;
    EXPECT_EQ(s.calls, static_cast<uint64_t>(kLayers));
  }
  EXPECT_EQ(sent, received);
}

TEST(MoeDispatch, TwoRanksMatchesLocal) {
  RunMoe(2, 2, 1);
  RunMoe(2, 1, 2);  // rank 1 holds no expert
}

TEST(MoeDispatch, ThreeRanksMatchesLocal) {
  RunMoe(3, 3, 3);
  RunMoe(3, 2, 4);  // rank 2 receives nothing
}

TEST(MoeDispatch, PerSlotModeIsBitExactAndPlacementIndependent) {
  RunMoe(2, 2, 5, true);
  RunMoe(3, 3, 6, true);
  RunMoe(3, 1, 7, true);  // everything on rank 0
}

TEST(MoeDispatch, BadExpertIdFailsEveryRankWithoutHanging) {
  std::vector<int> map = {0, 1, 0, 1};
  RunRanks(2, Ms(3000), [&](Communicator& c) {
    MoeDispatcher d(&c);
    std::vector<float> x(8, 1.f), w(2, 0.5f), out(8);
    std::vector<int32_t> e = {0, 9};  // 9 is out of range
    MoeLayer l;
    l.layer = 7;
    l.owner = 0;
    l.hidden = 4;
    l.top_k = 2;
    l.expert_rank = &map;
    if (c.rank() == 0) {
      l.num_tokens = 1;
      l.x = x.data();
      l.experts = e.data();
      l.weights = w.data();
      l.out = out.data();
    }
    auto t0 = Clock::now();
    absl::Status s = d.Run(l, [](const ExpertWork&) { return absl::OkStatus(); });
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("layer 7"), std::string::npos) << s;
    EXPECT_LT(ElapsedMs(t0), 1000);
    // The group is still in step: a correct layer works afterwards.
    e = {0, 3};
    s = d.Run(l, [](const ExpertWork& w) {
      for (size_t i = 0; i < w.num_tokens * w.hidden; ++i) w.out[i] = 1.f;
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
    if (c.rank() == 0) EXPECT_EQ(out[0], 2.f);  // one row from each rank
  });
}

// RunRows with the rows in a fenced "device" memory, the data moved by the same Gloo group
// (staged through that memory, as a GPU group without NCCL does): the owner's slot rows equal,
// bit for bit, a local computation of each slot, and the counters equal Run's per-slot ones.
void RunMoeRows(int size, int ranks_with_experts, uint32_t seed) {
  const int kLayers = 6;
  std::vector<MoeCase> cases;
  for (int l = 0; l < kLayers; ++l)
    cases.push_back(MakeCase(l, size, l == 3 ? 0 : 1 + (seed + l * 13) % 40, seed * 100 + l,
                             ranks_with_experts));
  const ToyExperts experts(12, 16, seed);
  std::vector<MoeStats> rows_stats(size), run_stats(size);
  RunRanks(size, Ms(5000), [&](Communicator& c) {
    FencedRowMemory mem;
    auto data = MakeStagedCommunicator(&c, &mem);
    MoeDispatcher d(&c), ref(&c);
    for (const MoeCase& mc : cases) {
      const size_t H = mc.hidden, K = mc.top_k;
      RowLayer l;
      l.layer = mc.layer;
      l.owner = mc.owner;
      l.hidden = H;
      l.top_k = mc.top_k;
      l.expert_rank = &mc.expert_rank;
      const bool owner = c.rank() == mc.owner;
      if (owner) {
        float* x = mem.Alloc(std::max<size_t>(1, mc.tokens * H));
        EXPECT_TRUE(mem.Upload(x, mc.x.data(), mc.tokens * H * 4).ok());
        l.num_tokens = mc.tokens;
        l.x = x;
        l.experts = mc.experts.data();
        l.weights = mc.weights.data();
      }
      RowResult res;
      absl::Status s = d.RunRows(l, mem, *data, [&](const RowWork& w) {
        EXPECT_EQ(w.layer, mc.layer);
        EXPECT_TRUE(mem.Mine(w.x, w.num_tokens * w.hidden * 4));
        EXPECT_TRUE(mem.Mine(w.out, w.out_rows * w.hidden * 4));
        std::vector<float> x(w.num_tokens * w.hidden), row(w.hidden);
        EXPECT_TRUE(mem.Download(x.data(), w.x, x.size() * 4).ok());
        size_t p = 0;
        for (size_t i = 0; i < w.num_tokens; ++i)
          for (int j = 0; j < w.top_k; ++j) {
            const int e = w.experts[i * w.top_k + j];
            if (e < 0) continue;
            EXPECT_EQ(mc.expert_rank[e], c.rank());
            std::fill(row.begin(), row.end(), 0.f);
            experts.Apply(e, &x[i * w.hidden], w.weights[i * w.top_k + j], row.data());
            EXPECT_TRUE(mem.Upload(w.out + p++ * w.hidden, row.data(), w.hidden * 4).ok());
          }
        EXPECT_EQ(p, w.out_rows);
        return absl::OkStatus();
      }, owner ? &res : nullptr);
      ASSERT_TRUE(s.ok()) << s;
      // The host dispatcher in per-slot mode on the same layer, for the counters.
      MoeLayer ml;
      ml.layer = mc.layer;
      ml.owner = mc.owner;
      ml.hidden = H;
      ml.top_k = mc.top_k;
      ml.expert_rank = &mc.expert_rank;
      ml.per_slot = true;
      std::vector<float> slot_out(mc.tokens * K * H);
      if (owner) {
        ml.num_tokens = mc.tokens;
        ml.x = mc.x.data();
        ml.experts = mc.experts.data();
        ml.weights = mc.weights.data();
        ml.slot_out = slot_out.data();
      }
      ASSERT_TRUE(ref.Run(ml, [&](const ExpertWork& w) {
                       for (size_t i = 0; i < w.num_tokens * w.top_k; ++i)
                         if (w.experts[i] >= 0)
                           experts.Apply(w.experts[i], w.x + (i / w.top_k) * w.hidden,
                                         w.weights[i], w.out + i * w.hidden);
                       return absl::OkStatus();
                     }).ok());
      if (!owner) continue;
      ASSERT_EQ(res.slot_row.size(), mc.tokens * K);
      std::vector<float> got(H);
      for (size_t t = 0; t < mc.tokens; ++t)
        for (size_t j = 0; j < K; ++j) {
          const int32_t r = res.slot_row[t * K + j];
          ASSERT_GE(r, 0);
          ASSERT_TRUE(mem.Download(got.data(), res.rows + r * H, H * 4).ok());
          std::vector<float> want(H, 0.f);
          experts.Apply(mc.experts[t * K + j], &mc.x[t * H], mc.weights[t * K + j], want.data());
          for (size_t h = 0; h < H; ++h) {
            ASSERT_EQ(got[h], want[h]) << "layer " << mc.layer << " token " << t << " slot " << j;
            ASSERT_EQ(got[h], slot_out[(t * K + j) * H + h]);
          }
        }
    }
    rows_stats[c.rank()] = d.stats();
    run_stats[c.rank()] = ref.stats();
  });
  for (int r = 0; r < size; ++r) {
    EXPECT_EQ(rows_stats[r].calls, static_cast<uint64_t>(kLayers));
    EXPECT_EQ(rows_stats[r].bytes_sent, run_stats[r].bytes_sent) << "rank " << r;
    EXPECT_EQ(rows_stats[r].bytes_received, run_stats[r].bytes_received) << "rank " << r;
    EXPECT_EQ(rows_stats[r].tokens_computed, run_stats[r].tokens_computed) << "rank " << r;
  }
}

TEST(MoeDispatchRows, DeviceStyleRowsMatchLocalSlots) {
  RunMoeRows(2, 2, 11);
  RunMoeRows(3, 3, 12);
  RunMoeRows(3, 1, 13);  // everything on rank 0; ranks 1, 2 receive nothing
  RunMoeRows(3, 2, 14);
}

// A host pointer where the row memory's is expected is refused with the layer named, on every
// rank, without hanging (the owner rejects the layer before anything moves).
TEST(MoeDispatchRows, OwnerWithoutResultIsRefused) {
  std::vector<int> map = {0, 1, 0, 1};
  RunRanks(2, Ms(3000), [&](Communicator& c) {
    auto mem = MakeHostRowMemory();
    auto data = MakeStagedCommunicator(&c, mem.get());
    MoeDispatcher d(&c);
    std::vector<float> x(8, 1.f), w(2, 0.5f);
    std::vector<int32_t> e = {0, 1};
    RowLayer l;
    l.layer = 5;
    l.owner = 1;
    l.hidden = 4;
    l.top_k = 2;
    l.expert_rank = &map;
    if (c.rank() == 1) {
      l.num_tokens = 1;
      l.x = x.data();
      l.experts = e.data();
      l.weights = w.data();
    }
    auto t0 = Clock::now();
    absl::Status s = d.RunRows(l, *mem, *data, [](const RowWork&) { return absl::OkStatus(); },
                               nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("layer 5"), std::string::npos) << s;
    EXPECT_LT(ElapsedMs(t0), 1000);
    // Host memory is a RowMemory too: with a result the same layer goes through.
    RowResult res;
    s = d.RunRows(l, *mem, *data, [&](const RowWork& wk) {
          for (size_t i = 0; i < wk.out_rows * wk.hidden; ++i) wk.out[i] = 1.f + c.rank();
          return absl::OkStatus();
        }, c.rank() == 1 ? &res : nullptr);
    EXPECT_TRUE(s.ok()) << s;
    if (c.rank() == 1) {
      ASSERT_EQ(res.slot_row.size(), 2u);
      EXPECT_EQ(res.rows[res.slot_row[0] * 4], 1.f);  // expert 0 on rank 0
      EXPECT_EQ(res.rows[res.slot_row[1] * 4], 2.f);  // expert 1 on rank 1
    }
  });
}

// Per-slot mode needs only slot_out on the owner (out may be null: the model sums the slots
// itself); a missing slot_out is refused on every rank without hanging.
TEST(MoeDispatch, PerSlotModeNeedsOnlySlotOut) {
  std::vector<int> map = {0, 1, 1, 0};
  RunRanks(2, Ms(3000), [&](Communicator& c) {
    MoeDispatcher d(&c);
    std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8}, w = {0.5f, 0.25f, 2.f, 4.f};
    std::vector<float> slot_out(2 * 2 * 4, -1.f);
    std::vector<int32_t> e = {0, 1, 2, 3};  // token 0: ranks 0 and 1; token 1: ranks 1 and 0
    MoeLayer l;
    l.layer = 4;
    l.owner = 1;
    l.hidden = 4;
    l.top_k = 2;
    l.expert_rank = &map;
    l.per_slot = true;
    if (c.rank() == 1) {
      l.num_tokens = 2;
      l.x = x.data();
      l.experts = e.data();
      l.weights = w.data();
    }
    // Expert e multiplies by (e + 1).
    const auto fn = [](const ExpertWork& wk) {
      for (size_t i = 0; i < wk.num_tokens; ++i)
        for (int j = 0; j < wk.top_k; ++j) {
          const int32_t ex = wk.experts[i * wk.top_k + j];
          if (ex < 0) continue;
          for (size_t h = 0; h < wk.hidden; ++h)
            wk.out[(i * wk.top_k + j) * wk.hidden + h] =
                wk.weights[i * wk.top_k + j] * (ex + 1) * wk.x[i * wk.hidden + h];
        }
      return absl::OkStatus();
    };
    auto t0 = Clock::now();
    absl::Status s = d.Run(l, fn);  // the owner has no slot_out yet
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("layer 4"), std::string::npos) << s;
    EXPECT_LT(ElapsedMs(t0), 1000);
    if (c.rank() == 1) l.slot_out = slot_out.data();
    s = d.Run(l, fn);
    ASSERT_TRUE(s.ok()) << s;
    if (c.rank() != 1) return;
    for (size_t t = 0; t < 2; ++t)
      for (size_t j = 0; j < 2; ++j)
        for (size_t h = 0; h < 4; ++h)
          EXPECT_EQ(slot_out[(t * 2 + j) * 4 + h], w[t * 2 + j] * (e[t * 2 + j] + 1) * x[t * 4 + h])
              << "token " << t << " slot " << j << " h " << h;
  });
}

// --- stage hand-off ---

TEST(HandOff, SendRecvHiddenAndShapeMismatch) {
  RunRanks(3, Ms(3000), [](Communicator& c) {
    const size_t H = 24;
    // A pipeline 0 -> 1 -> 2, each stage adds its rank.
    std::vector<float> x(5 * H);
    if (c.rank() == 0) {
      for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i);
      ASSERT_TRUE(SendHidden(c, 1, x.data(), 5, H, 40).ok());
    } else {
      absl::Status s = RecvHidden(c, c.rank() - 1, x.data(), 5, H, 40);
      ASSERT_TRUE(s.ok()) << s;
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_EQ(x[i], static_cast<float>(i) + (c.rank() == 2 ? 1.f : 0.f));
      for (auto& f : x) f += c.rank();
      if (c.rank() == 1) ASSERT_TRUE(SendHidden(c, 2, x.data(), 5, H, 40).ok());
    }
    // The receiver expects 4 tokens, the sender sends 5: a clear error, and the pair still works.
    if (c.rank() == 0) {
      ASSERT_TRUE(SendHidden(c, 1, x.data(), 5, H, 41).ok());
      ASSERT_TRUE(SendHidden(c, 1, x.data(), 2, H, 41).ok());
    } else if (c.rank() == 1) {
      absl::Status s = RecvHidden(c, 0, x.data(), 4, H, 41);
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
      EXPECT_NE(s.message().find("sent 5 tokens x 24"), std::string::npos) << s;
      EXPECT_NE(s.message().find("expected 4 x 24"), std::string::npos) << s;
      EXPECT_TRUE(RecvHidden(c, 0, x.data(), 2, H, 41).ok());
    }
  });
}

// --- several processes: this binary re-executes itself as the ranks ---

// A child rank: RS_PAR_CHILD="mode,rank,size,storedir". Runs before main() and exits.
int ChildMain(const std::string& spec) {
  std::vector<std::string> f = absl::StrSplit(spec, ',');
  if (f.size() != 4) return 90;
  const std::string mode = f[0];
  const int rank = std::atoi(f[1].c_str()), size = std::atoi(f[2].c_str());
  auto store = MakeFileKvStore(f[3]);
  auto comm = CreateGlooCommunicator(rank, size, store.get(), mode, "127.0.0.1", Ms(2000));
  if (!comm.ok()) {
    std::fprintf(stderr, "rank %d: connect: %s\n", rank, comm.status().ToString().c_str());
    return 2;
  }
  Communicator& c = **comm;
  if (mode == "ops") return CheckAllOps(c) == 0 ? 0 : 3;
  const bool victim = rank == size - 1;
  // Everybody connected (a rank that leaves while the others are still connecting makes their
  // connect fail, which is right but not what these modes test).
  if (absl::Status s = c.Barrier(); !s.ok()) {
    std::fprintf(stderr, "rank %d: first barrier: %s\n", rank, s.ToString().c_str());
    return 6;
  }
  if (mode == "exit" && victim) std::_Exit(0);  // sockets closed by the kernel, nothing else
  if (mode == "hang" && victim) {
    std::this_thread::sleep_for(Ms(3000));
    std::_Exit(0);
  }
  std::this_thread::sleep_for(Ms(100));
  std::vector<float> v(4096, 1.f);
  auto t0 = Clock::now();
  absl::Status s = c.AllReduceSum(v.data(), v.size());
  const double ms = ElapsedMs(t0);
  std::fprintf(stderr, "rank %d (%s): all-reduce after the peer %s: %.0f ms: %s\n", rank,
               mode.c_str(), mode == "exit" ? "exited" : "hung", ms, s.ToString().c_str());
  if (s.ok() || ms > 2800) return 4;
  if (mode == "hang" && !absl::IsDeadlineExceeded(s) && !absl::IsUnavailable(s)) return 5;
  std::_Exit(0);  // skip destructors that might wait on the hung peer
}

struct ChildHook {
  ChildHook() {
    if (const char* spec = std::getenv("RS_PAR_CHILD")) {
      std::fflush(stdout);
      std::_Exit(ChildMain(spec));
    }
  }
} child_hook;

// Starts `size` ranks of this binary in `mode`; returns their exit codes (-1: killed after 15 s).
std::vector<int> RunProcesses(const std::string& mode, int size) {
  const std::string dir = MakeTempDir();
  EXPECT_FALSE(dir.empty());
  std::vector<pid_t> pids;
  for (int r = 0; r < size; ++r) {
    std::vector<std::string> env;
    for (char** e = ::environ; *e; ++e) env.push_back(*e);
    env.push_back(absl::StrCat("RS_PAR_CHILD=", mode, ",", r, ",", size, ",", dir));
    std::vector<char*> envp;
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    char exe[] = "/proc/self/exe";
    char* argv[] = {exe, nullptr};
    pid_t pid;
    EXPECT_EQ(posix_spawn(&pid, exe, nullptr, nullptr, argv, envp.data()), 0);
    pids.push_back(pid);
  }
  std::vector<int> codes(size, -2);
  const auto deadline = Clock::now() + std::chrono::seconds(15);
  int left = size;
  while (left > 0) {
    for (int r = 0; r < size; ++r) {
      if (codes[r] != -2) continue;
      int st = 0;
      if (waitpid(pids[r], &st, WNOHANG) == pids[r]) {
        codes[r] = WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
        --left;
      } else if (Clock::now() > deadline) {
        kill(pids[r], SIGKILL);
        waitpid(pids[r], &st, 0);
        codes[r] = -1;
        --left;
      }
    }
    std::this_thread::sleep_for(Ms(5));
  }
  std::system(("rm -rf '" + dir + "'").c_str());
  return codes;
}

TEST(GlooProcesses, AllOpsThreeProcesses) {
  EXPECT_EQ(RunProcesses("ops", 3), (std::vector<int>{0, 0, 0}));
}

TEST(GlooProcesses, AllOpsTwoProcesses) {
  EXPECT_EQ(RunProcesses("ops", 2), (std::vector<int>{0, 0}));
}

TEST(GlooProcesses, ExitedPeerFailsTheOthersWithinTimeout) {
  EXPECT_EQ(RunProcesses("exit", 3), (std::vector<int>{0, 0, 0}));
}

TEST(GlooProcesses, HungPeerFailsTheOthersWithinTimeout) {
  EXPECT_EQ(RunProcesses("hang", 3), (std::vector<int>{0, 0, 0}));
}

// --- NCCL ---

// NCCL is loaded at run time (nccl_api.h): on a build machine, where the package is installed,
// the library loads with every entry point the backend calls, and says its version.
TEST(Nccl, LibraryLoadsAtRunTime) {
#ifndef RIGSERVE_HAVE_NCCL
  GTEST_SKIP() << "built without NCCL";
#else
  std::string why;
  int version = 0;
  ASSERT_TRUE(NcclAvailable(&why, &version)) << why;
  EXPECT_GE(version, 21400) << "NCCL older than 2.14 (non-blocking communicators)";
  EXPECT_TRUE(why.empty()) << why;
#endif
}

TEST(Nccl, CreateOrSkipWithoutDevice) {
#ifndef RIGSERVE_HAVE_NCCL
  GTEST_SKIP() << "no CUDA device (built without NCCL)";
#else
  auto store = MakeMemoryKvStore();
  auto comm = CreateNcclCommunicator(0, 1, store.get(), "nccl", 0, Ms(5000));
  if (!comm.ok() && comm.status().message().find("no CUDA device") != std::string::npos) {
    EXPECT_EQ(comm.status().code(), absl::StatusCode::kUnavailable);
    GTEST_SKIP() << "no CUDA device: " << comm.status().message();
  }
  if (!comm.ok() && comm.status().message().find("NCCL is not installed") != std::string::npos) {
    EXPECT_EQ(comm.status().code(), absl::StatusCode::kUnavailable);
    GTEST_SKIP() << comm.status().message();
  }
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_STREQ((*comm)->backend(), "nccl");
  absl::Status self = NcclSelfTest(**comm);
  EXPECT_TRUE(self.ok()) << self;
  // Abort (a regroup): every later op fails at once, naming the cause; the destructor is quick.
  (*comm)->Abort();
  absl::Status after = (*comm)->Barrier();
  EXPECT_EQ(after.code(), absl::StatusCode::kFailedPrecondition) << after;
  EXPECT_NE(after.message().find("aborted"), std::string::npos) << after;
  comm->reset();
  // A peer that never joins: creation gives up within the timeout (non-blocking init + abort).
  auto t0 = Clock::now();
  auto lonely = CreateNcclCommunicator(0, 2, store.get(), "nccl-lonely", 0, Ms(1000));
  EXPECT_EQ(lonely.status().code(), absl::StatusCode::kDeadlineExceeded) << lonely.status();
  EXPECT_LT(ElapsedMs(t0), 3000);
#endif
}

}  // namespace
}  // namespace rs::par
