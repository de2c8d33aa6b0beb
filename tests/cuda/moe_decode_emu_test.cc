// The fused MoE decode kernels (kernels/cuda/moe_decode_kernel.cuh) built for the host and run
// through the SIMT emulator against a per-slot reference: routed and shared experts, every
// weight format, awkward row counts (partial tiles, a shared expert wider or narrower than the
// routed ones), more slots than one warp pass takes, a skipped (negative) id, accumulate.
// Runs everywhere (no GPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/moe_decode_kernel.cuh"
#include "kernels/formats.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "tests/cuda/kernel_check.h"

namespace rs::cuda::moed {
namespace {

struct Case {
  GgmlType type;
  int64_t E, k, N, H, I, Is;  // Is == 0: no shared expert
  bool fused;                 // gate|up in one tensor
  bool negative_id;           // token 0's slot 1 is skipped
  bool accumulate;
};

// quantize_act's q8 blocks: d = amax / 127, q = rint(x / d), and the exact sum.
void quantize_q8(const float* x, int64_t n, int8_t* q, float* ds) {
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

std::string run_up(GgmlType t, const UpArgs& a) {
  std::string err = "unsupported type";
  RS_CUDA_TYPE_SWITCH(t, err = simt::launch({static_cast<unsigned>(up_tiles(a)),
                                             static_cast<unsigned>(up_slots(a))},
                                            {kUpThreads}, 0, moe_up_kernel<kT>, a));
  return err;
}
std::string run_down(GgmlType t, const DownArgs& a) {
  std::string err = "unsupported type";
  RS_CUDA_TYPE_SWITCH(t, err = simt::launch({static_cast<unsigned>((a.H + kDownRows - 1) / kDownRows),
                                             static_cast<unsigned>(a.n_tok)},
                                            {kDownThreads}, 0, moe_down_kernel<kT>, a));
  return err;
}

class MoeDecodeEmu : public ::testing::TestWithParam<Case> {};

TEST_P(MoeDecodeEmu, MatchesPerSlotReference) {
  const Case c = GetParam();
  simt::set_order(c.E % 2 ? simt::Order::kReverse : simt::Order::kShuffled, 11);
  const bool use_q8 = c.type != GgmlType::F32 && c.type != GgmlType::F16 && c.type != GgmlType::BF16;
  std::mt19937 rng(17 + static_cast<int>(c.type));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto rnd = [&](int64_t n, float s) {
    std::vector<float> v(n);
    for (auto& x : v) x = s * nd(rng);
    return v;
  };
  const int64_t H = c.H, I = c.I, Is = c.Is, k = c.k, N = c.N, E = c.E;
  const size_t hrb = row_bytes(c.type, H), irb = row_bytes(c.type, I);
  // gate and up of every expert (fused: [E][2I][H]; else two [E][I][H]), down [E][H][I].
  const std::vector<float> gate_f = rnd(E * I * H, 0.2f), up_f = rnd(E * I * H, 0.2f);
  const std::vector<float> down_f = rnd(E * H * I, 0.1f);
  std::vector<float> fused_f;
  for (int64_t e = 0; e < E; ++e) {
    fused_f.insert(fused_f.end(), gate_f.begin() + e * I * H, gate_f.begin() + (e + 1) * I * H);
    fused_f.insert(fused_f.end(), up_f.begin() + e * I * H, up_f.begin() + (e + 1) * I * H);
  }
  const auto gate_q = testing_kernels::quantize_rows(c.type, gate_f, E * I, H);
  const auto up_q = testing_kernels::quantize_rows(c.type, up_f, E * I, H);
  const auto fused_q = testing_kernels::quantize_rows(c.type, fused_f, E * 2 * I, H);
  const auto down_q = testing_kernels::quantize_rows(c.type, down_f, E * H, I);
  const int64_t Iss = std::max<int64_t>(Is, 32);
  const auto sg_q = testing_kernels::quantize_rows(c.type, rnd(Iss * H, 0.2f), Iss, H);
  const auto su_q = testing_kernels::quantize_rows(c.type, rnd(Iss * H, 0.2f), Iss, H);
  const size_t isrb = row_bytes(c.type, Iss);
  const auto sd_q = testing_kernels::quantize_rows(c.type, rnd(H * Iss, 0.1f), H, Iss);
  const std::vector<float> x = rnd(N * H, 1.0f);
  const std::vector<float> sh_logit = rnd(N, 1.0f);
  std::vector<int32_t> ids(N * k);
  std::vector<float> w(N * k);
  for (int64_t t = 0; t < N; ++t) {
    std::vector<int32_t> pool(E);
    for (int32_t e = 0; e < E; ++e) pool[e] = e;
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int64_t i = 0; i < k; ++i) {
      ids[t * k + i] = pool[i];
      w[t * k + i] = 0.3f + 0.1f * static_cast<float>(i) + 0.05f * static_cast<float>(t);
    }
  }
  if (c.negative_id) ids[1] = -1;

  std::vector<int8_t> xq(N * H);
  std::vector<float> xds(N * H / 32 * 2);
  if (use_q8)
    for (int64_t t = 0; t < N; ++t) quantize_q8(x.data() + t * H, H, xq.data() + t * H, xds.data() + t * (H / 32) * 2);
  const int64_t S = N * k + (Is ? N : 0);
  const int64_t ldh = (std::max(I, Is) + 31) / 32 * 32;
  std::vector<float> h(S * ldh, NAN);
  std::vector<int8_t> hq(S * ldh, 0);
  std::vector<float> hds(S * ldh / 32 * 2, NAN);

  UpArgs ua;
  ua.gate = c.fused ? fused_q.data() : gate_q.data();
  ua.up = c.fused ? fused_q.data() + I * hrb : up_q.data();
  ua.expert_stride = (c.fused ? 2 : 1) * I * hrb;
  ua.I = I;
  if (Is) {
    ua.sh_gate = sg_q.data();
    ua.sh_up = su_q.data();
    ua.Is = Is;
  }
  ua.row_stride = hrb;
  ua.H = H;
  ua.ids = ids.data();
  ua.k = k;
  ua.n_tok = N;
  ua.x = x.data();
  ua.xq = use_q8 ? xq.data() : nullptr;
  ua.xds = use_q8 ? xds.data() : nullptr;
  ua.h = h.data();
  ua.hq = use_q8 ? hq.data() : nullptr;
  ua.hds = use_q8 ? hds.data() : nullptr;
  ua.ldh = ldh;
  ASSERT_EQ(run_up(c.type, ua), "");

  DownArgs da;
  da.down = down_q.data();
  da.expert_stride = H * irb;
  da.row_stride = irb;
  da.I = I;
  if (Is) {
    da.sh_down = sd_q.data();
    da.sh_row_stride = isrb;
    da.Is = Is;
    da.sh_logit = sh_logit.data();
  }
  da.H = H;
  da.ids = ids.data();
  da.w = w.data();
  da.k = k;
  da.n_tok = N;
  da.h = h.data();
  da.hq = ua.hq;
  da.hds = ua.hds;
  da.ldh = ldh;
  std::vector<float> out(N * H);
  for (int64_t i = 0; i < N * H; ++i) out[i] = c.accumulate ? 0.5f * static_cast<float>(i % 7) : NAN;
  const std::vector<float> out0 = out;
  da.out = out.data();
  da.accumulate = c.accumulate;
  ASSERT_EQ(run_down(c.type, da), "");

  // Reference, slot by slot: the same per-unit dot products (matvec_fmt.cuh; their formats are
  // checked against the CPU reference in cuda_emulation_test) summed in row order. The up
  // kernel's h against silu(gate) * up; the down kernel against the weighted sum over the up
  // kernel's own h (and its q8 blocks, checked below), so each kernel is checked on its own.
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
    const ActDev xa = token_act(x.data(), ua.xq, ua.xds, H, H, t);
    for (int64_t j = 0; j < rows; ++j) {
      const double hh = silu(static_cast<float>(dot(gw + j * hrb, H, xa))) *
                        dot(uw + j * hrb, H, xa);
      const double e = std::fabs(h[slot * ldh + j] - hh);
      if (!(e <= h_err)) h_err = e;  // NaN sticks
      h_scale = std::max(h_scale, std::fabs(hh));
    }
    const ActDev ha = token_act(h.data(), ua.hq, ua.hds, rows, ldh, slot);
    for (int64_t j = 0; j < H; ++j) want[t * H + j] += weight * dot(dw + j * drb, rows, ha);
  };
  for (int64_t t = 0; t < N; ++t) {
    for (int64_t i = 0; i < k; ++i) {
      const int32_t e = ids[t * k + i];
      if (e < 0) continue;
      expert(t * k + i, t, gate_q.data() + e * I * hrb, up_q.data() + e * I * hrb,
             down_q.data() + e * H * irb, irb, I, w[t * k + i]);
    }
    if (Is)
      expert(N * k + t, t, sg_q.data(), su_q.data(), sd_q.data(), isrb, Is,
             1.0 / (1.0 + std::exp(-static_cast<double>(sh_logit[t]))));
  }
  for (int64_t i = 0; i < N * H; ++i) want[i] += c.accumulate ? out0[i] : 0.0f;
  EXPECT_LE(h_err / h_scale, 1e-5) << "SwiGLU output h";
  EXPECT_LE(testing_kernels::max_rel(out, want), 1e-5) << "combined output";
  // h's q8 blocks are those of quantize_act.
  if (use_q8) {
    std::vector<int8_t> q(32);
    std::vector<float> ds(2);
    for (int64_t s = 0; s < S; ++s) {
      if (s < N * k && ids[s] < 0) continue;
      const int64_t rows = s < N * k ? I : Is;
      for (int64_t b = 0; b < rows / 32; ++b) {
        quantize_q8(h.data() + s * ldh + b * 32, 32, q.data(), ds.data());
        for (int i = 0; i < 32; ++i) ASSERT_EQ(hq[s * ldh + b * 32 + i], q[i]) << s << " " << b;
        ASSERT_EQ(hds[(s * (ldh / 32) + b) * 2], ds[0]);
        // The exact sum, up to summation order (a shuffle tree on the device).
        ASSERT_NEAR(hds[(s * (ldh / 32) + b) * 2 + 1], ds[1], 1e-5 * 32 * 127 * ds[0]);
      }
    }
  }
  simt::set_order(simt::Order::kForward);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, MoeDecodeEmu,
    ::testing::Values(
        // k = 8 routed over I = 256 F32 rows: two warp passes of the down kernel.
        Case{GgmlType::F32, 10, 8, 2, 64, 256, 40, false, false, false},
        Case{GgmlType::F32, 5, 2, 3, 64, 40, 24, true, true, true},
        Case{GgmlType::F16, 6, 3, 2, 96, 64, 96, false, false, true},
        Case{GgmlType::BF16, 5, 2, 1, 64, 48, 0, true, false, false},
        Case{GgmlType::Q8_0, 7, 2, 1, 64, 160, 32, false, true, false},
        Case{GgmlType::Q4_0, 5, 3, 2, 64, 96, 64, true, false, false},
        Case{GgmlType::Q4_K, 6, 3, 2, 256, 256, 512, true, false, true},
        Case{GgmlType::Q5_K, 5, 2, 1, 256, 256, 256, false, true, false},
        Case{GgmlType::Q6_K, 4, 2, 2, 512, 256, 0, false, false, false},
        Case{GgmlType::IQ4_XS, 7, 3, 1, 256, 256, 256, true, true, false}),
    [](const auto& info) { return std::string(type_name(info.param.type)) + "_" + std::to_string(info.index); });

}  // namespace
}  // namespace rs::cuda::moed
