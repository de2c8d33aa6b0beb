// Helpers shared by the kernel tests that run in the host emulator (tests/cuda/*_emu_test.cc)
// and on the device (tests/cuda/cuda_*_test.cc): error measures in which a NaN (an output the
// kernel never wrote) always fails, quantised weight rows, and the problems and references
// both kinds of test check (the same numbers on both sides). No CUDA runtime here.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/formats.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace rs::testing_kernels {

// max |got - want| / max(|want|, 1e-6); NaN anywhere in got gives NaN.
inline double max_rel(const float* got, const float* want, int64_t n) {
  double scale = 1e-6, err = 0;
  for (int64_t i = 0; i < n; ++i) scale = std::max(scale, static_cast<double>(std::fabs(want[i])));
  for (int64_t i = 0; i < n; ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(e <= err)) err = e;  // NaN sticks
  }
  return err / scale;
}
inline double max_rel(const std::vector<float>& got, const std::vector<float>& want) {
  return max_rel(got.data(), want.data(), static_cast<int64_t>(want.size()));
}
// max |got - want|; NaN in got gives NaN.
inline double max_abs(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(e <= err)) err = e;
  }
  return err;
}

// rows x cols floats quantised row by row (quantize_row_ref).
inline std::vector<uint8_t> quantize_rows(GgmlType t, const std::vector<float>& f, int64_t rows,
                                          int64_t cols) {
  std::vector<uint8_t> out(rows * row_bytes(t, cols));
  for (int64_t r = 0; r < rows; ++r)
    quantize_row_ref(t, f.data() + r * cols, out.data() + r * row_bytes(t, cols), cols);
  return out;
}

// ---- flash prefill attention -------------------------------------------------------------
struct AttnProblem {
  GgmlType kv;
  int64_t T, n_past, nh, nkv, hd;
  size_t rb = 0;  // cache row bytes
  std::vector<uint8_t> k, v;
  std::vector<float> q, want;
  float scale = 1.0f;
};
inline AttnProblem make_attn(GgmlType kv, int64_t T, int64_t n_past, int64_t nh, int64_t nkv,
                             int64_t hd) {
  AttnProblem p{kv, T, n_past, nh, nkv, hd};
  std::mt19937 rng(3 + static_cast<uint32_t>(T));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t n_pos = n_past + T, row = nkv * hd;
  p.rb = row_bytes(kv, row);
  p.k.resize(n_pos * p.rb);
  p.v.resize(n_pos * p.rb);
  std::vector<float> tmp(row);
  for (int64_t i = 0; i < n_pos; ++i) {
    for (auto& x : tmp) x = nd(rng);
    quantize_row_ref(kv, tmp.data(), p.k.data() + i * p.rb, row);
    for (auto& x : tmp) x = nd(rng);
    quantize_row_ref(kv, tmp.data(), p.v.data() + i * p.rb, row);
  }
  p.q.resize(T * nh * hd);
  for (auto& x : p.q) x = 2.0f * nd(rng);
  p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  p.want.resize(p.q.size());
  attention_ref(p.q.data(), T, nh, hd, KvView{kv, p.k.data(), nkv, hd, p.rb, 0},
                KvView{kv, p.v.data(), nkv, hd, p.rb, 0}, n_past, p.scale, p.want.data());
  return p;
}

// ---- chunked delta rule --------------------------------------------------------------------
struct DeltaProblem {
  DeltaNetDims d;
  std::vector<float> q, k, v, g, beta, S0, S_want, o_want;
};
inline std::vector<float> uniform(int64_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}
// Normalised q / k as the model feeds them, a nonzero incoming state, and the recurrence's
// outputs and final state.
inline DeltaProblem make_delta(int64_t T, int64_t Hk, int64_t Hv, int64_t dk, int64_t dv) {
  DeltaProblem p;
  p.d = DeltaNetDims{T, Hk, Hv, dk, dv};
  p.q = uniform(T * Hk * dk, 1, -1, 1);
  p.k = uniform(T * Hk * dk, 2, -1, 1);
  l2_norm_ref(p.q.data(), T * Hk, dk, 1e-6f);
  l2_norm_ref(p.k.data(), T * Hk, dk, 1e-6f);
  for (auto& x : p.q) x /= std::sqrt(static_cast<float>(dk));
  p.v = uniform(T * Hv * dv, 3, -1, 1);
  p.g = uniform(T * Hv, 4, -5, 0);
  p.beta = uniform(T * Hv, 5, 0.01f, 0.99f);
  p.S0 = uniform(Hv * dk * dv, 6, -0.5f, 0.5f);
  p.S_want = p.S0;
  p.o_want.resize(T * Hv * dv);
  delta_rule_recurrent_ref(p.d, p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.beta.data(),
                           p.S_want.data(), p.o_want.data());
  return p;
}

