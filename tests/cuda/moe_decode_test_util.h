// The fused MoE decode problem (kernels/cuda/moe_decode_kernel.cuh) and its check, shared by
// the emulation test (moe_decode_emu_test) and the device test (cuda_moe_decode_test): random
// experts in every layout, a routing with distinct experts per token, and a reference that sums
// the same per-unit dot products (matvec_fmt.cuh; the formats themselves are checked against the
// CPU reference in cuda_emulation_test) in row order, so each kernel is checked on its own: the
// up kernel's h against silu(gate) * up over the given q8 activations, its q8 blocks against
// quantize_act's, the down kernel against the weighted sum over the up kernel's own h.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/matvec_fmt.cuh"
#include "kernels/formats.h"
#include "kernels/ops.h"
#include "tests/cuda/kernel_check.h"

namespace rs::testing_kernels {

struct MoeDecodeCase {
  GgmlType type;
  int64_t E, k, N, H, I, Is;  // Is == 0: no shared expert
  bool fused;                 // gate|up in one tensor
  bool negative_id;           // token 0's slot 1 is skipped
  bool accumulate;
};

inline bool moe_decode_q8(GgmlType t) {
  return t != GgmlType::F32 && t != GgmlType::F16 && t != GgmlType::BF16;
}

struct MoeDecodeProblem {
  MoeDecodeCase c;
  size_t hrb = 0, irb = 0, isrb = 0;
  // gate/up: [E][I][H] each, also fused as [E][2I][H]; down [E][H][I]; the shared expert's
  // gate/up [Is][H] and down [H][Is] (at least 32 wide, so a missing one still has data).
  std::vector<uint8_t> gate, up, fused, down, sh_gate, sh_up, sh_down;
  std::vector<float> x, sh_logit, w;
  std::vector<int32_t> ids;
  int64_t slots() const { return c.N * c.k + (c.Is ? c.N : 0); }
  int64_t ldh() const { return (std::max(c.I, c.Is) + 31) / 32 * 32; }
};

inline MoeDecodeProblem make_moe_decode(const MoeDecodeCase& c) {
  MoeDecodeProblem p;
  p.c = c;
  std::mt19937 rng(17 + static_cast<int>(c.type) + static_cast<int>(c.E));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto rnd = [&](int64_t n, float s) {
    std::vector<float> v(n);
    for (auto& x : v) x = s * nd(rng);
    return v;
  };
  const int64_t H = c.H, I = c.I, E = c.E, Iss = std::max<int64_t>(c.Is, 32);
  p.hrb = row_bytes(c.type, H);
  p.irb = row_bytes(c.type, I);
  p.isrb = row_bytes(c.type, Iss);
  const std::vector<float> gate_f = rnd(E * I * H, 0.2f), up_f = rnd(E * I * H, 0.2f);
  p.gate = quantize_rows(c.type, gate_f, E * I, H);
  p.up = quantize_rows(c.type, up_f, E * I, H);
  // gate|up interleaved per expert is the same rows as gate and up: no second quantisation.
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rb = static_cast<int64_t>(p.hrb), b0 = e * I * rb, b1 = b0 + I * rb;
    p.fused.insert(p.fused.end(), p.gate.begin() + b0, p.gate.begin() + b1);
    p.fused.insert(p.fused.end(), p.up.begin() + b0, p.up.begin() + b1);
  }
  p.down = quantize_rows(c.type, rnd(E * H * I, 0.1f), E * H, I);
  p.sh_gate = quantize_rows(c.type, rnd(Iss * H, 0.2f), Iss, H);
  p.sh_up = quantize_rows(c.type, rnd(Iss * H, 0.2f), Iss, H);
  p.sh_down = quantize_rows(c.type, rnd(H * Iss, 0.1f), H, Iss);
  p.x = rnd(c.N * H, 1.0f);
  p.sh_logit = rnd(c.N, 1.0f);
  p.ids.resize(c.N * c.k);
  p.w.resize(c.N * c.k);
  for (int64_t t = 0; t < c.N; ++t) {
    std::vector<int32_t> pool(E);
    for (int32_t e = 0; e < E; ++e) pool[e] = e;
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int64_t i = 0; i < c.k; ++i) {
      p.ids[t * c.k + i] = pool[i];
      p.w[t * c.k + i] = 0.3f + 0.1f * static_cast<float>(i) + 0.05f * static_cast<float>(t);
    }
  }
  if (c.negative_id) p.ids[1] = -1;
  return p;
}

