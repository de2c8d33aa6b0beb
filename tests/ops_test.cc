// The model's ops: every fast CPU version against its reference on random inputs at awkward
// sizes, and the chunked delta rule against the token-by-token recurrence.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"

namespace rs {
namespace {

std::vector<float> Rand(size_t n, uint32_t seed, float lo = -1, float hi = 1) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Max |a - b| relative to max |b| (plus a floor).
double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  double mx = 1e-6, err = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    mx = std::max(mx, std::abs(static_cast<double>(b[i])));
    const double e = std::abs(static_cast<double>(a[i]) - b[i]);
    if (!(e <= err)) err = e;  // NaN sticks
  }
  return err / mx;
}

TEST(Ops, RmsNormCpuMatchesRef) {
  for (int64_t n : {1, 7, 64, 100, 257}) {
    auto x = Rand(3 * n, 1), w = Rand(n, 2);
    std::vector<float> a(3 * n), b(3 * n);
    rms_norm_ref(x.data(), w.data(), 3, n, 1e-6f, a.data());
    rms_norm_cpu(x.data(), w.data(), 3, n, 1e-6f, b.data());
    EXPECT_LT(RelErr(b, a), 1e-5) << "n=" << n;
  }
}

TEST(Ops, RmsNormMatchesFormula) {
  std::vector<float> x = {1, 2, 3, 4}, w = {1, 1, 2, 0.5f}, y(4);
  rms_norm_ref(x.data(), w.data(), 1, 4, 0.0f, y.data());
  const float r = std::sqrt((1 + 4 + 9 + 16) / 4.0f);
  EXPECT_NEAR(y[0], 1 / r, 1e-6);
  EXPECT_NEAR(y[2], 3 / r * 2, 1e-6);
  EXPECT_NEAR(y[3], 4 / r * 0.5f, 1e-6);
}

TEST(Ops, GatedRmsNormCpuMatchesRef) {
  for (int64_t n : {3, 32, 128, 129}) {
    auto x = Rand(5 * n, 3), w = Rand(n, 4), z = Rand(5 * n, 5, -4, 4);
    std::vector<float> a(5 * n), b(5 * n);
    rms_norm_gated_ref(x.data(), w.data(), z.data(), 5, n, 1e-6f, a.data());
    rms_norm_gated_cpu(x.data(), w.data(), z.data(), 5, n, 1e-6f, b.data());
    EXPECT_LT(RelErr(b, a), 1e-5) << "n=" << n;
    // Formula spot check: y = n(x) * w * silu(z).
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const double want = x[0] / std::sqrt(ss / n + 1e-6) * w[0] * (z[0] / (1 + std::exp(-z[0])));
    EXPECT_NEAR(a[0], want, 1e-5);
  }
}

// Element by element against the reference: within 4 float ulps of silu(g) * u (the vector
// exp's error), every n (tails included), one thread or two.
TEST(Ops, SwigluCpuMatchesRefPerElement) {
  for (int64_t n : {1, 7, 8, 13, 4096, 40003}) {
    auto g = Rand(n, 21, -30, 30), u = Rand(n, 22);
    g[0] = -100.0f;  // exp(-x) clamped: silu -> -0 side, no inf / nan
    if (n > 1) g[1] = 100.0f;
    if (n > 2) g[2] = 0.0f;
    std::vector<float> a(n), b(n);
    swiglu_ref(g.data(), u.data(), n, a.data());
    for (int threads : {1, 2}) {
      swiglu_cpu(g.data(), u.data(), n, b.data(), threads);
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_TRUE(std::isfinite(b[i])) << "n=" << n << " i=" << i << " g=" << g[i];
        ASSERT_NEAR(b[i], a[i], 4.8e-7 * std::abs(a[i]) + 1e-30) << "n=" << n << " i=" << i << " g=" << g[i];
      }
    }
  }
}

// An element's value does not depend on where it sits (body or tail, which piece): the same
// values shifted by 3 give bit-identical results, and so does computing in place.
TEST(Ops, SwigluCpuIsPositionIndependent) {
  const int64_t n = 1000;
  auto g = Rand(n + 3, 23, -8, 8), u = Rand(n + 3, 24);
  std::vector<float> a(n), b(n + 3);
  swiglu_cpu(g.data() + 3, u.data() + 3, n, a.data(), 1);
  swiglu_cpu(g.data(), u.data(), n + 3, b.data(), 2);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(a[i], b[i + 3]) << i;
  std::vector<float> c(g.begin() + 3, g.end());
  swiglu_cpu(c.data(), u.data() + 3, n, c.data(), 1);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(a[i], c[i]) << i;
}

