// CPU attention over an f16 KV cache at long context (the part of decode and prefill that grows
// with the context; the other 3 of 4 layers keep O(1) state).
//
//   BM_AttentionDecode/CTX/threads:T   one token attending to CTX cached positions, bench-moe
//                                      geometry (8 query heads, 2 KV heads, head dim 128);
//                                      counter KV_GBps: cache bytes read per second
//   BM_AttentionPrefill/CTX/threads:T  a 512-token block at the end of a CTX-token context
//                                      (what a long prompt's last sub-step does); GFLOP/s
//
// Run: build-*/bench/ops_bench [--benchmark_filter=Decode] [--benchmark_repetitions=3]
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "kernels/formats.h"
#include "kernels/ops.h"

namespace rs {
namespace {

constexpr int64_t kNh = 8, kNkv = 2, kHd = 128;

struct Cache {
  std::vector<uint16_t> k, v;
  KvView kv, vv;
  explicit Cache(int64_t ctx) : k(ctx * kNkv * kHd), v(ctx * kNkv * kHd) {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto& x : k) x = f32_to_fp16(nd(rng));
    for (auto& x : v) x = f32_to_fp16(nd(rng));
    kv = {GgmlType::F16, k.data(), kNkv, kHd, static_cast<size_t>(kNkv * kHd * 2)};
    vv = {GgmlType::F16, v.data(), kNkv, kHd, static_cast<size_t>(kNkv * kHd * 2)};
  }
};

void BM_AttentionDecode(benchmark::State& state) {
  const int64_t ctx = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  Cache c(ctx);
  std::vector<float> q(kNh * kHd), out(kNh * kHd);
  std::mt19937 rng(2);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& x : q) x = nd(rng);
  for (auto _ : state) {
    attention_cpu(q.data(), 1, kNh, kHd, c.kv, c.vv, ctx - 1, 0.088f, out.data(), threads);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["KV_GBps"] = benchmark::Counter(static_cast<double>(ctx) * kNkv * kHd * 2 * 2 / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void BM_AttentionPrefill(benchmark::State& state) {
  const int64_t ctx = state.range(0), T = 512;
  const int threads = static_cast<int>(state.range(1));
  Cache c(ctx);
  std::vector<float> q(T * kNh * kHd), out(T * kNh * kHd);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& x : q) x = nd(rng);
  for (auto _ : state) {
    attention_cpu(q.data(), T, kNh, kHd, c.kv, c.vv, ctx - T, 0.088f, out.data(), threads);
    benchmark::DoNotOptimize(out.data());
  }
  // QK and PV: 2 x 2 flops per (token, head, position, dim), causal within the block.
  const double pairs = static_cast<double>(T) * (ctx - T) + T * (T + 1) / 2.0;
  state.counters["GFLOPs"] = benchmark::Counter(pairs * kNh * kHd * 4 / 1e9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_AttentionDecode)->ArgsProduct({{2048, 16384, 65536}, {1, 2}})->ArgNames({"ctx", "threads"})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AttentionPrefill)->ArgsProduct({{2048, 16384}, {1, 2}})->ArgNames({"ctx", "threads"})
    ->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace rs

BENCHMARK_MAIN();
