// Reference sampler (see sampler.h for the definition of every step), plus the pieces both
// implementations share: parameter validation, the token statistics and the Philox draw.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>

#include "kernels/sampler.h"

namespace rs {

std::string validate_sampler_params(const SamplerParams& p, int64_t vocab) {
  char buf[160];
  auto fail = [&](const char* fmt, double v) {
    std::snprintf(buf, sizeof buf, fmt, v);
    return std::string(buf);
  };
  if (vocab <= 0) return fail("vocab size %.0f must be positive", static_cast<double>(vocab));
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    return fail("temperature %g must be finite and >= 0", p.temperature);
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return fail("top_p %g must be in (0, 1]", p.top_p);
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) return fail("min_p %g must be in [0, 1]", p.min_p);
  if (!(p.presence_penalty >= -2.0f && p.presence_penalty <= 2.0f))
    return fail("presence_penalty %g must be in [-2, 2]", p.presence_penalty);
  if (!(p.frequency_penalty >= -2.0f && p.frequency_penalty <= 2.0f))
    return fail("frequency_penalty %g must be in [-2, 2]", p.frequency_penalty);
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty))
    return fail("repetition_penalty %g must be finite and > 0", p.repetition_penalty);
  if (p.top_logprobs < -1) return fail("top_logprobs %g must be >= -1", p.top_logprobs);
  std::vector<int32_t> ids;
  for (const LogitBias& b : p.logit_bias) {
    if (b.token < 0 || b.token >= vocab) {
      std::snprintf(buf, sizeof buf, "logit_bias token %d is outside the vocabulary [0, %lld)",
                    b.token, static_cast<long long>(vocab));
      return buf;
    }
    if (!std::isfinite(b.bias)) {
      std::snprintf(buf, sizeof buf, "logit_bias for token %d is not finite", b.token);
      return buf;
    }
    ids.push_back(b.token);
  }
  std::sort(ids.begin(), ids.end());
  auto dup = std::adjacent_find(ids.begin(), ids.end());
  if (dup != ids.end()) {
    std::snprintf(buf, sizeof buf, "logit_bias names token %d more than once", *dup);
    return buf;
  }
  return {};
}

// ---- TokenCounts ---------------------------------------------------------------------------
TokenCounts::Entry& TokenCounts::Find(int32_t token) {
  auto [it, inserted] = index_.try_emplace(token, static_cast<uint32_t>(entries_.size()));
  if (inserted) entries_.push_back(Entry{token, false, 0});
  return entries_[it->second];
}
void TokenCounts::AddPrompt(std::span<const int32_t> tokens) {
  for (int32_t t : tokens) Find(t).in_prompt = true;
}
void TokenCounts::AddOutput(int32_t token) { ++Find(token).output_count; }
void TokenCounts::Clear() {
  index_.clear();
  entries_.clear();
}

// ---- Philox4x32-10 ---------------------------------------------------------------------------
double philox_uniform(uint64_t seed, uint64_t step) {
  uint32_t c[4] = {static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32), 0u, 0u};
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  const uint64_t a = c[0] >> 5, b = c[1] >> 6;  // 27 + 26 = 53 bits
  return static_cast<double>(a * 67108864u + b) * (1.0 / 9007199254740992.0);
}

// ---- reference pipeline ----------------------------------------------------------------------
void apply_bias_and_penalties_ref(float* x, int64_t vocab, const SamplerParams& p,
                                  std::span<const int32_t> prompt,
                                  std::span<const int32_t> output) {
  std::vector<float> bias(vocab, 0.0f);
  for (const LogitBias& b : p.logit_bias)
    if (b.token >= 0 && b.token < vocab) bias[b.token] += b.bias;
  std::vector<int32_t> count(vocab, 0);
  std::vector<char> in_prompt(vocab, 0);
  for (int32_t t : prompt)
    if (t >= 0 && t < vocab) in_prompt[t] = 1;
  for (int32_t t : output)
    if (t >= 0 && t < vocab) ++count[t];
  const float rp = p.repetition_penalty, fp = p.frequency_penalty, pp = p.presence_penalty;
  for (int64_t t = 0; t < vocab; ++t) {
    float v = x[t] + bias[t];                                   // 1. logit bias
    if (in_prompt[t] || count[t] > 0) v = v > 0.0f ? v / rp : v * rp;  // 2. repetition
    v = std::fma(-fp, static_cast<float>(count[t]), v);         // 3. frequency (one rounding)
    if (count[t] > 0) v -= pp;                                   // 4. presence
    x[t] = v;
  }
}

