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

  // 6-8. Temperature, min-p, top-k. Division by T > 0 is monotone (x1 >= x2 implies
  // x1/T >= x2/T), so max(s) = max(x)/T, the k-th largest s is (k-th largest x)/T, and min-p
  // survivors form an upper set: top-k among the min-p survivors equals top-k of all tokens
  // intersected with the survivors. The top-k path therefore scans the unscaled x once and
  // divides only the candidates.
  float* s = x.data();  // becomes s = x / T wherever it is read below
  const float temp = p.temperature;
  const bool use_min_p = p.min_p > 0.0f;
  const double log_min_p = use_min_p ? std::log(static_cast<double>(p.min_p)) : 0.0;
  std::vector<int32_t>& cand = sc->cand;  // ascending id order throughout
  cand.clear();
  double s_max_d;
  if (p.top_k > 0 && p.top_k < vocab) {
    // k-th largest x (with multiplicity) via a k-element min-heap, and the max.
    std::vector<float>& heap = sc->heap;
    heap.assign(x.begin(), x.begin() + p.top_k);
    std::make_heap(heap.begin(), heap.end(), std::greater<float>());
    float x_max = *std::max_element(heap.begin(), heap.end());
    float top = heap.front();
    for (int64_t t = p.top_k; t < vocab; ++t) {
      const float v = x[t];
      if (v > top) {
        std::pop_heap(heap.begin(), heap.end(), std::greater<float>());
        heap.back() = v;
        std::push_heap(heap.begin(), heap.end(), std::greater<float>());
        top = heap.front();
        x_max = std::max(x_max, v);
      }
    }
    const float s_max = x_max / temp;
    s_max_d = s_max;
    // Smallest x whose x/T still ties the k-th largest s (usually thr itself).
    const float thr_s = top / temp;
    float x_lo = top;
    while (x_lo > -std::numeric_limits<float>::infinity()) {
      const float below = std::nextafter(x_lo, -std::numeric_limits<float>::infinity());
      if (!(below / temp >= thr_s)) break;
      x_lo = below;
    }
    for (int64_t t = 0; t < vocab; ++t) {
      if (!(x[t] >= x_lo)) continue;
      s[t] = x[t] / temp;
      if (use_min_p && static_cast<double>(s[t]) - s_max_d < log_min_p) continue;
      cand.push_back(static_cast<int32_t>(t));
    }
  } else {
    float s_max = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < vocab; ++t) {
      s[t] = s[t] / temp;
      s_max = std::max(s_max, s[t]);
    }
    s_max_d = s_max;
    for (int64_t t = 0; t < vocab; ++t)
      if (!use_min_p || !(static_cast<double>(s[t]) - s_max_d < log_min_p))
        cand.push_back(static_cast<int32_t>(t));
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
    // Tokens with w <= eps = (1 - top_p) * W / (2 * count) can never be in the nucleus: all
    // of them together weigh at most (1 - top_p) * W / 2, so the heavier tokens, which come
    // first in the order, already exceed the limit by that margin (far above the rounding of
    // any summation order, ~count * 2^-53 relative). Dropping them first is exact.
    const double eps = 0.5 * (1.0 - static_cast<double>(p.top_p)) * total /
                       static_cast<double>(cand.size());
    struct Item {
      float s;
      int32_t pos;
    };
    std::vector<Item> items;
    items.reserve(64);
    for (size_t i = 0; i < cand.size(); ++i)
      if (w[i] > eps) items.push_back({s[cand[i]], static_cast<int32_t>(i)});
    auto cmp = [](const Item& a, const Item& b) {
      return a.s > b.s || (a.s == b.s && a.pos < b.pos);
    };
    // Bring the next chunk of best candidates to the front (nth_element over the rest, then
    // sort the chunk), walk it, and grow the chunk until the mass is reached.
    size_t sorted = 0, n = 0, chunk = 256;
    double before = 0.0;
    while (true) {
      const size_t end = std::min(items.size(), sorted + chunk);
      if (end < items.size())
        std::nth_element(items.begin() + sorted, items.begin() + end, items.end(), cmp);
      std::sort(items.begin() + sorted, items.begin() + end, cmp);
      sorted = end;
      while (n < sorted && (n == 0 || before < limit)) before += w[items[n++].pos];
      if (n < sorted || sorted == items.size()) break;
      chunk *= 4;
    }
    std::vector<int32_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = items[i].pos;
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
