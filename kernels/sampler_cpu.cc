// Fast CPU sampler: the contract of sampler.h, computed without touching more of the vocabulary
// than each step needs.
//   - bias and penalties: only the tokens named in the bias list and in TokenCounts;
//   - top-k: one pass with a k-element min-heap for the threshold, one pass to collect;
//   - top-p: candidates ordered by a growing partial sort, stopping once the mass is reached;
//   - weights and sums in the same order and precision as the reference, so the chosen token is
//     the same bit for bit.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <queue>

#include "kernels/sampler.h"

namespace rs {
namespace {

// log_softmax pieces of v: max and log-sum-exp, in double with the sum in id order (as the
// reference does).
double log_sum_exp(const float* v, int64_t vocab) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t t = 0; t < vocab; ++t) m = std::max(m, static_cast<double>(v[t]));
  double sum = 0.0;
  for (int64_t t = 0; t < vocab; ++t) sum += std::exp(static_cast<double>(v[t]) - m);
  return m + std::log(sum);
}

// Top n of lp(t) by (lp desc, id asc) over t in [0, vocab), lp given as a callable.
template <typename F>
std::vector<TokenLogprob> top_n(int64_t vocab, int32_t n, F lp) {
  auto better = [&](int32_t a, int32_t b) {
    const double la = lp(a), lb = lp(b);
    return la > lb || (la == lb && a < b);
  };
  // Max-heap on "worse": the top is the worst of the current best n.
  std::priority_queue<int32_t, std::vector<int32_t>, decltype(better)> heap(better);
  for (int64_t t = 0; t < vocab; ++t) {
    const int32_t id = static_cast<int32_t>(t);
    if (static_cast<int32_t>(heap.size()) < n) {
      heap.push(id);
    } else if (better(id, heap.top())) {
      heap.pop();
      heap.push(id);
    }
  }
  std::vector<TokenLogprob> out(heap.size());
  for (size_t i = out.size(); i-- > 0;) {
    out[i] = {heap.top(), static_cast<float>(lp(heap.top()))};
    heap.pop();
  }
  return out;
}

void fill_from_log_softmax(const float* v, int64_t vocab, const SamplerParams& p,
                           SampleResult* r) {
  const double lse = log_sum_exp(v, vocab);
  auto lp = [&](int32_t t) { return static_cast<double>(v[t]) - lse; };
  r->logprob = static_cast<float>(lp(r->token));
  if (p.top_logprobs > 0) r->top = top_n(vocab, p.top_logprobs, lp);
}

}  // namespace

