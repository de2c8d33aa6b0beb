// Sampler cost per token on the Qwen3.5 vocabulary (248,320 logits), reference vs fast CPU, for
// the model-card settings and a few filter mixes. Prompt history: 4,096 tokens + 512 generated.
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include "kernels/sampler.h"

namespace rs {
namespace {

constexpr int64_t kVocab = 248320;

struct Fixture {
  std::vector<float> logits;
  std::vector<int32_t> prompt, output;
  TokenCounts counts;
  Fixture() {
    std::mt19937 gen(1);
    std::normal_distribution<float> nd(0.0f, 3.0f);
    logits.resize(kVocab);
    for (auto& x : logits) x = nd(gen);
    for (int i = 0; i < 4096; ++i) prompt.push_back(gen() % kVocab);
    for (int i = 0; i < 512; ++i) output.push_back(gen() % kVocab);
    counts.AddPrompt(prompt);
    for (int32_t t : output) counts.AddOutput(t);
  }
};

const Fixture& F() {
  static const Fixture f;
  return f;
}

SamplerParams Mode(int mode) {
  SamplerParams p;
  switch (mode) {
    case 0:  // greedy
      p.temperature = 0.0f;
      break;
    case 1:  // Qwen3.5 thinking, general: T 1.0, top_p 0.95, top_k 20, presence 1.5
      p.top_p = 0.95f;
      p.top_k = 20;
      p.presence_penalty = 1.5f;
      break;
    case 2:  // plain temperature over the whole vocabulary
      p.temperature = 0.8f;
      break;
    case 3:  // top-p only (no top-k): the partial-sort path
      p.top_p = 0.9f;
      break;
    case 4:  // min-p + repetition
      p.min_p = 0.05f;
      p.repetition_penalty = 1.1f;
      break;
  }
  p.seed = 42;
  return p;
}

void BM_SampleRef(benchmark::State& state) {
  const Fixture& f = F();
  const SamplerParams p = Mode(static_cast<int>(state.range(0)));
  uint64_t step = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(
        sample_ref(f.logits.data(), kVocab, p, f.prompt, f.output, step++).token);
}

void BM_SampleCpu(benchmark::State& state) {
  const Fixture& f = F();
  const SamplerParams p = Mode(static_cast<int>(state.range(0)));
  SamplerScratch sc;
  uint64_t step = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(sample_cpu(f.logits.data(), kVocab, p, f.counts, step++, &sc).token);
}

// 0 greedy, 1 qwen-thinking (top-k 20 + top-p 0.95 + presence), 2 temperature only,
// 3 top-p only, 4 min-p + repetition.
BENCHMARK(BM_SampleRef)->DenseRange(0, 4)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SampleCpu)->DenseRange(0, 4)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace rs

BENCHMARK_MAIN();