TEST(Ops, SigmoidMulCpuMatchesRef) {
  for (int64_t n : {1, 9, 1024, 30001}) {
    auto g = Rand(n, 25, -40, 40), o = Rand(n, 26);
    auto a = o, b = o;
    sigmoid_mul_ref(g.data(), n, a.data());
    sigmoid_mul_cpu(g.data(), n, b.data(), 2);
    for (int64_t i = 0; i < n; ++i)
      ASSERT_NEAR(b[i], a[i], 4.8e-7 * std::abs(a[i]) + 1e-30) << "n=" << n << " i=" << i << " g=" << g[i];
  }
}

TEST(Ops, RopeRotatesOnlyFirstDimsNeox) {
  const int64_t hd = 16, nrot = 8;
  auto x = Rand(2 * hd, 6);
  auto y = x;
  int64_t pos[1] = {5};
  rope_neox_ref(y.data(), 1, 2, hd, nrot, pos, 10000.0f);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t d = nrot; d < hd; ++d) EXPECT_EQ(y[h * hd + d], x[h * hd + d]);
    for (int64_t d = 0; d < nrot / 2; ++d) {
      const float ang = 5.0f * std::pow(10000.0f, -2.0f * d / nrot);
      const float a = x[h * hd + d], b = x[h * hd + d + nrot / 2];
      EXPECT_NEAR(y[h * hd + d], a * std::cos(ang) - b * std::sin(ang), 1e-5);
      EXPECT_NEAR(y[h * hd + d + nrot / 2], a * std::sin(ang) + b * std::cos(ang), 1e-5);
    }
  }
}

// Channel pieces over two threads: the same bits as one thread, close to the reference, the
// state carried per piece (C = 600: two full pieces of 256 and a tail of 88).
TEST(Ops, ConvCpuThreadedEqualsOneThread) {
  const int64_t T = 40, C = 600, K = 4;
  auto u = Rand(T * C, 12), w = Rand(C * K, 13), s0 = Rand((K - 1) * C, 14);
  auto sr = s0, s1 = s0, s2 = s0;
  std::vector<float> r(T * C), a(T * C), b(T * C);
  conv1d_silu_ref(u.data(), T, C, w.data(), K, sr.data(), r.data());
  conv1d_silu_cpu(u.data(), T, C, w.data(), K, s1.data(), a.data(), 1);
  conv1d_silu_cpu(u.data(), T, C, w.data(), K, s2.data(), b.data(), 2);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
  EXPECT_EQ(0, std::memcmp(s1.data(), s2.data(), s1.size() * 4));
  EXPECT_LT(RelErr(b, r), 1e-5);
  EXPECT_LT(RelErr(s2, sr), 1e-7);
}

TEST(Ops, GatedRmsNormThreadedEqualsOneThread) {
  const int64_t rows = 300, n = 64;
  auto x = Rand(rows * n, 15), w = Rand(n, 16), z = Rand(rows * n, 17, -4, 4);
  std::vector<float> a(rows * n), b(rows * n);
  rms_norm_gated_cpu(x.data(), w.data(), z.data(), rows, n, 1e-6f, a.data(), 1);
  rms_norm_gated_cpu(x.data(), w.data(), z.data(), rows, n, 1e-6f, b.data(), 2);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
}

TEST(Ops, ConvCpuMatchesRefAndCarriesState) {
  for (int64_t T : {1, 2, 3, 5, 17}) {
    const int64_t C = 37, K = 4;
    auto u = Rand(T * C, 7), w = Rand(C * K, 8), s0 = Rand((K - 1) * C, 9);
    auto sa = s0, sb = s0;
    std::vector<float> a(T * C), b(T * C);
    conv1d_silu_ref(u.data(), T, C, w.data(), K, sa.data(), a.data());
    conv1d_silu_cpu(u.data(), T, C, w.data(), K, sb.data(), b.data());
    EXPECT_LT(RelErr(b, a), 1e-5) << "T=" << T;
    EXPECT_LT(RelErr(sb, sa), 1e-7) << "T=" << T;
  }
  // Splitting the input into two calls gives the same outputs as one call.
  const int64_t T = 9, C = 5, K = 4;
  auto u = Rand(T * C, 10), w = Rand(C * K, 11);
  std::vector<float> s1((K - 1) * C, 0), s2((K - 1) * C, 0), o1(T * C), o2(T * C);
  conv1d_silu_ref(u.data(), T, C, w.data(), K, s1.data(), o1.data());
  conv1d_silu_ref(u.data(), 2, C, w.data(), K, s2.data(), o2.data());
  conv1d_silu_ref(u.data() + 2 * C, T - 2, C, w.data(), K, s2.data(), o2.data() + 2 * C);
  EXPECT_LT(RelErr(o2, o1), 1e-6);
  EXPECT_LT(RelErr(s2, s1), 1e-7);
}

