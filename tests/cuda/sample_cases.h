// Sampling cases shared by the GPU sampler's host-emulation test and its device test: random
// logits rows (some -inf, some with many exact ties) with parameter sets that exercise each step
// of the pipeline, and the reference's token for each.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/sampler.h"

namespace rs::testing_sample {

struct Case {
  std::string name;
  int64_t vocab = 0;
  std::vector<float> logits;
  SamplerParams params;
  std::vector<int32_t> prompt, output;
  TokenCounts counts;
  uint64_t step = 0;
};

// `n` cases over vocabulary size V. tie_heavy: logits on a 0.25 grid (many exact ties).
inline std::vector<Case> make_cases(int64_t V, int n, uint32_t seed, bool tie_heavy) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
  const float temps[] = {0.0f, 0.6f, 1.0f, 1.7f};
  const int32_t ks[] = {0, 1, 3, 40, static_cast<int32_t>(V) + 5};
  const float ps[] = {1.0f, 0.95f, 0.5f, 0.05f};
  const float mps[] = {0.0f, 0.0f, 0.02f, 0.3f};
  std::vector<Case> out;
  for (int i = 0; i < n; ++i) {
    Case c;
    c.vocab = V;
    c.logits.resize(V);
    for (auto& v : c.logits) {
      v = nd(rng);
      if (tie_heavy) v = std::round(v * 4.0f) / 4.0f;
    }
    // a few masked ids (the vocabulary's unused ids are -inf by then)
    for (int m = 0; m < 3 && V > 4; ++m) c.logits[tok(rng)] = -std::numeric_limits<float>::infinity();
    SamplerParams& p = c.params;
    p.temperature = temps[i % 4];
    p.top_k = ks[(i / 4) % 5];
    p.top_p = ps[(i / 3) % 4];
    p.min_p = mps[(i / 5) % 4];
    if (i % 3 == 1) {
      p.presence_penalty = 1.5f * ud(rng) - 0.5f;
      p.frequency_penalty = 1.0f * ud(rng) - 0.3f;
      p.repetition_penalty = 0.7f + ud(rng);
    }
    if (i % 4 == 2) {
      for (int b = 0; b < 5 && b < V; ++b) {
        const int32_t t = static_cast<int32_t>((static_cast<int64_t>(b) * 7919 + i) % V);
        bool dup = false;
        for (const auto& e : p.logit_bias) dup |= e.token == t;
        if (!dup) p.logit_bias.push_back({t, 6.0f * ud(rng) - 3.0f});
      }
    }
    p.seed = rng();
    const int n_prompt = static_cast<int>(std::min<int64_t>(V, 30));
    for (int j = 0; j < n_prompt; ++j) c.prompt.push_back(tok(rng));
    for (int j = 0; j < 12; ++j) c.output.push_back(tok(rng));
    if (i % 3 == 1) {
      // Penalised cases: the output repeats the row's best tokens, so the penalties decide.
      std::vector<int32_t> idx(V);
      for (int64_t t = 0; t < V; ++t) idx[t] = static_cast<int32_t>(t);
      const int64_t top = std::min<int64_t>(V, 4);
      std::partial_sort(idx.begin(), idx.begin() + top, idx.end(),
                        [&](int32_t a, int32_t b) { return c.logits[a] > c.logits[b]; });
      for (int64_t j = 0; j < top; ++j)
        for (int64_t r = 0; r <= j; ++r) c.output.push_back(idx[j]);
      p.presence_penalty = 1.8f * ud(rng) - 0.3f;
      p.frequency_penalty = 1.0f * ud(rng);
    }
    c.counts.AddPrompt(c.prompt);
    for (int32_t t : c.output) c.counts.AddOutput(t);
    c.step = static_cast<uint64_t>(c.output.size()) + static_cast<uint64_t>(i);
    c.name = "V" + std::to_string(V) + (tie_heavy ? "_ties" : "") + "_" + std::to_string(i);
    out.push_back(std::move(c));
  }
  return out;
}

inline int32_t reference_token(const Case& c) {
  return sample_ref(c.logits.data(), c.vocab, c.params, c.prompt, c.output, c.step).token;
}

}  // namespace rs::testing_sample
