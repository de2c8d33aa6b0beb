// CPU attention over an f16 KV cache at long context (the part of decode and prefill that grows
// with the context; the other 3 of 4 layers keep O(1) state).
//
//   BM_AttentionDecode/KV_MODE/CTX/threads:T   one token attending to CTX cached positions (KV
//                                      f16 or q8_0; warm: the same cache each call, cold: caches
//                                      in turn, read from memory as in the model), bench-moe
//                                      geometry (8 query heads, 2 KV heads, head dim 128);
//                                      counter KV_GBps: cache bytes read per second
//   BM_AttentionDecodeOneKvHead/CTX/threads:T   one KV head: the context split in segments
//                                      is what lets a second thread help
//   BM_AttentionPrefill/CTX/threads:T  a 512-token block at the end of a CTX-token context
//                                      (what a long prompt's last sub-step does); GFLOP/s
//
// Run: build-*/bench/ops_bench [--benchmark_filter=Decode] [--benchmark_repetitions=3]
#include <benchmark/benchmark.h>

#include <memory>
#include <random>
#include <vector>

#include "kernels/formats.h"
#include "kernels/ops.h"

namespace rs {
namespace {

constexpr int64_t kNh = 8, kNkv = 2, kHd = 128;

// A KV cache of ctx positions in `type` (F16 or Q8_0), random normal values, head-major as the
// CPU model keeps it ([head][pos][head_dim]).
struct Cache {
  std::vector<uint8_t> k, v;
  KvView kv, vv;
  Cache(int64_t ctx, GgmlType type, int64_t nkv = kNkv) {
    const size_t hr = row_bytes(type, kHd);
    k.resize(hr * nkv * ctx);
    v.resize(hr * nkv * ctx);
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> f(kHd);
    for (int64_t h = 0; h < nkv; ++h)
      for (int64_t p = 0; p < ctx; ++p)
        for (auto* buf : {&k, &v}) {
          for (auto& x : f) x = nd(rng);
          quantize_row_ref(type, f.data(), buf->data() + (h * ctx + p) * hr, kHd);
        }
    kv = {type, k.data(), nkv, kHd, hr, hr * ctx};
    vv = {type, v.data(), nkv, kHd, hr, hr * ctx};
  }
};

// cold: as many caches as make >= 96 MiB, used in turn, so that every call reads its cache
// from memory (in the model ~200 MB of weights stream through the caches between two calls on
// the same layer); warm: one cache, read again and again (in L2/L3 up to a few MB).
void BM_AttentionDecode(benchmark::State& state, GgmlType type, bool cold) {
  const int64_t ctx = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  std::vector<std::unique_ptr<Cache>> caches;
  caches.push_back(std::make_unique<Cache>(ctx, type));
  const size_t one = caches[0]->k.size() + caches[0]->v.size();
  while (cold && caches.size() * one < (size_t{96} << 20)) caches.push_back(std::make_unique<Cache>(ctx, type));
  std::vector<float> q(kNh * kHd), out(kNh * kHd);
  std::mt19937 rng(2);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& x : q) x = nd(rng);
  size_t i = 0;
  for (auto _ : state) {
    const Cache& c = *caches[i++ % caches.size()];
    attention_cpu(q.data(), 1, kNh, kHd, c.kv, c.vv, ctx - 1, 0.088f, out.data(), threads);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["KV_GBps"] = benchmark::Counter(static_cast<double>(one) / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

// One KV head (4 query heads): without splitting the context one thread would do all the work;
// the 4096-position segments let every thread read part of the cache.
void BM_AttentionDecodeOneKvHead(benchmark::State& state) {
  const int64_t ctx = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  Cache c(ctx, GgmlType::F16, 1);
  std::vector<float> q(4 * kHd), out(4 * kHd);
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& x : q) x = nd(rng);
  for (auto _ : state) {
    attention_cpu(q.data(), 1, 4, kHd, c.kv, c.vv, ctx - 1, 0.088f, out.data(), threads);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["KV_GBps"] = benchmark::Counter(static_cast<double>(c.k.size() + c.v.size()) / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void BM_AttentionPrefill(benchmark::State& state) {
  const int64_t ctx = state.range(0), T = 512;
  const int threads = static_cast<int>(state.range(1));
  Cache c(ctx, GgmlType::F16);
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

BENCHMARK_CAPTURE(BM_AttentionDecode, f16_warm, GgmlType::F16, false)
    ->ArgsProduct({{2048, 16384, 65536}, {1, 2}})->ArgNames({"ctx", "threads"})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_AttentionDecode, f16_cold, GgmlType::F16, true)
    ->ArgsProduct({{2048, 16384}, {1, 2}})->ArgNames({"ctx", "threads"})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_AttentionDecode, q8_0_cold, GgmlType::Q8_0, true)
    ->ArgsProduct({{2048, 16384}, {1, 2}})->ArgNames({"ctx", "threads"})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AttentionDecodeOneKvHead)->ArgsProduct({{16384}, {1, 2}})->ArgNames({"ctx", "threads"})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AttentionPrefill)->ArgsProduct({{2048, 16384}, {1, 2}})->ArgNames({"ctx", "threads"})
    ->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace rs

BENCHMARK_MAIN();
