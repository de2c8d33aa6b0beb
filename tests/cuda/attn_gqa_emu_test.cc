// Split-K attention's first pass, per KV head (GQA, kernels/cuda/attn_gqa_kernel.cuh) and per
// query head in tiles of 32 positions (kernels/cuda/attn_tile_kernel.cuh), built for the host and
// run through the SIMT emulator: its {m, l, acc} records, merged on the host as the device's
// merge kernel does, against attention_ref; decode (one token, positions from the device array)
// and short prefill pieces, F32 / F16 / Q8_0 caches, chunks with partial tiles and chunks past
// the causal end. Runs everywhere (no GPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/attn_gqa_kernel.cuh"
#include "kernels/cuda/attn_tile_kernel.cuh"
#include "tests/cuda/kernel_check.h"

namespace rs::cuda::detail {
namespace {

struct Case {
  GgmlType kv;
  int64_t T, n_past, nh, nkv, hd, chunk;
  bool positions;  // pos array (attention_at) rather than n_past
};

template <int DPL>
std::string run(const Case& c, const testing_kernels::AttnProblem& p, const int64_t* pos,
                float* ws, int64_t n_chunks, bool tile) {
  const AttnKv k{c.kv, p.k.data(), c.nkv, p.rb}, v{c.kv, p.v.data(), c.nkv, p.rb};
  const int64_t group = c.nh / c.nkv;
  if (tile)
    return simt::launch({static_cast<unsigned>(c.T * c.nh), static_cast<unsigned>(n_chunks)},
                        {32u}, 0, attn_tile_partial_kernel<DPL>, p.q.data(), c.nh, group, k, v,
                        c.n_past, pos, p.scale, ws, n_chunks, c.chunk);
  return simt::launch({static_cast<unsigned>(c.T * c.nkv), static_cast<unsigned>(n_chunks)},
                      {static_cast<unsigned>(32 * group)}, 0, attn_gqa_partial_kernel<DPL>,
                      p.q.data(), c.nh, group, k, v, c.n_past, pos, p.scale, ws, n_chunks,
                      c.chunk);
}

class AttnGqaEmu : public ::testing::TestWithParam<Case> {};

void CheckMergedRecords(const Case& c, bool tile) {
  simt::set_order(c.hd % 64 ? simt::Order::kReverse : simt::Order::kShuffled, 6);
  const auto p = testing_kernels::make_attn(c.kv, c.T, c.n_past, c.nh, c.nkv, c.hd);
  const int64_t n_ctx = c.n_past + c.T, n_chunks = (n_ctx + c.chunk - 1) / c.chunk;
  std::vector<int64_t> pos(c.T);
  for (int64_t t = 0; t < c.T; ++t) pos[t] = c.n_past + t;
  std::vector<float> ws(c.T * c.nh * n_chunks * (c.hd + 2), NAN);
  std::string err = "unsupported head_dim";
  const int64_t* pp = c.positions ? pos.data() : nullptr;
  const int64_t np = c.positions ? 0 : c.n_past;
  Case cc = c;
  cc.n_past = np;
  switch (c.hd) {
    case 32: err = run<1>(cc, p, pp, ws.data(), n_chunks, tile); break;
    case 64: err = run<2>(cc, p, pp, ws.data(), n_chunks, tile); break;
    case 128: err = run<4>(cc, p, pp, ws.data(), n_chunks, tile); break;
    case 256: err = run<8>(cc, p, pp, ws.data(), n_chunks, tile); break;
    default: break;
  }
  ASSERT_EQ(err, "");
  // The merge of attn_merge_kernel: out = sum_c acc_c e^(m_c - M) / sum_c l_c e^(m_c - M).
  std::vector<float> got(c.T * c.nh * c.hd);
  for (int64_t th = 0; th < c.T * c.nh; ++th) {
    const float* part = ws.data() + th * n_chunks * (c.hd + 2);
    double M = -INFINITY;
    for (int64_t ch = 0; ch < n_chunks; ++ch) M = std::max<double>(M, part[ch * (c.hd + 2)]);
    double L = 0;
    std::vector<double> acc(c.hd, 0.0);
    for (int64_t ch = 0; ch < n_chunks; ++ch) {
      const float* pc = part + ch * (c.hd + 2);
      if (pc[1] == 0.0f) continue;  // empty chunk (past the token's causal end)
      const double f = std::exp(pc[0] - M);
      L += pc[1] * f;
      for (int64_t i = 0; i < c.hd; ++i) acc[i] += pc[2 + i] * f;
    }
    for (int64_t i = 0; i < c.hd; ++i) got[th * c.hd + i] = static_cast<float>(acc[i] / L);
  }
  EXPECT_LE(testing_kernels::max_abs(got, p.want), 2e-5) << (tile ? "tile" : "gqa");
  simt::set_order(simt::Order::kForward);
}

TEST_P(AttnGqaEmu, MergedRecordsMatchAttentionRef) { CheckMergedRecords(GetParam(), false); }
TEST_P(AttnGqaEmu, TileRecordsMatchAttentionRef) { CheckMergedRecords(GetParam(), true); }

// A decode batch (AttnKv::tok): token t of B reads its own sequence's cache, of its own length,
// with the split sized for the longest; each token's merged output equals attention_ref on its
// own sequence.
TEST(AttnGqaEmuBatch, EachTokenOnItsOwnCache) {
  for (const GgmlType kv : {GgmlType::F16, GgmlType::Q8_0}) {
    const int64_t B = 3, nh = 8, nkv = 2, hd = 64, chunk = 16;
    const int64_t n_past[B] = {40, 5, 23};
    const int64_t max_ctx = 41, n_chunks = (max_ctx + chunk - 1) / chunk;
    const size_t rb = row_bytes(kv, nkv * hd);
    std::mt19937 rng(static_cast<uint32_t>(kv) + 17);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<std::vector<uint8_t>> K(B), V(B);
    std::vector<const uint8_t*> kp(B), vp(B);
    std::vector<float> q(B * nh * hd), want(B * nh * hd);
    std::vector<int64_t> pos(B);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    std::vector<float> tmp(nkv * hd);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n_pos = n_past[b] + 1;
      K[b].resize(n_pos * rb);
      V[b].resize(n_pos * rb);
      for (int64_t i = 0; i < n_pos; ++i) {
        for (auto& x : tmp) x = nd(rng);
        quantize_row_ref(kv, tmp.data(), K[b].data() + i * rb, nkv * hd);
        for (auto& x : tmp) x = nd(rng);
        quantize_row_ref(kv, tmp.data(), V[b].data() + i * rb, nkv * hd);
      }
      for (int64_t i = 0; i < nh * hd; ++i) q[b * nh * hd + i] = 2.0f * nd(rng);
      kp[b] = K[b].data();
      vp[b] = V[b].data();
      pos[b] = n_past[b];
      attention_ref(q.data() + b * nh * hd, 1, nh, hd, KvView{kv, K[b].data(), nkv, hd, rb, 0},
                    KvView{kv, V[b].data(), nkv, hd, rb, 0}, n_past[b], scale,
                    want.data() + b * nh * hd);
    }
    const AttnKv k{kv, nullptr, nkv, rb, kp.data()}, v{kv, nullptr, nkv, rb, vp.data()};
    for (const bool tile : {false, true}) {
      std::vector<float> ws(B * nh * n_chunks * (hd + 2), NAN);
      const std::string err =
          tile ? simt::launch({static_cast<unsigned>(B * nh), static_cast<unsigned>(n_chunks)},
                              {32u}, 0, attn_tile_partial_kernel<2>, q.data(), nh, nh / nkv, k, v,
                              int64_t{0}, pos.data(), scale, ws.data(), n_chunks, chunk)
               : simt::launch({static_cast<unsigned>(B * nkv), static_cast<unsigned>(n_chunks)},
                              {static_cast<unsigned>(32 * (nh / nkv))}, 0,
                              attn_gqa_partial_kernel<2>, q.data(), nh, nh / nkv, k, v, int64_t{0},
                              pos.data(), scale, ws.data(), n_chunks, chunk);
      ASSERT_EQ(err, "");
      std::vector<float> got(B * nh * hd);
      for (int64_t th = 0; th < B * nh; ++th) {
        const float* part = ws.data() + th * n_chunks * (hd + 2);
        double M = -INFINITY, L = 0;
        for (int64_t ch = 0; ch < n_chunks; ++ch) M = std::max<double>(M, part[ch * (hd + 2)]);
        std::vector<double> acc(hd, 0.0);
        for (int64_t ch = 0; ch < n_chunks; ++ch) {
          const float* pc = part + ch * (hd + 2);
          if (pc[1] == 0.0f) continue;
          const double f = std::exp(pc[0] - M);
          L += pc[1] * f;
          for (int64_t i = 0; i < hd; ++i) acc[i] += pc[2 + i] * f;
        }
        for (int64_t i = 0; i < hd; ++i) got[th * hd + i] = static_cast<float>(acc[i] / L);
      }
      EXPECT_LE(testing_kernels::max_abs(got, want), 2e-5)
          << type_name(kv) << (tile ? " tile" : " gqa");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttnGqaEmu,
    ::testing::Values(Case{GgmlType::F16, 1, 300, 16, 2, 256, 32, true},   // 35b decode
                      Case{GgmlType::Q8_0, 1, 77, 6, 1, 128, 32, true},
                      Case{GgmlType::F32, 3, 40, 4, 2, 64, 16, false},    // causal, empty chunks
                      Case{GgmlType::F16, 2, 13, 16, 1, 32, 8, true},     // group 16
                      Case{GgmlType::F32, 2, 100, 4, 4, 128, 64, true},   // 2 tiles a chunk
                      Case{GgmlType::Q8_0, 1, 70, 2, 2, 64, 96, false}),  // partial last tile
    [](const auto& info) {
      const Case& c = info.param;
      return std::string(type_name(c.kv)) + "_T" + std::to_string(c.T) + "_past" +
             std::to_string(c.n_past) + "_g" + std::to_string(c.nh / c.nkv) + "_hd" +
             std::to_string(c.hd) + "_c" + std::to_string(c.chunk);
    });

}  // namespace
}  // namespace rs::cuda::detail