struct DnInputs {
  std::vector<float> q, k, v, g, beta, S;
};

DnInputs MakeDn(const DeltaNetDims& d, uint32_t seed) {
  DnInputs in;
  in.q = Rand(d.T * d.Hk * d.dk, seed);
  in.k = Rand(d.T * d.Hk * d.dk, seed + 1);
  // L2-normalise q and k per head as the model does; scale q.
  l2_norm_ref(in.q.data(), d.T * d.Hk, d.dk, 1e-6f);
  l2_norm_ref(in.k.data(), d.T * d.Hk, d.dk, 1e-6f);
  for (auto& x : in.q) x /= std::sqrt(static_cast<float>(d.dk));
  in.v = Rand(d.T * d.Hv * d.dv, seed + 2);
  in.g = Rand(d.T * d.Hv, seed + 3, -5, 0);
  in.beta = Rand(d.T * d.Hv, seed + 4, 0.01f, 0.99f);
  in.S = Rand(d.Hv * d.dk * d.dv, seed + 5, -0.5f, 0.5f);
  return in;
}

class DeltaRule : public ::testing::TestWithParam<int64_t> {};

TEST_P(DeltaRule, ChunkedEqualsRecurrence) {
  const DeltaNetDims d{GetParam(), 2, 4, 128, 128};
  auto in = MakeDn(d, 100 + static_cast<uint32_t>(d.T));
  auto S1 = in.S, S2 = in.S;
  std::vector<float> o1(d.T * d.Hv * d.dv), o2(o1.size());
  delta_rule_recurrent_ref(d, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(),
                           S1.data(), o1.data());
  delta_rule_chunked_ref(d, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(),
                         S2.data(), o2.data());
  EXPECT_LT(RelErr(o2, o1), 1e-4) << "T=" << d.T;
  EXPECT_LT(RelErr(S2, S1), 1e-4) << "T=" << d.T;
}

TEST_P(DeltaRule, CpuEqualsRecurrence) {
  const DeltaNetDims d{GetParam(), 2, 6, 32, 48};
  auto in = MakeDn(d, 200 + static_cast<uint32_t>(d.T));
  auto S1 = in.S, S2 = in.S;
  std::vector<float> o1(d.T * d.Hv * d.dv), o2(o1.size());
  delta_rule_recurrent_ref(d, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(),
                           S1.data(), o1.data());
  delta_rule_cpu(d, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(), S2.data(),
                 o2.data(), 2);
  EXPECT_LT(RelErr(o2, o1), 1e-4) << "T=" << d.T;
  EXPECT_LT(RelErr(S2, S1), 1e-4) << "T=" << d.T;
}

// The fast chunked form (forced at every T) and the dispatching delta_rule_cpu against the
// recurrence, with tiled key heads (Hv = 6 reads key head h % 3), dk != dv and a nonzero
// initial state. Tolerance: 1e-4 of the largest magnitude (fp32 chunk algebra vs the
// recurrence's fp64 accumulation; measured errors are ~1e-6).
TEST_P(DeltaRule, ChunkedCpuEqualsRecurrenceTiledHeads) {
  const DeltaNetDims d{GetParam(), 3, 6, 48, 80};
  auto in = MakeDn(d, 500 + static_cast<uint32_t>(d.T));
  auto S1 = in.S, S2 = in.S, S3 = in.S;
  std::vector<float> o1(d.T * d.Hv * d.dv), o2(o1.size()), o3(o1.size());
  delta_rule_recurrent_ref(d, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(),
                           S1.data(), o1.data());
  delta_rule_chunked_cpu(d, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(),
                         S2.data(), o2.data(), 2);
  delta_rule_cpu(d, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(), S3.data(),
                 o3.data(), 3);
  EXPECT_LT(RelErr(o2, o1), 1e-4) << "chunked T=" << d.T;
  EXPECT_LT(RelErr(S2, S1), 1e-4) << "chunked T=" << d.T;
  EXPECT_LT(RelErr(o3, o1), 1e-4) << "cpu T=" << d.T;
  EXPECT_LT(RelErr(S3, S1), 1e-4) << "cpu T=" << d.T;
}

