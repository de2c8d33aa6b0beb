// The dense FFN's fused up kernel (kernels/cuda/ffn_up_kernel.cuh): its problem and its check,
// shared by the emulation test (ffn_up_emu_test) and the device test (cuda_ffn_up_test). The
// reference sums the same per-unit dot products (matvec_fmt.cuh; the formats themselves are
// checked against the CPU reference in cuda_emulation_test) in row order: h against
// silu(gate . x) * (up . x) over the given q8 activations, h's q8 blocks against quantize_act's,
// and nothing written outside h's I columns.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>
#include <random>
#include <vector>

#include "kernels/cuda/matvec_fmt.cuh"
#include "kernels/formats.h"
#include "kernels/ops.h"
#include "tests/cuda/kernel_check.h"

namespace rs::testing_kernels {

struct FfnUpCase {
  GgmlType type;
  int64_t N, H, I, ldh;  // ldh >= I: h's row pitch (the columns past I must stay untouched)
  bool q8_out;           // also h's q8 blocks (I a multiple of 32)
};
inline void PrintTo(const FfnUpCase& c, std::ostream* os) {
  *os << type_name(c.type) << " N=" << c.N << " H=" << c.H << " I=" << c.I << " ldh=" << c.ldh
      << (c.q8_out ? " q8" : "");
}

struct FfnUpProblem {
  FfnUpCase c;
  size_t rb = 0;
  std::vector<uint8_t> gate, up;  // [I][H] each
  std::vector<float> x;           // [N][H]
  std::vector<int8_t> xq;         // q8 of x (integer formats)
  std::vector<float> xds;
  bool q8 = false;
};

inline FfnUpProblem make_ffn_up(const FfnUpCase& c) {
  FfnUpProblem p;
  p.c = c;
  std::mt19937 rng(29 + static_cast<int>(c.type) + static_cast<int>(c.I));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto rnd = [&](int64_t n, float s) {
    std::vector<float> v(n);
    for (auto& x : v) x = s * nd(rng);
    return v;
  };
  p.rb = row_bytes(c.type, c.H);
  p.gate = quantize_rows(c.type, rnd(c.I * c.H, 0.2f), c.I, c.H);
  p.up = quantize_rows(c.type, rnd(c.I * c.H, 0.2f), c.I, c.H);
  p.x = rnd(c.N * c.H, 1.0f);
  p.q8 = c.type != GgmlType::F32 && c.type != GgmlType::F16 && c.type != GgmlType::BF16;
  if (p.q8) {
    p.xq.resize(c.N * c.H);
    p.xds.resize(c.N * c.H / 32 * 2);
    for (int64_t t = 0; t < c.N; ++t)
      quantize_q8(p.x.data() + t * c.H, c.H, p.xq.data() + t * c.H,
                  p.xds.data() + t * (c.H / 32) * 2);
  }
  return p;
}

// h: [N][ldh] as the kernel left it (the columns past I were `poison`); hq/hds: its q8 blocks
// (null when not asked for).
inline void check_ffn_up(const FfnUpProblem& p, const std::vector<float>& h, float poison,
                         const int8_t* hq, const float* hds) {
  using cuda::detail::ActDev;
  using cuda::detail::Fmt;
  const FfnUpCase& c = p.c;
  const auto dot = [&](const uint8_t* row, const ActDev& a) {
    float acc[1] = {0.0f};
    RS_CUDA_TYPE_SWITCH(c.type, {
      for (int64_t u = 0; u < Fmt<kT>::units(c.H); ++u) Fmt<kT>::template dot<1>(row, u, a, acc);
    })
    return static_cast<double>(acc[0]);
  };
  double err = 0, scale = 1e-12;
  for (int64_t t = 0; t < c.N; ++t) {
    const ActDev a{p.x.data() + t * c.H, c.H, p.q8 ? p.xq.data() + t * c.H : nullptr,
                   p.q8 ? reinterpret_cast<const float2*>(p.xds.data()) + t * (c.H / 32)
                        : nullptr,
                   c.H};
    for (int64_t r = 0; r < c.I; ++r) {
      const double want = silu(static_cast<float>(dot(p.gate.data() + r * p.rb, a))) *
                          dot(p.up.data() + r * p.rb, a);
      const double e = std::fabs(h[t * c.ldh + r] - want);
      if (!(e <= err)) err = e;  // NaN sticks
      scale = std::max(scale, std::fabs(want));
    }
    for (int64_t r = c.I; r < c.ldh; ++r)
      ASSERT_TRUE(std::memcmp(&h[t * c.ldh + r], &poison, 4) == 0) << "h[" << t << "][" << r
                                                                    << "] written past I";
  }
  EXPECT_LE(err / scale, 1e-5) << "SwiGLU output h";
  if (hq == nullptr) return;
  std::vector<int8_t> q(32);
  std::vector<float> ds(2);
  for (int64_t t = 0; t < c.N; ++t)
    for (int64_t b = 0; b < c.I / 32; ++b) {
      quantize_q8(h.data() + t * c.ldh + b * 32, 32, q.data(), ds.data());
      for (int i = 0; i < 32; ++i)
        ASSERT_EQ(hq[t * c.I + b * 32 + i], q[i]) << "token " << t << " block " << b;
      ASSERT_EQ(hds[(t * (c.I / 32) + b) * 2], ds[0]);
      ASSERT_NEAR(hds[(t * (c.I / 32) + b) * 2 + 1], ds[1], 1e-5 * 32 * 127 * ds[0]);
    }
}

inline std::vector<FfnUpCase> ffn_up_cases() {
  return {
      // Partial last tile (I = 40), one token; float formats need no q8 of h.
      {GgmlType::F32, 1, 64, 40, 44, false},
      {GgmlType::F16, 3, 96, 64, 64, false},
      {GgmlType::BF16, 2, 64, 96, 100, false},
      {GgmlType::Q8_0, 1, 64, 160, 160, true},
      {GgmlType::Q4_0, 5, 64, 96, 104, true},
      // H of 1024: more units than one pass of the warp's lanes.
      {GgmlType::Q4_K, 1, 1024, 96, 96, true},
      {GgmlType::Q4_K, 8, 256, 64, 64, true},
      {GgmlType::Q5_K, 4, 512, 32, 36, true},
      {GgmlType::Q6_K, 7, 256, 128, 128, true},
      {GgmlType::IQ4_XS, 2, 512, 64, 64, true},
      {GgmlType::Q8_0, 6, 96, 200, 200, false},  // the kernel alone: a partial tile, no q8
  };
}

}  // namespace rs::testing_kernels
