// Gloo over loopback, two ranks as threads of this process: latency and bandwidth of
// send/recv (ping-pong and one-way stream), all-reduce, and the MoE dispatch/combine of one
// layer (summed, per-slot, and the old broadcast + reduce scheme), for message sizes 4 KiB ..
// 16 MiB.
//
// Measured 2026-11-27, Gloo 20220518 (Debian), on the GPU host's 16 idle x86 cores (the 2-core
// dev box under load gave 4 ms one-way latencies, scheduling-bound):
//   ping-pong one-way 4 KiB 25 us, 64 KiB 36 us, 1 MiB 295 us, 16 MiB 4.9 ms;
//   stream 4 KiB 100 MB/s, 1 MiB 4.7 GB/s, 16 MiB 4.3 GB/s;
//   all-reduce 4 KiB 133 us, 1 MiB 489 us, 16 MiB 6.3 ms (2.5 GB/s);
//   MoE layer (hidden 3072, top-8 of 128 experts on 2 ranks, 24.6 KB moved per token):
//   1 token 94 us, 8 tokens 170 us, 64 tokens 1.1 ms, 512 tokens 9.7 ms.
// Per-slot mode (ForwardDistributed's, bit-exact: one H row back per remote (token, slot)) and the
// broadcast + reduce scheme it replaced, 2026-11-27 on the 2-core dev box at load average 3.4-4
// (scheduling-bound, compare within the run only), per layer:
//   summed     64 tokens 10.7 ms, 512 tokens 30 ms; 24.6 KB per token
//   per-slot   64 tokens 20.4 ms, 512 tokens 97 ms; 62 KB per token
//   broadcast + reduce  64 tokens 16.4 ms, 512 tokens 114 ms; 110.7 KB per token (rank 0)
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

enum Op : int64_t { kStop = 0, kPingPong, kStream, kAllReduce, kMoe, kMoePerSlot, kMoeOld };
constexpr uint32_t kCmdTag = 999;

std::unique_ptr<Communicator> g_comm[2];

// The MoE layer used by both ranks: 128 experts over 2 ranks, top-8, hidden from the command.
struct MoeSetup {
  std::vector<int> expert_rank;
  std::vector<float> x, weights, out, slot_out;
  std::vector<int32_t> experts;
  void Make(size_t tokens, size_t hidden) {
    std::mt19937 rng(7);
    expert_rank.resize(128);
    for (int e = 0; e < 128; ++e) expert_rank[e] = e % 2;
    x.assign(tokens * hidden, 0.25f);
    out.resize(tokens * hidden);
    slot_out.resize(tokens * 8 * hidden);
    experts.clear();
    weights.clear();
    for (size_t t = 0; t < tokens; ++t)
      for (int j = 0; j < 8; ++j) {
        experts.push_back(static_cast<int32_t>(rng() % 128));
        weights.push_back(0.125f);
      }
  }
};

rs::par::MoeLayer MoeLayerFor(MoeSetup& m, int rank, size_t tokens, size_t hidden,
                              bool per_slot = false) {
  rs::par::MoeLayer l;
  l.per_slot = per_slot;
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
    if (per_slot) l.slot_out = m.slot_out.data();
  }
  return l;
}

// A stand-in for the experts: out = sum of weights * x (memory traffic only).
absl::Status FakeExperts(const rs::par::ExpertWork& w) {
  if (w.per_slot) {  // each local slot: weight * x
    for (size_t i = 0; i < w.num_tokens; ++i)
      for (int j = 0; j < w.top_k; ++j) {
        if (w.experts[i * w.top_k + j] < 0) continue;
        float* o = w.out + (i * w.top_k + j) * w.hidden;
        for (size_t h = 0; h < w.hidden; ++h) o[h] = w.weights[i * w.top_k + j] * w.x[i * w.hidden + h];
      }
    return absl::OkStatus();
  }
  for (size_t i = 0; i < w.num_tokens; ++i) {
    float s = 0;
    for (int j = 0; j < w.top_k; ++j) s += w.weights[i * w.top_k + j];
    for (size_t h = 0; h < w.hidden; ++h) w.out[i * w.hidden + h] = s * w.x[i * w.hidden + h];
  }
  return absl::OkStatus();
}

