// One DeltaNet decode step's inputs at given sizes, and the CPU reference of the fused decode
// kernel (the ops of worker/model.cc in order), shared by the host-emulation and device tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/kernel_check.h"

namespace rs::testing_dn {

struct Problem {
  int64_t B, Hk, Hv, dk, dv, K;
  float eps = 1e-6f;
  std::vector<float> u, z, b, al, conv_w, ssm_a, dt_bias, norm_w;
  // per sequence: conv state [(K-1)][CD] then S [Hv][dk][dv], contiguous
  std::vector<std::vector<float>> state;
  int64_t KD() const { return Hk * dk; }
  int64_t CD() const { return 2 * KD() + Hv * dv; }
  int64_t conv_floats() const { return (K - 1) * CD(); }
  int64_t ssm_floats() const { return Hv * dk * dv; }
};

inline Problem make_problem(int64_t B, int64_t Hk, int64_t Hv, int64_t dk, int64_t dv, int64_t K,
                            uint32_t seed) {
  Problem p{B, Hk, Hv, dk, dv, K};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto fill = [&](std::vector<float>& v, int64_t n, float s, float off = 0.0f) {
    v.resize(n);
    for (auto& x : v) x = off + s * nd(rng);
  };
  fill(p.u, B * p.CD(), 1.0f);
  fill(p.z, B * Hv * dv, 1.0f);
  fill(p.b, B * Hv, 1.0f);
  fill(p.al, B * Hv, 1.0f);
  fill(p.conv_w, p.CD() * K, 0.5f);
  fill(p.ssm_a, Hv, 0.3f, -0.5f);  // negative, as exp(A_log) with a sign: decays in (0, 1)
  fill(p.dt_bias, Hv, 0.5f);
  fill(p.norm_w, dv, 0.2f, 1.0f);
  p.state.resize(B);
  for (auto& s : p.state) fill(s, p.conv_floats() + p.ssm_floats(), 0.3f);
  return p;
}

// Reference: updates p.state in place and returns y [B][Hv*dv].
inline std::vector<float> reference(Problem& p) {
  const int64_t KD = p.KD(), CD = p.CD(), VD = p.Hv * p.dv;
  std::vector<float> y(p.B * VD);
  for (int64_t s = 0; s < p.B; ++s) {
    float* conv_state = p.state[s].data();
    float* S = conv_state + p.conv_floats();
    std::vector<float> cv(CD), q(KD), k(KD), v(VD), g(p.Hv), beta(p.Hv), o(VD);
    conv1d_silu_ref(p.u.data() + s * CD, 1, CD, p.conv_w.data(), p.K, conv_state, cv.data());
    std::memcpy(q.data(), cv.data(), KD * 4);
    std::memcpy(k.data(), cv.data() + KD, KD * 4);
    std::memcpy(v.data(), cv.data() + 2 * KD, VD * 4);
    l2_norm_ref(q.data(), p.Hk, p.dk, 1e-6f);
    l2_norm_ref(k.data(), p.Hk, p.dk, 1e-6f);
    const float q_scale = 1.0f / std::sqrt(static_cast<float>(p.dk));
    for (auto& x : q) x *= q_scale;
    for (int64_t h = 0; h < p.Hv; ++h) {
      beta[h] = sigmoidf(p.b[s * p.Hv + h]);
      g[h] = p.ssm_a[h] * softplusf(p.al[s * p.Hv + h] + p.dt_bias[h]);
    }
    const DeltaNetDims d{1, p.Hk, p.Hv, p.dk, p.dv};
    delta_rule_recurrent_ref(d, q.data(), k.data(), v.data(), g.data(), beta.data(), S, o.data());
    rms_norm_gated_ref(o.data(), p.norm_w.data(), p.z.data() + s * VD, p.Hv, p.dv, p.eps,
                       y.data() + s * VD);
  }
  return y;
}

using testing_kernels::max_rel;

}  // namespace rs::testing_dn
