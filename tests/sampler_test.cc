// Sampler: every penalty and filter against a direct computation in this file, greedy ties, seed
// reproducibility, distributions of many seeded draws (chi-square), and the fast CPU sampler
// against the reference (same token, same logprobs) on random inputs.
#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/sampler.h"

namespace rs {
namespace {

std::vector<float> RandomLogits(int64_t vocab, uint32_t seed, float scale = 4.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(vocab);
  for (auto& x : v) x = nd(gen);
  return v;
}

// Direct softmax of v / T over the ids in `keep` (all if empty), in double.
std::map<int32_t, double> Softmax(const std::vector<float>& v, double T,
                                  const std::set<int32_t>& keep) {
  std::map<int32_t, double> out;
  double m = -1e300, z = 0;
  for (int32_t t = 0; t < static_cast<int32_t>(v.size()); ++t)
    if (keep.empty() || keep.count(t)) m = std::max(m, v[t] / T);
  for (int32_t t = 0; t < static_cast<int32_t>(v.size()); ++t)
    if (keep.empty() || keep.count(t)) z += std::exp(v[t] / T - m);
  for (int32_t t = 0; t < static_cast<int32_t>(v.size()); ++t)
    if (keep.empty() || keep.count(t)) out[t] = std::exp(v[t] / T - m) / z;
  return out;
}

// Greedy with processed logprobs over the whole vocabulary exposes the penalised logits x up to
// a constant: logprob[t] - logprob[0] = x[t] - x[0]. Used to check the fast sampler's penalties.
std::vector<double> PenalisedViaLogprobs(const std::vector<float>& logits, SamplerParams p,
                                         const TokenCounts& counts) {
  p.temperature = 0.0f;
  p.top_logprobs = static_cast<int32_t>(logits.size());
  p.logprobs_mode = LogprobsMode::kProcessed;
  SamplerScratch sc;
  SampleResult r = sample_cpu(logits.data(), logits.size(), p, counts, 0, &sc);
  std::vector<double> lp(logits.size());
  for (const TokenLogprob& e : r.top) lp[e.token] = e.logprob;
  return lp;
}

TEST(SamplerPenalties, RepetitionOverPromptAndOutput) {
  std::vector<float> logits = {2.0f, -2.0f, 3.0f, -1.5f, 0.5f, 0.0f, 4.0f};
  const std::vector<int32_t> prompt = {0, 1, 1};
  const std::vector<int32_t> output = {3, 4, 4};
  SamplerParams p;
  p.repetition_penalty = 1.3f;
  std::vector<float> x = logits;
  apply_bias_and_penalties_ref(x.data(), x.size(), p, prompt, output);
  const std::set<int32_t> seen = {0, 1, 3, 4};
  for (int32_t t = 0; t < 7; ++t) {
    float want = logits[t];
    if (seen.count(t)) want = want > 0 ? want / 1.3f : want * 1.3f;
    EXPECT_EQ(x[t], want) << "token " << t;
  }
  EXPECT_FLOAT_EQ(x[0], 2.0f / 1.3f);
  EXPECT_FLOAT_EQ(x[1], -2.0f * 1.3f);
  EXPECT_EQ(x[5], 0.0f);  // unseen
  // Fast path: same penalised logits (as log-probability differences).
  TokenCounts counts;
  counts.AddPrompt(prompt);
  for (int32_t t : output) counts.AddOutput(t);
  std::vector<double> lp = PenalisedViaLogprobs(logits, p, counts);
  for (int32_t t = 1; t < 7; ++t) EXPECT_NEAR(lp[t] - lp[0], x[t] - x[0], 1e-5) << t;
}

TEST(SamplerPenalties, PresenceSubtractsOncePerOutputToken) {
  std::vector<float> logits = {1.0f, 1.0f, 1.0f, 1.0f, -3.0f};
  const std::vector<int32_t> prompt = {0};            // prompt tokens are not penalised
  const std::vector<int32_t> output = {1, 1, 1, 2, 4};
  SamplerParams p;
  p.presence_penalty = 1.5f;
  std::vector<float> x = logits;
  apply_bias_and_penalties_ref(x.data(), x.size(), p, prompt, output);
  EXPECT_EQ(x[0], 1.0f);
  EXPECT_EQ(x[1], 1.0f - 1.5f);  // once, although it appeared three times
  EXPECT_EQ(x[2], 1.0f - 1.5f);
  EXPECT_EQ(x[3], 1.0f);
  EXPECT_EQ(x[4], -3.0f - 1.5f);
  TokenCounts counts;
  counts.AddPrompt(prompt);
  for (int32_t t : output) counts.AddOutput(t);
  std::vector<double> lp = PenalisedViaLogprobs(logits, p, counts);
  for (int32_t t = 1; t < 5; ++t) EXPECT_NEAR(lp[t] - lp[0], x[t] - x[0], 1e-5) << t;
}

TEST(SamplerPenalties, FrequencySubtractsPerOccurrence) {
  std::vector<float> logits = {0.5f, 0.5f, 0.5f, 0.5f};
  const std::vector<int32_t> prompt = {3, 3, 3};
  const std::vector<int32_t> output = {1, 2, 2, 2, 2};
  SamplerParams p;
  p.frequency_penalty = 0.25f;
  std::vector<float> x = logits;
  apply_bias_and_penalties_ref(x.data(), x.size(), p, prompt, output);
  EXPECT_EQ(x[0], 0.5f);
  EXPECT_EQ(x[1], 0.5f - 0.25f * 1);
  EXPECT_EQ(x[2], 0.5f - 0.25f * 4);
  EXPECT_EQ(x[3], 0.5f);  // prompt only
  TokenCounts counts;
  counts.AddPrompt(prompt);
  for (int32_t t : output) counts.AddOutput(t);
  std::vector<double> lp = PenalisedViaLogprobs(logits, p, counts);
  for (int32_t t = 1; t < 4; ++t) EXPECT_NEAR(lp[t] - lp[0], x[t] - x[0], 1e-6) << t;
}

TEST(SamplerPenalties, BiasThenRepetitionThenFrequencyThenPresence) {
  // Token 1: logit -1, bias +3 -> 2 (positive, so repetition divides), then -fp*2, then -pp.
  std::vector<float> logits = {0.0f, -1.0f, 5.0f};
  SamplerParams p;
  p.logit_bias = {{1, 3.0f}, {2, -100.0f}};
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  const std::vector<int32_t> output = {1, 1};
  std::vector<float> x = logits;
  apply_bias_and_penalties_ref(x.data(), x.size(), p, {}, output);
  EXPECT_EQ(x[0], 0.0f);
  EXPECT_EQ(x[1], (-1.0f + 3.0f) / 2.0f - 0.5f * 2 - 0.25f);
  EXPECT_EQ(x[2], 5.0f - 100.0f);
  // Greedy follows the bias: token 2 had the largest logit but is now the smallest.
  p.temperature = 0.0f;
  SampleResult r = sample_ref(logits.data(), 3, p, {}, output, 0);
  EXPECT_EQ(r.token, 0);
}

TEST(SamplerGreedy, TiesGoToLowestIdAndIgnoreSeed) {
  std::vector<float> logits = {1.0f, 7.0f, 3.0f, 7.0f, 7.0f};
  SamplerParams p;
  p.temperature = 0.0f;
  TokenCounts none;
  SamplerScratch sc;
  for (uint64_t seed : {0ull, 1ull, 99ull}) {
    p.seed = seed;
    EXPECT_EQ(sample_ref(logits.data(), 5, p, {}, {}, seed).token, 1);
    EXPECT_EQ(sample_cpu(logits.data(), 5, p, none, seed, &sc).token, 1);
  }
  // top-k / top-p / min-p do not change the argmax.
  p.top_k = 1;
  p.top_p = 0.1f;
  p.min_p = 0.9f;
  EXPECT_EQ(sample_ref(logits.data(), 5, p, {}, {}, 0).token, 1);
}

TEST(SamplerFilters, TopKKeepsKLargestAndBoundaryTies) {
  std::vector<float> logits = {0.0f, 5.0f, 1.0f, 4.0f, 2.0f, 4.0f, -1.0f};
  SamplerParams p;
  p.top_k = 2;
  Distribution d = sampling_distribution_ref(logits.data(), logits.size(), p);
  EXPECT_EQ(d.ids, (std::vector<int32_t>{1, 3, 5}));  // k=2 but 3 and 5 tie at the boundary
  p.top_k = 4;
  d = sampling_distribution_ref(logits.data(), logits.size(), p);
  EXPECT_EQ(d.ids, (std::vector<int32_t>{1, 3, 4, 5}));
  auto sm = Softmax(logits, 1.0, {1, 3, 4, 5});
  for (size_t i = 0; i < d.ids.size(); ++i) EXPECT_NEAR(d.probs[i], sm[d.ids[i]], 1e-12);
  p.top_k = 100;  // larger than the vocabulary: everything
  EXPECT_EQ(sampling_distribution_ref(logits.data(), logits.size(), p).ids.size(), 7u);
}

TEST(SamplerFilters, TopPKeepsSmallestPrefixReachingP) {
  // probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 (logits = log p)
  std::vector<float> logits = {std::log(0.125f), std::log(0.5f), std::log(0.0625f),
                               std::log(0.25f), std::log(0.0625f)};
  SamplerParams p;
  auto ids = [&](float top_p) {
    p.top_p = top_p;
    return sampling_distribution_ref(logits.data(), logits.size(), p).ids;
  };
  EXPECT_EQ(ids(0.3f), (std::vector<int32_t>{1}));
  EXPECT_EQ(ids(0.5f), (std::vector<int32_t>{1}));      // 0.5 reached by the first token
  EXPECT_EQ(ids(0.6f), (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(ids(0.8f), (std::vector<int32_t>{0, 1, 3}));
  EXPECT_EQ(ids(0.9f), (std::vector<int32_t>{0, 1, 2, 3}));  // tie 2/4: lower id first
  EXPECT_EQ(ids(0.01f), (std::vector<int32_t>{1}));     // never empty
  EXPECT_EQ(ids(1.0f).size(), 5u);
  p.top_p = 0.8f;
  Distribution d = sampling_distribution_ref(logits.data(), logits.size(), p);
  EXPECT_NEAR(d.probs[0], 0.125 / 0.875, 1e-7);  // renormalised over the kept set
  EXPECT_NEAR(d.probs[1], 0.5 / 0.875, 1e-7);
}

TEST(SamplerFilters, MinPKeepsTokensAboveFractionOfMax) {
  // After T = 2: probabilities relative to the max are exp((l - lmax) / 2).
  std::vector<float> logits = {0.0f, -1.0f, -2.0f, -4.0f, -6.0f, -3.0f};
  SamplerParams p;
  p.temperature = 2.0f;
  p.min_p = 0.3f;  // keep exp(d/2) >= 0.3  <=>  d >= 2 ln 0.3 = -2.408
  Distribution d = sampling_distribution_ref(logits.data(), logits.size(), p);
  EXPECT_EQ(d.ids, (std::vector<int32_t>{0, 1, 2}));
  auto sm = Softmax(logits, 2.0, {0, 1, 2});
  for (size_t i = 0; i < d.ids.size(); ++i) EXPECT_NEAR(d.probs[i], sm[d.ids[i]], 1e-12);
  p.min_p = 1.0f;
  EXPECT_EQ(sampling_distribution_ref(logits.data(), logits.size(), p).ids,
            (std::vector<int32_t>{0}));
}

TEST(SamplerFilters, OrderIsMinPThenTopKThenTopP) {
  // min-p first removes 3 tokens, so top-k = 3 then sees only {0,1,2}; top-p over the renormalised
  // top-k set.
  std::vector<float> logits = {3.0f, 2.9f, 1.0f, -5.0f, -5.1f, -6.0f};
  SamplerParams p;
  p.min_p = 0.05f;  // exp(-5-3) << 0.05: tokens 3,4,5 go; exp(1-3)=0.135 stays
  p.top_k = 5;
  Distribution d = sampling_distribution_ref(logits.data(), logits.size(), p);
  EXPECT_EQ(d.ids, (std::vector<int32_t>{0, 1, 2}));
  p.top_p = 0.9f;  // over {0,1,2}: 0.47, 0.43, 0.06 -> mass before 2 is 0.90.. >= 0.9
  auto sm = Softmax(logits, 1.0, {0, 1, 2});
  ASSERT_GT(sm[0] + sm[1], 0.9);
  d = sampling_distribution_ref(logits.data(), logits.size(), p);
  EXPECT_EQ(d.ids, (std::vector<int32_t>{0, 1}));
}

TEST(SamplerSeed, SameSeedSameTokensDifferentSeedDifferent) {
  std::vector<float> logits = RandomLogits(1000, 7, 1.0f);
  SamplerParams p;
  p.temperature = 1.0f;
  auto run = [&](uint64_t seed) {
    p.seed = seed;
    std::vector<int32_t> out;
    for (uint64_t step = 0; step < 50; ++step)
      out.push_back(sample_ref(logits.data(), logits.size(), p, {}, {}, step).token);
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
  const double u = philox_uniform(42, 0);
  EXPECT_EQ(u, philox_uniform(42, 0));
  EXPECT_NE(u, philox_uniform(42, 1));
  EXPECT_NE(u, philox_uniform(43, 0));
}

TEST(SamplerSeed, PhiloxUniformMoments) {
  double sum = 0, sum2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double u = philox_uniform(12345, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    sum2 += u * u;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);             // sd of the mean: 0.00065
  EXPECT_NEAR(sum2 / n - 0.25, 1.0 / 12, 0.003);
}

// Chi-square critical value at significance 0.001 (Wilson-Hilferty).
double ChiSquareCritical(int df) {
  const double z = 3.0902, a = 2.0 / (9.0 * df);
  return df * std::pow(1 - a + z * std::sqrt(a), 3);
}

// Draws n tokens (steps 0..n-1) with the fast sampler, checks the reference agrees (on every
// step for small vocabularies, the first 1000 otherwise, to keep the test fast), and that the
// counts fit `expected` (nothing outside it) by a chi-square test.
void CheckDistribution(const std::vector<float>& logits, const SamplerParams& p,
                       const std::map<int32_t, double>& expected, int n) {
  std::map<int32_t, int> count;
  TokenCounts none;
  SamplerScratch sc;
  for (int i = 0; i < n; ++i) {
    const int32_t t = sample_cpu(logits.data(), logits.size(), p, none, i, &sc).token;
    if (logits.size() <= 1000 || i < 1000)
      ASSERT_EQ(t, sample_ref(logits.data(), logits.size(), p, {}, {}, i).token) << "step " << i;
    ASSERT_TRUE(expected.count(t)) << "token " << t << " drawn but filtered out";
    ++count[t];
  }
  double chi2 = 0;
  for (auto [t, prob] : expected) {
    const double e = prob * n;
    const double o = count[t];
    chi2 += (o - e) * (o - e) / e;
  }
  const int df = static_cast<int>(expected.size()) - 1;
  EXPECT_LT(chi2, ChiSquareCritical(df)) << "df " << df;
}

TEST(SamplerStatistics, PlainTemperature) {
  std::vector<float> logits = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, 1.2f, -1.0f, 0.8f};
  SamplerParams p;
  p.temperature = 0.7f;
  p.seed = 2024;
  CheckDistribution(logits, p, Softmax(logits, 0.7, {}), 40000);
}

TEST(SamplerStatistics, TopK) {
  std::vector<float> logits = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, 1.2f, -1.0f, 0.8f};
  SamplerParams p;
  p.top_k = 3;
  p.temperature = 1.5f;
  p.seed = 7;
  CheckDistribution(logits, p, Softmax(logits, 1.5, {0, 3, 5}), 30000);
}

TEST(SamplerStatistics, TopP) {
  std::vector<float> logits = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, 1.2f, -1.0f, 0.8f};
  SamplerParams p;
  p.top_p = 0.7f;
  p.seed = 99;
  // Sorted: 3 (0.33), 5 (0.15), 0 (0.12), 7 (0.10), 1 (0.07) ... cumulative 0.33, 0.48, 0.60, 0.70+
  auto full = Softmax(logits, 1.0, {});
  ASSERT_LT(full[3] + full[5] + full[0], 0.7);
  ASSERT_GE(full[3] + full[5] + full[0] + full[7], 0.7);
  CheckDistribution(logits, p, Softmax(logits, 1.0, {3, 5, 0, 7}), 30000);
}

TEST(SamplerStatistics, MinP) {
  std::vector<float> logits = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, 1.2f, -1.0f, 0.8f};
  SamplerParams p;
  p.min_p = 0.25f;  // keep l >= 2 + ln 0.25 = 0.614
  p.seed = 5;
  CheckDistribution(logits, p, Softmax(logits, 1.0, {0, 3, 5, 7}), 30000);
}

TEST(SamplerStatistics, QwenThinkingDefaults) {
  // temperature 1.0, top_p 0.95, top_k 20, presence 1.5 on a 5000-token vocabulary.
  std::vector<float> logits = RandomLogits(5000, 3, 2.0f);
  SamplerParams p;
  p.top_k = 20;
  p.top_p = 0.95f;
  p.seed = 11;
  Distribution d = sampling_distribution_ref(logits.data(), logits.size(), p);
  // Direct: the 20 largest logits, then the smallest prefix reaching 0.95.
  std::vector<int32_t> ids(logits.size());
  for (int32_t i = 0; i < 5000; ++i) ids[i] = i;
  std::sort(ids.begin(), ids.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  std::set<int32_t> top20(ids.begin(), ids.begin() + 20);
  auto sm = Softmax(logits, 1.0, top20);
  std::set<int32_t> keep;
  double mass = 0;
  for (int i = 0; i < 20 && mass < 0.95; ++i) {
    keep.insert(ids[i]);
    mass += sm[ids[i]];
  }
  EXPECT_EQ(std::set<int32_t>(d.ids.begin(), d.ids.end()), keep);
  CheckDistribution(logits, p, Softmax(logits, 1.0, keep), 20000);
}

// ---- fast vs reference -----------------------------------------------------------------------
TEST(SamplerFastVsRef, SameTokensAndLogprobsOnRandomInputs) {
  std::mt19937 gen(1234);
  int checked = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t vocab = (trial % 3 == 0) ? 30 : (trial % 3 == 1 ? 777 : 6000);
    std::vector<float> logits = RandomLogits(vocab, trial, 1.0f + trial % 5);
    if (trial % 4 == 0)  // coarse values: many exact ties
      for (auto& x : logits) x = std::round(x * 2) / 2;
    SamplerParams p;
    std::uniform_real_distribution<float> ur(0, 1);
    p.temperature = (trial % 7 == 0) ? 0.0f : 0.2f + 1.5f * ur(gen);
    p.top_k = (trial % 2) ? static_cast<int32_t>(1 + gen() % 50) : 0;
    p.top_p = (trial % 3 != 2) ? 0.5f + 0.5f * ur(gen) : 1.0f;
    p.min_p = (trial % 5 == 1) ? 0.05f * ur(gen) : 0.0f;
    p.repetition_penalty = (trial % 2) ? 1.0f + ur(gen) : 1.0f;
    p.presence_penalty = (trial % 3 == 0) ? 1.5f : 0.0f;
    p.frequency_penalty = (trial % 4 == 1) ? 0.7f : 0.0f;
    p.logit_bias = {{static_cast<int32_t>(gen() % vocab), 2.5f}};
    p.seed = gen();
    p.top_logprobs = trial % 3 == 0 ? 5 : (trial % 3 == 1 ? 0 : -1);
    p.logprobs_mode = trial % 2 ? LogprobsMode::kProcessed : LogprobsMode::kRaw;
    ASSERT_EQ(validate_sampler_params(p, vocab), "");
    std::vector<int32_t> prompt, output;
    for (int i = 0; i < 40; ++i) prompt.push_back(gen() % vocab);
    TokenCounts counts;
    counts.AddPrompt(prompt);
    SamplerScratch sc;
    for (uint64_t step = 0; step < 40; ++step) {
      SampleResult a = sample_ref(logits.data(), vocab, p, prompt, output, step);
      SampleResult b = sample_cpu(logits.data(), vocab, p, counts, step, &sc);
      ASSERT_EQ(a.token, b.token) << "trial " << trial << " step " << step;
      if (p.top_logprobs >= 0) {
        ASSERT_EQ(a.logprob, b.logprob) << "trial " << trial;
        ASSERT_EQ(a.top.size(), b.top.size());
        for (size_t i = 0; i < a.top.size(); ++i) {
          ASSERT_EQ(a.top[i].token, b.top[i].token) << "trial " << trial << " rank " << i;
          ASSERT_EQ(a.top[i].logprob, b.top[i].logprob);
        }
      }
      output.push_back(a.token);
      counts.AddOutput(a.token);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 60 * 40);
}

TEST(SamplerFastVsRef, FullQwenVocabularyTopPOnly) {
  // 248,320 tokens, flat-ish distribution, top-p 0.9 without top-k: the fast path must grow its
  // partial sort many times.
  const int64_t vocab = 248320;
  std::vector<float> logits = RandomLogits(vocab, 77, 0.5f);
  SamplerParams p;
  p.top_p = 0.9f;
  p.seed = 31337;
  TokenCounts counts;
  SamplerScratch sc;
  for (uint64_t step = 0; step < 3; ++step)
    EXPECT_EQ(sample_ref(logits.data(), vocab, p, {}, {}, step).token,
              sample_cpu(logits.data(), vocab, p, counts, step, &sc).token);
}

TEST(SamplerFastVsRef, TopPNearOneKeepsTheSameSet) {
  // top_p close to 1 makes the fast path's light-token cut-off tight; the kept set (seen through
  // processed logprobs of every token) must still equal the reference's.
  const int64_t vocab = 3000;
  for (float top_p : {0.999f, 0.99999f, 0.9999999f}) {
    std::vector<float> logits = RandomLogits(vocab, 5, 2.0f);
    SamplerParams p;
    p.top_p = top_p;
    p.seed = 8;
    p.top_logprobs = vocab;
    p.logprobs_mode = LogprobsMode::kProcessed;
    TokenCounts none;
    SamplerScratch sc;
    SampleResult a = sample_ref(logits.data(), vocab, p, {}, {}, 0);
    SampleResult b = sample_cpu(logits.data(), vocab, p, none, 0, &sc);
    ASSERT_EQ(a.token, b.token);
    int kept = 0;
    for (int i = 0; i < vocab; ++i) {
      ASSERT_EQ(a.top[i].token, b.top[i].token) << "top_p " << top_p << " rank " << i;
      ASSERT_EQ(a.top[i].logprob, b.top[i].logprob);
      kept += std::isfinite(a.top[i].logprob);
    }
    EXPECT_GT(kept, 100) << top_p;
    EXPECT_LT(kept, vocab) << top_p;
  }
}

TEST(SamplerParamsValidation, NamesFieldAndValue) {
  SamplerParams p;
  EXPECT_EQ(validate_sampler_params(p, 10), "");
  p.top_p = 0.0f;
  EXPECT_NE(validate_sampler_params(p, 10).find("top_p 0"), std::string::npos);
  p = {};
  p.repetition_penalty = 0.0f;
  EXPECT_NE(validate_sampler_params(p, 10).find("repetition_penalty"), std::string::npos);
  p = {};
  p.presence_penalty = 2.5f;
  EXPECT_NE(validate_sampler_params(p, 10).find("presence_penalty 2.5"), std::string::npos);
  p = {};
  p.logit_bias = {{10, 1.0f}};
  EXPECT_NE(validate_sampler_params(p, 10).find("token 10 is outside"), std::string::npos);
  p.logit_bias = {{3, 1.0f}, {3, 2.0f}};
  EXPECT_NE(validate_sampler_params(p, 10).find("token 3 more than once"), std::string::npos);
  p = {};
  p.temperature = -1.0f;
  EXPECT_NE(validate_sampler_params(p, 10).find("temperature -1"), std::string::npos);
}

}  // namespace
}  // namespace rs