SampleResult sample_cpu(const float* logits, int64_t vocab, const SamplerParams& p,
                        const TokenCounts& counts, uint64_t step, SamplerScratch* sc) {
  std::vector<float>& x = sc->x;
  x.resize(vocab);
  std::memcpy(x.data(), logits, sizeof(float) * vocab);
  // 1-4: only the named tokens change (the others would get +0, *1, -0: exact no-ops).
  for (const LogitBias& b : p.logit_bias)
    if (b.token >= 0 && b.token < vocab) x[b.token] += b.bias;
  const float rp = p.repetition_penalty, fp = p.frequency_penalty, pp = p.presence_penalty;
  for (const TokenCounts::Entry& e : counts.entries()) {
    if (e.token < 0 || e.token >= vocab) continue;
    float v = x[e.token];
    v = v > 0.0f ? v / rp : v * rp;
    v = std::fma(-fp, static_cast<float>(e.output_count), v);
    if (e.output_count > 0) v -= pp;
    x[e.token] = v;
  }

  SampleResult r;
  if (p.temperature < kGreedyTemperature) {
    int64_t best = 0;
    for (int64_t t = 1; t < vocab; ++t)
      if (x[t] > x[best]) best = t;
    r.token = static_cast<int32_t>(best);
    if (p.top_logprobs >= 0)
      fill_from_log_softmax(p.logprobs_mode == LogprobsMode::kRaw ? logits : x.data(), vocab, p,
                            &r);
    return r;
  }

  // 6. temperature, and the max.
  float* s = x.data();
  const float temp = p.temperature;
  for (int64_t t = 0; t < vocab; ++t) s[t] = s[t] / temp;
  float s_max = s[0];
  for (int64_t t = 1; t < vocab; ++t) s_max = std::max(s_max, s[t]);
  const double s_max_d = s_max;

  // 7. min-p as a test on the scaled logit (no exp per token).
  const bool use_min_p = p.min_p > 0.0f;
  const double log_min_p = use_min_p ? std::log(static_cast<double>(p.min_p)) : 0.0;
  auto survives = [&](int64_t t) {
    return !use_min_p || !(static_cast<double>(s[t]) - s_max_d < log_min_p);
  };

  // 8. top-k: the k-th largest surviving value via a min-heap, then everything >= it.
  std::vector<int32_t>& cand = sc->cand;  // ascending id order throughout
  cand.clear();
  if (p.top_k > 0 && p.top_k < vocab) {
    std::priority_queue<float, std::vector<float>, std::greater<float>> heap;
    int64_t n_surv = 0;
    for (int64_t t = 0; t < vocab; ++t) {
      if (!survives(t)) continue;
      ++n_surv;
      if (static_cast<int32_t>(heap.size()) < p.top_k) {
        heap.push(s[t]);
      } else if (s[t] > heap.top()) {
        heap.pop();
        heap.push(s[t]);
      }
    }
    const float thr = n_surv > p.top_k ? heap.top() : -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < vocab; ++t)
      if (s[t] >= thr && survives(t)) cand.push_back(static_cast<int32_t>(t));
  } else {
    for (int64_t t = 0; t < vocab; ++t)
      if (survives(t)) cand.push_back(static_cast<int32_t>(t));
  }

  // Weights in id order and their sum (same expression and order as the reference).
  std::vector<double>& w = sc->w;
  w.resize(cand.size());
  double total = 0.0;
  for (size_t i = 0; i < cand.size(); ++i) {
    w[i] = std::exp(static_cast<double>(s[cand[i]]) - s_max_d);
    total += w[i];
  }

  // 9. top-p: order candidate positions by (s desc, id asc) only as far as needed.
  if (p.top_p < 1.0f && cand.size() > 1) {
    const double limit = static_cast<double>(p.top_p) * total;
    std::vector<int32_t> order(cand.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
    auto cmp = [&](int32_t a, int32_t b) {
      const float sa = s[cand[a]], sb = s[cand[b]];
      return sa > sb || (sa == sb && a < b);
    };
    size_t sorted = 0, n = 0, m = std::min<size_t>(64, order.size());
    double before = 0.0;
    bool done = false;
    while (!done) {
      std::partial_sort(order.begin() + sorted, order.begin() + m, order.end(), cmp);
      sorted = m;
      while (n < sorted && (n == 0 || before < limit)) before += w[order[n++]];
      if (n < sorted || sorted == order.size()) done = true;
      else m = std::min(order.size(), m * 4);
    }
    // Keep positions order[0..n), back in ascending id order.
    order.resize(n);
    std::sort(order.begin(), order.end());
    total = 0.0;
    for (size_t i = 0; i < n; ++i) {
      cand[i] = cand[order[i]];
      w[i] = w[order[i]];
      total += w[i];
    }
    cand.resize(n);
    w.resize(n);
  }

  // 10. draw.
  const double target = philox_uniform(p.seed, step) * total;
  double cum = 0.0;
  r.token = cand.back();
  for (size_t i = 0; i < cand.size(); ++i) {
    cum += w[i];
    if (cum > target) {
      r.token = cand[i];
      break;
    }
  }

  if (p.top_logprobs >= 0) {
    if (p.logprobs_mode == LogprobsMode::kRaw) {
      fill_from_log_softmax(logits, vocab, p, &r);
    } else {
      const double ninf = -std::numeric_limits<double>::infinity();
      auto lp_kept = [&](size_t i) { return std::log(w[i] / total); };
      const size_t ci = std::lower_bound(cand.begin(), cand.end(), r.token) - cand.begin();
      r.logprob = static_cast<float>(lp_kept(ci));
      if (p.top_logprobs > 0) {
        std::vector<size_t> pos(cand.size());
        for (size_t i = 0; i < pos.size(); ++i) pos[i] = i;
        std::sort(pos.begin(), pos.end(), [&](size_t a, size_t b) {
          const double la = lp_kept(a), lb = lp_kept(b);
          return la > lb || (la == lb && a < b);
        });
        for (size_t i = 0; i < pos.size() && static_cast<int32_t>(r.top.size()) < p.top_logprobs;
             ++i)
          r.top.push_back({cand[pos[i]], static_cast<float>(lp_kept(pos[i]))});
        // Then dropped tokens (-inf), lowest ids first, as the reference's sort orders them.
        size_t ki = 0;
        for (int64_t t = 0; t < vocab && static_cast<int32_t>(r.top.size()) < p.top_logprobs;
             ++t) {
          while (ki < cand.size() && cand[ki] < t) ++ki;
          if (ki < cand.size() && cand[ki] == t) continue;
          r.top.push_back({static_cast<int32_t>(t), static_cast<float>(ninf)});
        }
      }
    }
  }
  return r;
}

}  // namespace rs