// Checks the kernels' results: xq/xds the q8 activations they read (integer formats; else
// null), h/hq/hds the up kernel's output (hq/hds null for float formats), out the down kernel's
// output, out0 what `out` held before (used with accumulate).
inline void check_moe_decode(const MoeDecodeProblem& p, const int8_t* xq, const float* xds,
                             const std::vector<float>& h, const int8_t* hq, const float* hds,
                             const std::vector<float>& out, const std::vector<float>& out0) {
  using cuda::detail::ActDev;
  using cuda::detail::Fmt;
  const MoeDecodeCase& c = p.c;
  const int64_t H = c.H, I = c.I, Is = c.Is, k = c.k, N = c.N, ldh = p.ldh();
  const auto act = [](const float* x, const int8_t* q, const float* ds, int64_t cols, int64_t ld,
                      int64_t t) {
    return ActDev{x + t * ld, ld, q ? q + t * ld : nullptr,
                  ds ? reinterpret_cast<const float2*>(ds) + t * (ld / 32) : nullptr, cols};
  };
  const auto dot = [&](const uint8_t* row, int64_t cols, const ActDev& a) {
    float acc[1] = {0.0f};
    RS_CUDA_TYPE_SWITCH(c.type, {
      for (int64_t u = 0; u < Fmt<kT>::units(cols); ++u) Fmt<kT>::template dot<1>(row, u, a, acc);
    })
    return static_cast<double>(acc[0]);
  };
  std::vector<double> want(N * H, 0.0);
  double h_err = 0, h_scale = 1e-12;
  auto expert = [&](int64_t slot, int64_t t, const uint8_t* gw, const uint8_t* uw,
                    const uint8_t* dw, size_t drb, int64_t rows, double weight) {
    const ActDev xa = act(p.x.data(), xq, xds, H, H, t);
    for (int64_t j = 0; j < rows; ++j) {
      const double hh = silu(static_cast<float>(dot(gw + j * p.hrb, H, xa))) *
                        dot(uw + j * p.hrb, H, xa);
      const double e = std::fabs(h[slot * ldh + j] - hh);
      if (!(e <= h_err)) h_err = e;  // NaN sticks
      h_scale = std::max(h_scale, std::fabs(hh));
    }
    const ActDev ha = act(h.data(), hq, hds, rows, ldh, slot);
    for (int64_t j = 0; j < H; ++j) want[t * H + j] += weight * dot(dw + j * drb, rows, ha);
  };
  for (int64_t t = 0; t < N; ++t) {
    for (int64_t i = 0; i < k; ++i) {
      const int32_t e = p.ids[t * k + i];
      if (e < 0) continue;
      expert(t * k + i, t, p.gate.data() + e * I * p.hrb, p.up.data() + e * I * p.hrb,
             p.down.data() + e * H * p.irb, p.irb, I, p.w[t * k + i]);
    }
    if (Is)
      expert(N * k + t, t, p.sh_gate.data(), p.sh_up.data(), p.sh_down.data(), p.isrb, Is,
             1.0 / (1.0 + std::exp(-static_cast<double>(p.sh_logit[t]))));
  }
  for (int64_t i = 0; i < N * H; ++i) want[i] += c.accumulate ? out0[i] : 0.0f;
  EXPECT_LE(h_err / h_scale, 1e-5) << "SwiGLU output h";
  EXPECT_LE(max_rel(out, want), 1e-5) << "combined output";
  if (hq == nullptr) return;
  // h's q8 blocks are those of quantize_act (the sum up to summation order).
  std::vector<int8_t> q(32);
  std::vector<float> ds(2);
  for (int64_t s = 0; s < p.slots(); ++s) {
    if (s < N * k && p.ids[s] < 0) continue;
    const int64_t rows = s < N * k ? I : Is;
    for (int64_t b = 0; b < rows / 32; ++b) {
      quantize_q8(h.data() + s * ldh + b * 32, 32, q.data(), ds.data());
      for (int i = 0; i < 32; ++i) ASSERT_EQ(hq[s * ldh + b * 32 + i], q[i]) << s << " " << b;
      ASSERT_EQ(hds[(s * (ldh / 32) + b) * 2], ds[0]);
      ASSERT_NEAR(hds[(s * (ldh / 32) + b) * 2 + 1], ds[1], 1e-5 * 32 * 127 * ds[0]);
    }
  }
}

}  // namespace rs::testing_kernels