// Mild decay (g near 0, as trained models mostly have) keeps the state large across chunks:
// errors must not grow with the number of chunks.
TEST_P(DeltaRule, ChunkedCpuMildDecay) {
  const DeltaNetDims d{GetParam(), 2, 4, 64, 64};
  auto in = MakeDn(d, 600 + static_cast<uint32_t>(d.T));
  in.g = Rand(d.T * d.Hv, 601, -0.1f, 0.0f);
  auto S1 = in.S, S2 = in.S;
  std::vector<float> o1(d.T * d.Hv * d.dv), o2(o1.size());
  delta_rule_recurrent_ref(d, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(),
                           S1.data(), o1.data());
  delta_rule_chunked_cpu(d, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(),
                         S2.data(), o2.data(), 1);
  EXPECT_LT(RelErr(o2, o1), 1e-4) << "T=" << d.T;
  EXPECT_LT(RelErr(S2, S1), 1e-4) << "T=" << d.T;
}

INSTANTIATE_TEST_SUITE_P(Lengths, DeltaRule, ::testing::Values(1, 63, 64, 65, 300));

TEST(Ops, DeltaRuleUsesTiledKeyHeads) {
  // With Hk = 2, Hv = 4: value head 1 must read key head 1 (1 % 2), not key head 0 (1 / 2).
  const DeltaNetDims d{1, 2, 4, 4, 4};
  auto in = MakeDn(d, 300);
  std::fill(in.S.begin(), in.S.end(), 0.0f);
  std::vector<float> o(d.Hv * d.dv);
  delta_rule_recurrent_ref(d, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(),
                           in.S.data(), o.data());
  // From a zero state: S_h = beta k_j v^T, o_h = beta (k_j . q_j) v_h.
  for (int64_t h = 0; h < d.Hv; ++h) {
    const int64_t j = h % d.Hk;
    double kq = 0;
    for (int64_t a = 0; a < d.dk; ++a) kq += in.k[j * d.dk + a] * in.q[j * d.dk + a];
    for (int64_t c = 0; c < d.dv; ++c)
      EXPECT_NEAR(o[h * d.dv + c], in.beta[h] * kq * in.v[h * d.dv + c], 1e-5) << "h=" << h;
  }
}

TEST(Ops, DeltaRuleSplitCallsEqualOneCall) {
  const DeltaNetDims d{130, 1, 2, 16, 16};
  auto in = MakeDn(d, 400);
  auto S1 = in.S, S2 = in.S;
  std::vector<float> o1(d.T * d.Hv * d.dv), o2(o1.size());
  delta_rule_chunked_ref(d, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(),
                         S1.data(), o1.data());
  const int64_t split = 70;
  DeltaNetDims a = d, b = d;
  a.T = split;
  b.T = d.T - split;
  delta_rule_chunked_ref(a, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(),
                         S2.data(), o2.data());
  delta_rule_chunked_ref(b, in.q.data() + split * d.Hk * d.dk, in.k.data() + split * d.Hk * d.dk,
                         in.v.data() + split * d.Hv * d.dv, in.g.data() + split * d.Hv,
                         in.beta.data() + split * d.Hv, S2.data(), o2.data() + split * d.Hv * d.dv);
  EXPECT_LT(RelErr(o2, o1), 1e-4);
  EXPECT_LT(RelErr(S2, S1), 1e-4);
}