// The scheme ForwardDistributed used before the dispatcher (hidden 3072, top-8): the owner
// (rank 0) broadcasts the normed states and the routing to every rank, every rank sum-reduces a
// [tokens][8][hidden] slot buffer (its own slots, zeros elsewhere) to the owner.
absl::Status OldSchemeLayer(Communicator& c, size_t tokens) {
  constexpr size_t kHidden = 3072, kTopK = 8;
  thread_local std::vector<float> x, routing, slots;
  x.assign(tokens * kHidden, 0.25f);
  routing.assign(tokens * kTopK * 2, 0.f);
  slots.assign(tokens * kTopK * kHidden, 0.f);
  if (absl::Status s = c.Broadcast(x.data(), x.size() * 4, 0); !s.ok()) return s;
  if (absl::Status s = c.Broadcast(routing.data(), routing.size() * 4, 0); !s.ok()) return s;
  for (size_t i = c.rank(); i < tokens * kTopK; i += 2)  // this rank's half of the slots
    for (size_t h = 0; h < kHidden; ++h) slots[i * kHidden + h] = 0.125f * x[(i / kTopK) * kHidden + h];
  return c.ReduceSum(slots.data(), slots.size(), 0);
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
        case kMoe:
        case kMoePerSlot: {
          if (i == 0) moe.Make(0, bytes);
          s = moe_d.Run(MoeLayerFor(moe, 1, 0, bytes, cmd[0] == kMoePerSlot), FakeExperts);
          break;
        }
        case kMoeOld:  // bytes = tokens here
          s = OldSchemeLayer(c, bytes);
          break;
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

// One MoE layer: `tokens` tokens of hidden 3072 (122B-A10B), top-8 of 128 experts split evenly;
// summed (per-rank partial sums) or per-slot (what ForwardDistributed uses: bit-exact).
void MoeLayer(benchmark::State& state, bool per_slot) {
  const size_t tokens = state.range(0);
  const size_t hidden = 3072;
  // The peer's command carries the hidden size; the token count only matters on the owner.
  if (!Command(state, per_slot ? kMoePerSlot : kMoe, hidden)) return;
  MoeSetup m;
  m.Make(tokens, hidden);
  rs::par::MoeDispatcher d(g_comm[0].get());
  for (auto _ : state) {
    absl::Status s = d.Run(MoeLayerFor(m, 0, tokens, hidden, per_slot), FakeExperts);
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
void BM_MoeLayer(benchmark::State& state) { MoeLayer(state, false); }
void BM_MoeLayerPerSlot(benchmark::State& state) { MoeLayer(state, true); }

// The same layer the old way (broadcast + reduce of the whole slot buffer), for comparison.
void BM_MoeLayerBroadcastReduce(benchmark::State& state) {
  const size_t tokens = state.range(0);
  if (!Command(state, kMoeOld, tokens)) return;
  for (auto _ : state) {
    absl::Status s = OldSchemeLayer(*g_comm[0], tokens);
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      break;
    }
  }
  // Payload per token on rank 0: x + routing out, the slot buffer in.
  state.counters["bytes_per_token"] = 3072 * 4 + 8 * 8 + 8 * 3072 * 4;
}

BENCHMARK(BM_PingPong)->RangeMultiplier(4)->Range(4 << 10, 16 << 20)->UseRealTime();
BENCHMARK(BM_Stream)->RangeMultiplier(4)->Range(4 << 10, 16 << 20)->UseRealTime();
BENCHMARK(BM_AllReduce)->RangeMultiplier(4)->Range(4 << 10, 16 << 20)->UseRealTime();
BENCHMARK(BM_MoeLayer)->Arg(1)->Arg(8)->Arg(64)->Arg(512)->UseRealTime();
BENCHMARK(BM_MoeLayerPerSlot)->Arg(1)->Arg(8)->Arg(64)->Arg(512)->UseRealTime();
BENCHMARK(BM_MoeLayerBroadcastReduce)->Arg(1)->Arg(8)->Arg(64)->Arg(512)->UseRealTime();

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