namespace {

// Kept ids (ascending), their weights exp(s - s_max) and the sum of those weights in id order.
struct Kept {
  std::vector<int32_t> ids;
  std::vector<double> w;
  double total = 0.0;
};

Kept keep_ref(const float* x, int64_t vocab, const SamplerParams& p) {
  std::vector<float> s(vocab);
  for (int64_t t = 0; t < vocab; ++t) s[t] = x[t] / p.temperature;  // 6. temperature
  const float s_max = *std::max_element(s.begin(), s.end());
  std::vector<int32_t> surv;
  const double log_min_p = p.min_p > 0.0f ? std::log(static_cast<double>(p.min_p)) : 0.0;
  for (int64_t t = 0; t < vocab; ++t) {                             // 7. min-p
    if (p.min_p > 0.0f &&
        static_cast<double>(s[t]) - static_cast<double>(s_max) < log_min_p)
      continue;
    surv.push_back(static_cast<int32_t>(t));
  }
  std::vector<int32_t> by_s = surv;
  std::sort(by_s.begin(), by_s.end(), [&](int32_t a, int32_t b) {
    return s[a] > s[b] || (s[a] == s[b] && a < b);
  });
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < by_s.size()) {  // 8. top-k (ties kept)
    const float thr = s[by_s[p.top_k - 1]];
    size_t n = p.top_k;
    while (n < by_s.size() && s[by_s[n]] >= thr) ++n;
    by_s.resize(n);
  }
  auto weight = [&](int32_t t) {
    return std::exp(static_cast<double>(s[t]) - static_cast<double>(s_max));
  };
  auto sum_in_id_order = [&](std::vector<int32_t> ids) {
    std::sort(ids.begin(), ids.end());
    double total = 0.0;
    for (int32_t t : ids) total += weight(t);
    return total;
  };
  if (p.top_p < 1.0f) {                                              // 9. top-p
    const double limit = static_cast<double>(p.top_p) * sum_in_id_order(by_s);
    double before = 0.0;
    size_t n = 0;
    while (n < by_s.size() && (n == 0 || before < limit)) before += weight(by_s[n++]);
    by_s.resize(n);
  }
  Kept k;
  k.ids = by_s;
  std::sort(k.ids.begin(), k.ids.end());
  for (int32_t t : k.ids) {
    k.w.push_back(weight(t));
    k.total += k.w.back();
  }
  return k;
}

// log_softmax of v at every index, in double with the sum in id order.
std::vector<double> log_softmax_ref(const float* v, int64_t vocab) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t t = 0; t < vocab; ++t) m = std::max(m, static_cast<double>(v[t]));
  double sum = 0.0;
  for (int64_t t = 0; t < vocab; ++t) sum += std::exp(static_cast<double>(v[t]) - m);
  const double lse = m + std::log(sum);
  std::vector<double> out(vocab);
  for (int64_t t = 0; t < vocab; ++t) out[t] = static_cast<double>(v[t]) - lse;
  return out;
}

void fill_logprobs(const std::vector<double>& lp, const SamplerParams& p, SampleResult* r) {
  r->logprob = static_cast<float>(lp[r->token]);
  if (p.top_logprobs <= 0) return;
  std::vector<int32_t> ids(lp.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(),
            [&](int32_t a, int32_t b) { return lp[a] > lp[b] || (lp[a] == lp[b] && a < b); });
  const size_t n = std::min(ids.size(), static_cast<size_t>(p.top_logprobs));
  for (size_t i = 0; i < n; ++i) r->top.push_back({ids[i], static_cast<float>(lp[ids[i]])});
}

}  // namespace

Distribution sampling_distribution_ref(const float* x, int64_t vocab, const SamplerParams& p) {
  Kept k = keep_ref(x, vocab, p);
  Distribution d;
  d.ids = k.ids;
  for (double w : k.w) d.probs.push_back(w / k.total);
  return d;
}

SampleResult sample_ref(const float* logits, int64_t vocab, const SamplerParams& p,
                        std::span<const int32_t> prompt, std::span<const int32_t> output,
                        uint64_t step) {
  std::vector<float> x(logits, logits + vocab);
  apply_bias_and_penalties_ref(x.data(), vocab, p, prompt, output);
  SampleResult r;
  if (p.temperature < kGreedyTemperature) {                          // 5. greedy
    r.token = 0;
    for (int64_t t = 1; t < vocab; ++t)
      if (x[t] > x[r.token]) r.token = static_cast<int32_t>(t);
    if (p.top_logprobs >= 0)
      fill_logprobs(log_softmax_ref(p.logprobs_mode == LogprobsMode::kRaw ? logits : x.data(),
                                    vocab),
                    p, &r);
    return r;
  }
  const Kept k = keep_ref(x.data(), vocab, p);
  const double target = philox_uniform(p.seed, step) * k.total;      // 10. draw
  double cum = 0.0;
  r.token = k.ids.back();
  for (size_t i = 0; i < k.ids.size(); ++i) {
    cum += k.w[i];
    if (cum > target) {
      r.token = k.ids[i];
      break;
    }
  }
  if (p.top_logprobs >= 0) {
    if (p.logprobs_mode == LogprobsMode::kRaw) {
      fill_logprobs(log_softmax_ref(logits, vocab), p, &r);
    } else {
      std::vector<double> lp(vocab, -std::numeric_limits<double>::infinity());
      for (size_t i = 0; i < k.ids.size(); ++i) lp[k.ids[i]] = std::log(k.w[i] / k.total);
      fill_logprobs(lp, p, &r);
    }
  }
  return r;
}

}  // namespace rs