std::vector<uint8_t> ToKv(const std::vector<float>& x, GgmlType t) {
  std::vector<uint8_t> out;
  if (t == GgmlType::F32) {
    out.resize(x.size() * 4);
    std::memcpy(out.data(), x.data(), out.size());
  } else if (t == GgmlType::Q8_0) {  // blocks of 32 never straddle positions (nkv * hd % 32 == 0)
    out.resize(row_bytes(t, static_cast<int64_t>(x.size())));
    quantize_row_ref(t, x.data(), out.data(), static_cast<int64_t>(x.size()));
  } else {
    out.resize(x.size() * 2);
    for (size_t i = 0; i < x.size(); ++i) {
      const uint16_t h = f32_to_fp16(x[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

// The same cache laid out head-major ([head][pos][head_dim], with `spare` unused positions per
// head after the n_ctx used ones, as in a cache with room to grow): each (position, head) row
// copied.
std::vector<uint8_t> HeadMajor(const std::vector<uint8_t>& rows, GgmlType t, int64_t n_ctx,
                               int64_t nkv, int64_t hd, int64_t spare) {
  const size_t hr = row_bytes(t, hd), cap = n_ctx + spare;
  std::vector<uint8_t> out(nkv * cap * hr, 0xff);  // 0xff: NaN in f16/f32 if ever read
  for (int64_t p = 0; p < n_ctx; ++p)
    for (int64_t h = 0; h < nkv; ++h)
      std::memcpy(out.data() + (h * cap + p) * hr, rows.data() + p * nkv * hr + h * hr, hr);
  return out;
}

TEST(Ops, AttentionCpuMatchesRef) {
  // hd 40: the two-pass form; 64 and 128: the blocked form (f32 copies for prefill, K/V read in
  // place for one token with up to 4 query heads per KV head). Contexts cross the 64-position
  // blocks, odd and even; groups of 1, 3, 4 and 6 query heads per KV head.
  struct Case { int64_t nh, nkv; };
  for (GgmlType kt : {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0})
    for (Case c : {Case{6, 2}, Case{4, 1}, Case{2, 2}, Case{12, 2}})
      for (int64_t T : {1, 5, 33, 70})
        for (int64_t hd : {40, 64, 128}) {
          if (kt == GgmlType::Q8_0 && hd == 40) continue;  // q8_0 rows are whole 32-blocks
          const int64_t nh = c.nh, nkv = c.nkv, n_past = 11 + 60 * (T == 70) + 120 * (T == 1);
          const int64_t n_ctx = n_past + T;
          auto q = Rand(T * nh * hd, 20), kf = Rand(n_ctx * nkv * hd, 21), vf = Rand(n_ctx * nkv * hd, 22);
          auto kb = ToKv(kf, kt), vb = ToKv(vf, kt);
          const size_t stride = row_bytes(kt, nkv * hd);
          KvView k{kt, kb.data(), nkv, hd, stride}, v{kt, vb.data(), nkv, hd, stride};
          std::vector<float> a(T * nh * hd), b(a.size());
          attention_ref(q.data(), T, nh, hd, k, v, n_past, 0.3f, a.data());
          attention_cpu(q.data(), T, nh, hd, k, v, n_past, 0.3f, b.data(), 2);
          EXPECT_LT(RelErr(b, a), 1e-5) << "T=" << T << " hd=" << hd << " nh=" << nh
                                        << " nkv=" << nkv << " " << type_name(kt);
          if (kt == GgmlType::Q8_0 && hd % 32 != 0) continue;
          // Head-major (the CPU model's layout): the same results as the interleaved rows, from
          // the reference and the fast path.
          const int64_t spare = 7;
          auto kh = HeadMajor(kb, kt, n_ctx, nkv, hd, spare), vh = HeadMajor(vb, kt, n_ctx, nkv, hd, spare);
          const size_t hr = row_bytes(kt, hd);
          KvView k2{kt, kh.data(), nkv, hd, hr, (n_ctx + spare) * hr};
          KvView v2{kt, vh.data(), nkv, hd, hr, (n_ctx + spare) * hr};
          std::vector<float> a2(a.size()), b2(a.size());
          attention_ref(q.data(), T, nh, hd, k2, v2, n_past, 0.3f, a2.data());
          attention_cpu(q.data(), T, nh, hd, k2, v2, n_past, 0.3f, b2.data(), 2);
          EXPECT_EQ(0, std::memcmp(a2.data(), a.data(), a.size() * 4)) << "head-major ref, T=" << T;
          EXPECT_EQ(0, std::memcmp(b2.data(), b.data(), b.size() * 4)) << "head-major cpu, T=" << T
                                                                        << " hd=" << hd << " nh=" << nh;
        }
}

TEST(Ops, AttentionCpuBlockedPrefillEqualsTokenByTokenBitwise) {
  // Prefill runs blocks of tokens per K/V conversion; each (token, head) must still be computed
  // exactly as in a one-token call at its position (which reads an f16 cache in place when a KV
  // head has at most 4 query heads): contexts across several 64-position blocks.
  struct Case { int64_t nh, nkv, hd; GgmlType kt; };
  for (Case c : {Case{8, 2, 32, GgmlType::F16}, Case{8, 2, 128, GgmlType::F16},
                 Case{6, 2, 64, GgmlType::F16}, Case{12, 2, 64, GgmlType::F16},
                 Case{8, 2, 64, GgmlType::F32}, Case{8, 2, 40, GgmlType::F16}}) {
    const int64_t T = 37, nh = c.nh, nkv = c.nkv, hd = c.hd, n_past = 100, n_ctx = n_past + T;
    auto q = Rand(T * nh * hd, 30), kf = Rand(n_ctx * nkv * hd, 31), vf = Rand(n_ctx * nkv * hd, 32);
    auto kb = ToKv(kf, c.kt), vb = ToKv(vf, c.kt);
    const size_t stride = row_bytes(c.kt, nkv * hd);
    KvView k{c.kt, kb.data(), nkv, hd, stride}, v{c.kt, vb.data(), nkv, hd, stride};
    std::vector<float> all(T * nh * hd), one(all.size());
    attention_cpu(q.data(), T, nh, hd, k, v, n_past, 0.2f, all.data(), 2);
    for (int64_t t = 0; t < T; ++t)
      attention_cpu(q.data() + t * nh * hd, 1, nh, hd, k, v, n_past + t, 0.2f,
                    one.data() + t * nh * hd, 1);
    EXPECT_EQ(0, std::memcmp(all.data(), one.data(), all.size() * 4))
        << "nh=" << nh << " hd=" << hd << " " << type_name(c.kt);
  }
}

// One token over a context longer than a 4096-position segment: the segments are tasks of their
// own, merged afterwards; close to the reference, and the same bits for any thread count.
TEST(Ops, AttentionCpuLongContextDecodeSegments) {
  const int64_t nh = 8, nkv = 2, hd = 64, n_past = 9000, n_ctx = n_past + 1;
  auto q = Rand(nh * hd, 40), kf = Rand(n_ctx * nkv * hd, 41), vf = Rand(n_ctx * nkv * hd, 42);
  const GgmlType kt = GgmlType::F16;
  auto kh = HeadMajor(ToKv(kf, kt), kt, n_ctx, nkv, hd, 3), vh = HeadMajor(ToKv(vf, kt), kt, n_ctx, nkv, hd, 3);
  const size_t hr = row_bytes(kt, hd);
  KvView k{kt, kh.data(), nkv, hd, hr, (n_ctx + 3) * hr}, v{kt, vh.data(), nkv, hd, hr, (n_ctx + 3) * hr};
  std::vector<float> a(nh * hd), b1(a.size()), b3(a.size());
  attention_ref(q.data(), 1, nh, hd, k, v, n_past, 0.125f, a.data());
  attention_cpu(q.data(), 1, nh, hd, k, v, n_past, 0.125f, b1.data(), 1);
  attention_cpu(q.data(), 1, nh, hd, k, v, n_past, 0.125f, b3.data(), 3);
  EXPECT_LT(RelErr(b1, a), 1e-5);
  EXPECT_EQ(0, std::memcmp(b1.data(), b3.data(), b1.size() * 4));
}

TEST(Ops, AttentionIsCausalAndGrouped) {
  // One query token at position 0 sees only cache position 0: output = v[0] of its KV head.
  const int64_t nh = 4, nkv = 2, hd = 8;
  auto q = Rand(nh * hd, 30), kf = Rand(3 * nkv * hd, 31), vf = Rand(3 * nkv * hd, 32);
  KvView k{GgmlType::F32, kf.data(), nkv, hd, nkv * hd * 4}, v{GgmlType::F32, vf.data(), nkv, hd, nkv * hd * 4};
  std::vector<float> o(nh * hd);
  attention_ref(q.data(), 1, nh, hd, k, v, 0, 1.0f, o.data());
  for (int64_t h = 0; h < nh; ++h)
    for (int64_t d = 0; d < hd; ++d) EXPECT_NEAR(o[h * hd + d], vf[(h / 2) * hd + d], 1e-6);
}

TEST(Ops, RouterSoftmaxTopkRenormalises) {
  std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f, 0.5f};
  int32_t ids[2];
  float w[2];
  router_topk_ref(logits.data(), 5, 2, ids, w);
  EXPECT_EQ(ids[0], 1);  // tie between 1 and 3: lower index first
  EXPECT_EQ(ids[1], 3);
  EXPECT_NEAR(w[0], 0.5f, 1e-6);
  EXPECT_NEAR(w[0] + w[1], 1.0f, 1e-6);
}

}  // namespace
}  // namespace rs