// quantize_act's q8 blocks: d = amax / 127, q = rint(x / d), and the exact sum.
inline void quantize_q8(const float* x, int64_t n, int8_t* q, float* ds) {
  for (int64_t b = 0; b < n / 32; ++b) {
    float amax = 0.0f, sum = 0.0f;
    for (int i = 0; i < 32; ++i) {
      amax = std::max(amax, std::fabs(x[b * 32 + i]));
      sum += x[b * 32 + i];
    }
    const float d = amax / 127.0f;
    for (int i = 0; i < 32; ++i)
      q[b * 32 + i] = static_cast<int8_t>(
          amax == 0.0f ? 0 : std::clamp(std::nearbyint(x[b * 32 + i] / d), -127.0f, 127.0f));
    ds[2 * b] = d;
    ds[2 * b + 1] = sum;
  }
}

// ---- attention's q/k preparation ----------------------------------------------------------
// The model's ops in order (eps 1e-6, theta 1e7): q and gate split out of qg [N][nh][2][hd],
// rms_norm_ref per q and k head, rope_neox_ref on both. k: the k heads, normed and rotated in place.
struct AttnPrepWant {
  std::vector<float> q, gate, k;
};
inline AttnPrepWant attn_prep_reference(const std::vector<float>& qg, std::vector<float> k,
                                        const std::vector<float>& q_norm,
                                        const std::vector<float>& k_norm,
                                        const std::vector<int64_t>& pos, int64_t N, int64_t nh,
                                        int64_t nkv, int64_t hd, int64_t n_rot) {
  AttnPrepWant w{std::vector<float>(N * nh * hd), std::vector<float>(N * nh * hd), std::move(k)};
  for (int64_t th = 0; th < N * nh; ++th)
    for (int64_t i = 0; i < hd; ++i) {
      w.q[th * hd + i] = qg[th * 2 * hd + i];
      w.gate[th * hd + i] = qg[th * 2 * hd + hd + i];
    }
  rms_norm_ref(w.q.data(), q_norm.data(), N * nh, hd, 1e-6f, w.q.data());
  rms_norm_ref(w.k.data(), k_norm.data(), N * nkv, hd, 1e-6f, w.k.data());
  rope_neox_ref(w.q.data(), N, nh, hd, n_rot, pos.data(), 1e7f);
  rope_neox_ref(w.k.data(), N, nkv, hd, n_rot, pos.data(), 1e7f);
  return w;
}

// ---- grouped MoE ----------------------------------------------------------------------------
// Per token: sum over its k slots of w * down_e(silu(gate_e x) * up_e x), e = ids[t][i], with
// exactly dequantised weights (matmul_ref). gate_up: [E][2I][H] (gate rows, then up rows).
inline std::vector<double> moe_reference(GgmlType t, const std::vector<uint8_t>& gate_up,
                                         const std::vector<uint8_t>& down, int64_t H, int64_t I,
                                         const std::vector<float>& x, int64_t N, int64_t k,
                                         const std::vector<int32_t>& ids,
                                         const std::vector<float>& w) {
  const size_t hrb = row_bytes(t, H), irb = row_bytes(t, I);
  std::vector<double> out(N * H, 0.0);
  std::vector<float> gu(2 * I), h(I), y(H);
  for (int64_t tok = 0; tok < N; ++tok)
    for (int64_t i = 0; i < k; ++i) {
      const int32_t e = ids[tok * k + i];
      const WeightView wu{t, gate_up.data() + e * 2 * I * hrb, H, 2 * I, hrb};
      matmul_ref(wu, x.data() + tok * H, H, 1, gu.data(), 2 * I);
      for (int64_t j = 0; j < I; ++j) h[j] = silu(gu[j]) * gu[I + j];
      const WeightView wd{t, down.data() + e * H * irb, I, H, irb};
      matmul_ref(wd, h.data(), I, 1, y.data(), H);
      for (int64_t j = 0; j < H; ++j) out[tok * H + j] += static_cast<double>(w[tok * k + i]) * y[j];
    }
  return out;
}
// max |got - want| / max |want|; NaN in got gives NaN.
inline double max_rel(const std::vector<float>& got, const std::vector<double>& want) {
  double err = 0, scale = 1e-12;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(want[i] - got[i]);
    if (!(e <= err)) err = e;
    scale = std::max(scale, std::fabs(want[i]));
  }
  return err / scale;
}

}  // namespace rs::testing_kernels
