// Gloo over loopback, two ranks as threads of this process: latency and bandwidth of
// send/recv (ping-pong and one-way stream), all-reduce, and the MoE dispatch/combine of one
// layer, for message sizes 4 KiB .. 16 MiB.
//
// Measured 2026-11-27, Gloo 20220518 (Debian), on the GPU host's 16 idle x86 cores (the 2-core
// dev box under load gave 4 ms one-way latencies, scheduling-bound):
//   ping-pong one-way 4 KiB 25 us, 64 KiB 36 us, 1 MiB 295 us, 16 MiB 4.9 ms;
//   stream 4 KiB 100 MB/s, 1 MiB 4.7 GB/s, 16 MiB 4.3 GB/s;
//   all-reduce 4 KiB 133 us, 1 MiB 489 us, 16 MiB 6.3 ms (2.5 GB/s);
//   MoE layer (hidden 3072, top-8 of 128 experts on 2 ranks, 24.6 KB moved per token):
//   1 token 94 us, 8 tokens 170 us, 64 tokens 1.1 ms, 512 tokens 9.7 ms.
//
// Rank 0 runs the benchmark loop; rank 1 is a helper thread that receives a command
// (op, bytes, iterations) over the communicator before each run and mirrors it.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/moe_dispatch.h"

namespace {

using rs::par::Communicator;

enum Op : int64_t { kStop = 0, kPingPong, kStream, kAllReduce, kMoe };
constexpr uint32_t kCmdTag = 999;

std::unique_ptr<Communicator> g_comm[2];

// The MoE layer used by both ranks: 128 experts over 2 ranks, top-8, hidden from the command.
struct MoeSetup {
  std::vector<int> expert_rank;
  std::vector<float> x, weights, out;
  std::vector<int32_t> experts;
  void Make(size_t tokens, size_t hidden) {
    std::mt19937 rng(7);
    expert_rank.resize(128);
    for (int e = 0; e < 128; ++e) expert_rank[e] = e % 2;
    x.assign(tokens * hidden, 0.25f);
    out.resize(tokens * hidden);
    experts.clear();
    weights.clear();
    for (size_t t = 0; t < tokens; ++t)
      for (int j = 0; j < 8; ++j) {
        experts.push_back(static_cast<int32_t>(rng() % 128));
        weights.push_back(0.125f);
      }
  }
};

rs::par::MoeLayer MoeLayerFor(MoeSetup& m, int rank, size_t tokens, size_t hidden) {
  rs::par::MoeLayer l;
  l.owner = 0;
  l.hidden = hidden;
  l.top_k = 8;
  l.expert_rank = &m.expert_rank;
  if (rank == 0) {
    l.num_tokens = tokens;
    l.x = m.x.data();
    l.experts = m.experts.data();
    l.weights = m.weights.data();
    l.out = m.out.data();
  }
  return l;
}

// A stand-in for the experts: out = sum of weights * x (memory traffic only).
absl::Status FakeExperts(const rs::par::ExpertWork& w) {
  for (size_t i = 0; i < w.num_tokens; ++i) {
    float s = 0;
    for (int j = 0; j < w.top_k; ++j) s += w.weights[i * w.top_k + j];
    for (size_t h = 0; h < w.hidden; ++h) w.out[i * w.hidden + h] = s * w.x[i * w.hidden + h];
  }
  return absl::OkStatus();
}

void Peer() {
  Communicator& c = *g_comm[1];
  std::vector<char> buf;
  MoeSetup moe;
  for (;;) {
    int64_t cmd[3];
    if (!c.Recv(0, cmd, sizeof(cmd), kCmdTag).ok() || cmd[0] == kStop) return;
    const size_t bytes = static_cast<size_t>(cmd[1]);
    buf.resize(bytes);
    rs::par::MoeDispatcher moe_d(&c);
    for (int64_t i = 0; i < cmd[2]; ++i) {
      absl::Status s;
      switch (cmd[0]) {
        case kPingPong:
          s = c.Recv(0, buf.data(), bytes, 1);
          if (s.ok()) s = c.Send(0, buf.data(), bytes, 2);
          break;
        case kStream:
          s = c.Recv(0, buf.data(), bytes, 1);
          break;
        case kAllReduce:
          s = c.AllReduceSum(reinterpret_cast<float*>(buf.data()), bytes / 4);
          break;
        case kMoe: {
          if (i == 0) moe.Make(0, bytes);
          s = moe_d.Run(MoeLayerFor(moe, 1, 0, bytes), FakeExperts);
          break;
        }
      }
      if (!s.ok()) {
        std::fprintf(stderr, "peer: %s\n", s.ToString().c_str());
        return;
      }
    }
  }
}

bool Command(benchmark::State& state, Op op, size_t bytes) {
  int64_t cmd[3] = {op, static_cast<int64_t>(bytes), static_cast<int64_t>(state.max_iterations)};
  absl::Status s = g_comm[0]->Send(1, cmd, sizeof(cmd), kCmdTag);
  if (!s.ok()) state.SkipWithError(s.ToString().c_str());
  return s.ok();
}

void BM_PingPong(benchmark::State& state) {
  const size_t bytes = state.range(0);
  std::vector<char> a(bytes, 1), b(bytes);
  if (!Command(state, kPingPong, bytes)) return;
  for (auto _ : state) {
    if (!g_comm[0]->Send(1, a.data(), bytes, 1).ok() || !g_comm[0]->Recv(1, b.data(), bytes, 2).ok()) {
      state.SkipWithError("ping-pong failed");
      break;
    }
  }
  state.SetBytesProcessed(2 * bytes * state.iterations());
  // seconds / (2e-6 * iterations) = microseconds per one-way message.
  state.counters["one_way_us"] = benchmark::Counter(
      2e-6 * state.iterations(), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_Stream(benchmark::State& state) {
  const size_t bytes = state.range(0);
  std::vector<char> a(bytes, 1);
  if (!Command(state, kStream, bytes)) return;
  for (auto _ : state) {
    if (!g_comm[0]->Send(1, a.data(), bytes, 1).ok()) {
      state.SkipWithError("send failed");
      break;
    }
  }
  // Gloo moves a message once the receiver has posted its receive, so this is the rate of
  // back-to-back messages, each one handed to the kernel whole.
  state.SetBytesProcessed(bytes * state.iterations());
}

void BM_AllReduce(benchmark::State& state) {
  const size_t bytes = state.range(0);
  std::vector<float> a(bytes / 4, 1.f);
  if (!Command(state, kAllReduce, bytes)) return;
  for (auto _ : state) {
    if (!g_comm[0]->AllReduceSum(a.data(), a.size()).ok()) {
      state.SkipWithError("all-reduce failed");
      break;
    }
  }
  state.SetBytesProcessed(bytes * state.iterations());
}

// One MoE layer: `tokens` tokens of hidden 3072 (122B-A10B), top-8 of 128 experts split evenly.
void BM_MoeLayer(benchmark::State& state) {
  const size_t tokens = state.range(0);
  const size_t hidden = 3072;
  // The peer's command carries the hidden size; the token count only matters on the owner.
  if (!Command(state, kMoe, hidden)) return;
  MoeSetup m;
  m.Make(tokens, hidden);
  rs::par::MoeDispatcher d(g_comm[0].get());
  for (auto _ : state) {
    absl::Status s = d.Run(MoeLayerFor(m, 0, tokens, hidden), FakeExperts);
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      break;
    }
  }
  const auto& st = d.stats();
  state.counters["bytes_per_token"] =
      static_cast<double>(st.bytes_sent + st.bytes_received) / (st.calls * std::max<size_t>(tokens, 1));
  state.counters["comm_frac"] =
      st.comm_seconds / std::max(1e-9, st.comm_seconds + st.compute_seconds);
}

BENCHMARK(BM_PingPong)->RangeMultiplier(4)->Range(4 << 10, 16 << 20)->UseRealTime();
BENCHMARK(BM_Stream)->RangeMultiplier(4)->Range(4 << 10, 16 << 20)->UseRealTime();
BENCHMARK(BM_AllReduce)->RangeMultiplier(4)->Range(4 << 10, 16 << 20)->UseRealTime();
BENCHMARK(BM_MoeLayer)->Arg(1)->Arg(8)->Arg(64)->Arg(512)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  auto store = rs::par::MakeMemoryKvStore();
  std::thread connect1([&] {
    auto c = rs::par::CreateGlooCommunicator(1, 2, store.get(), "bench", "127.0.0.1",
                                             std::chrono::seconds(60));
    if (c.ok()) g_comm[1] = *std::move(c);
    else std::fprintf(stderr, "rank 1: %s\n", c.status().ToString().c_str());
  });
  auto c0 = rs::par::CreateGlooCommunicator(0, 2, store.get(), "bench", "127.0.0.1",
                                            std::chrono::seconds(60));
  connect1.join();
  if (!c0.ok() || !g_comm[1]) {
    std::fprintf(stderr, "rank 0: %s\n", c0.status().ToString().c_str());
    return 1;
  }
  g_comm[0] = *std::move(c0);
  std::thread peer(Peer);
  benchmark::RunSpecifiedBenchmarks();
  int64_t stop[3] = {kStop, 0, 0};
  (void)g_comm[0]->Send(1, stop, sizeof(stop), kCmdTag);
  peer.join();
  benchmark::Shutdown();
  return 0;
}
