// Each CUDA op of kernels/cuda/cuda_ops.h against its CPU reference (kernels/ops.h `_ref`) on
// random inputs at awkward sizes. Skips, saying why, where no CUDA device is usable. Outputs
// are poisoned (0xFF bytes = NaN) before each run so unwritten elements fail.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda/cuda_glue.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/formats.h"
#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace rs::cuda {
namespace {

using testing::download;
using testing::max_rel_err;
using testing::poisoned;
using testing::upload;

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

// ---- norms ----------------------------------------------------------------------------------
class CudaNormTest : public ::testing::TestWithParam<std::tuple<int64_t, int64_t>> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaNormTest, RmsNormPlainGatedAndL2MatchReference) {
  const auto [rows, n] = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(rows * 131 + n));
  const std::vector<float> x = testing::randn(rng, rows * n, 3.0f);
  const std::vector<float> w = testing::uniform(rng, n, 0.5f, 1.5f);
  const std::vector<float> z = testing::randn(rng, rows * n);
  const float eps = 1e-6f;
  std::vector<float> ref(rows * n), ref_g(rows * n), ref_l2 = x;
  rms_norm_ref(x.data(), w.data(), rows, n, eps, ref.data());
  rms_norm_gated_ref(x.data(), w.data(), z.data(), rows, n, eps, ref_g.data());
  l2_norm_ref(ref_l2.data(), rows, n, eps);

  DeviceBuffer dx = upload(x), dw = upload(w), dz = upload(z);
  DeviceBuffer dy = poisoned<float>(rows * n), dyg = poisoned<float>(rows * n);
  RS_ASSERT_OK(rms_norm(dx.as<float>(), dw.as<float>(), rows, n, eps, dy.as<float>()));
  RS_ASSERT_OK(rms_norm_gated(dx.as<float>(), dw.as<float>(), dz.as<float>(), rows, n, eps,
                              dyg.as<float>()));
  EXPECT_LT(max_rel_err(download<float>(dy, rows * n), ref, 1e-6), 2e-6);
  EXPECT_LT(max_rel_err(download<float>(dyg, rows * n), ref_g, 1e-6), 2e-6);
  // In place, as the model uses it.
  RS_ASSERT_OK(rms_norm(dx.as<float>(), dw.as<float>(), rows, n, eps, dx.as<float>()));
  EXPECT_LT(max_rel_err(download<float>(dx, rows * n), ref, 1e-6), 2e-6);
  DeviceBuffer dl2 = upload(x);
  RS_ASSERT_OK(l2_norm(dl2.as<float>(), rows, n, eps));
  EXPECT_LT(max_rel_err(download<float>(dl2, rows * n), ref_l2, 1e-6), 2e-6);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaNormTest,
                         ::testing::Combine(::testing::Values(int64_t{1}, int64_t{3}, int64_t{7}),
                                            ::testing::Values(int64_t{1}, int64_t{33},
                                                              int64_t{128}, int64_t{2048},
                                                              int64_t{5000})));

// ---- RoPE -------------------------------------------------------------------------------------
TEST_F(CudaOps, RopeNeoxMatchesReference) {
  for (const auto& [n_tok, heads, hd, n_rot] :
       {std::tuple<int64_t, int64_t, int64_t, int64_t>{5, 3, 256, 64}, {1, 16, 256, 64},
        {9, 2, 64, 64}, {4, 5, 96, 32}}) {
    std::mt19937 rng(static_cast<uint32_t>(n_tok * 17 + heads + hd + n_rot));
    std::vector<float> x = testing::randn(rng, n_tok * heads * hd);
    std::vector<int64_t> pos(n_tok);
    for (int64_t t = 0; t < n_tok; ++t) pos[t] = static_cast<int64_t>(rng() % 5000);
    std::vector<float> ref = x;
    rope_neox_ref(ref.data(), n_tok, heads, hd, n_rot, pos.data(), 1e7f);
    DeviceBuffer dx = upload(x), dpos = upload(pos);
    RS_ASSERT_OK(rope_neox(dx.as<float>(), n_tok, heads, hd, n_rot, dpos.as<int64_t>(), 1e7f));
    // sin/cos of angles up to ~5000 rad: a few ulps of the angle.
    EXPECT_LT(max_rel_err(download<float>(dx, x.size()), ref, 1e-6), 2e-4)
        << n_tok << "x" << heads << "x" << hd << " rot " << n_rot;
  }
}

// ---- SwiGLU, router -------------------------------------------------------------------------------
TEST_F(CudaOps, SwigluMatchesReference) {
  std::mt19937 rng(5);
  const int64_t n = 1000003;
  const std::vector<float> g = testing::randn(rng, n, 4.0f), u = testing::randn(rng, n);
  std::vector<float> ref(n);
  swiglu_ref(g.data(), u.data(), n, ref.data());
  DeviceBuffer dg = upload(g), du = upload(u), dy = poisoned<float>(n);
  RS_ASSERT_OK(swiglu(dg.as<float>(), du.as<float>(), n, dy.as<float>()));
  EXPECT_LT(max_rel_err(download<float>(dy, n), ref, 1e-6), 1e-6);
}

TEST_F(CudaOps, RouterTopkMatchesReference) {
  for (const auto& [n_tok, E, k] : {std::tuple<int64_t, int64_t, int64_t>{3, 256, 8}, {2, 60, 4},
                                    {1, 512, 10}, {4, 7, 7}}) {
    std::mt19937 rng(static_cast<uint32_t>(E + k));
    std::vector<float> logits = testing::randn(rng, n_tok * E, 2.0f);
    if (E > 8) logits[3] = logits[5];  // a tie: the lower index goes first
    std::vector<int32_t> ref_ids(n_tok * k);
    std::vector<float> ref_w(n_tok * k);
    for (int64_t t = 0; t < n_tok; ++t)
      router_topk_ref(&logits[t * E], E, k, &ref_ids[t * k], &ref_w[t * k]);
    DeviceBuffer dl = upload(logits), dids = poisoned<int32_t>(n_tok * k),
                 dw = poisoned<float>(n_tok * k);
    RS_ASSERT_OK(router_topk(dl.as<float>(), n_tok, E, k, dids.as<int32_t>(), dw.as<float>()));
    EXPECT_EQ(download<int32_t>(dids, n_tok * k), ref_ids) << "E " << E << " k " << k;
    EXPECT_LT(max_rel_err(download<float>(dw, n_tok * k), ref_w, 1e-6), 1e-6);
  }
}

// router_fused (matvec + top-k in one launch) equals matvec + router_topk: the same logits, ids
// and weights; the shared gate's logit; the counter back at 0; run twice.
TEST_F(CudaOps, RouterFusedEqualsMatvecThenTopk) {
  for (const auto& [n_tok, E, H, k] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{1, 256, 2048, 8},
                                       {3, 60, 512, 4}, {8, 512, 1024, 10}}) {
    std::mt19937 rng(static_cast<uint32_t>(E + H));
    const std::vector<float> w = testing::randn(rng, E * H, 0.05f), sh = testing::randn(rng, H, 0.05f);
    const std::vector<float> x = testing::randn(rng, n_tok * H);
    DeviceBuffer dw = upload(w), dsh = upload(sh), dx = upload(x),
                 cnt = upload(std::vector<int32_t>{0});
    const WeightView router{GgmlType::F32, dw.get(), H, E, static_cast<size_t>(H) * 4};
    const WeightView gate{GgmlType::F32, dsh.get(), H, 1, static_cast<size_t>(H) * 4};
    DeviceBuffer l1 = poisoned<float>(n_tok * E), l2 = poisoned<float>(n_tok * E),
                 s1 = poisoned<float>(n_tok), s2 = poisoned<float>(n_tok),
                 i1 = poisoned<int32_t>(n_tok * k), i2 = poisoned<int32_t>(n_tok * k),
                 w1 = poisoned<float>(n_tok * k), w2 = poisoned<float>(n_tok * k);
    for (int rep = 0; rep < 2; ++rep)
      RS_ASSERT_OK(router_fused(router, &gate, dx.as<float>(), n_tok, k, l1.as<float>(),
                                s1.as<float>(), i1.as<int32_t>(), w1.as<float>(), cnt.as<int>()));
    const DeviceAct a{dx.as<float>(), H, nullptr, nullptr, H, n_tok};
    RS_ASSERT_OK(matvec(router, a, l2.as<float>(), E));
    RS_ASSERT_OK(matvec(gate, a, s2.as<float>(), 1));
    RS_ASSERT_OK(router_topk(l2.as<float>(), n_tok, E, k, i2.as<int32_t>(), w2.as<float>()));
    SCOPED_TRACE("E " + std::to_string(E) + " tokens " + std::to_string(n_tok));
    EXPECT_LT(max_rel_err(download<float>(l1, n_tok * E), download<float>(l2, n_tok * E), 1e-3),
              1e-6);
    EXPECT_LT(max_rel_err(download<float>(s1, n_tok), download<float>(s2, n_tok), 1e-3), 1e-6);
    EXPECT_EQ(download<int32_t>(i1, n_tok * k), download<int32_t>(i2, n_tok * k));
    EXPECT_LT(max_rel_err(download<float>(w1, n_tok * k), download<float>(w2, n_tok * k), 1e-6),
              1e-6);
    EXPECT_EQ(download<int32_t>(cnt, 1)[0], 0);
  }
  const WeightView q4{GgmlType::Q4_K, nullptr, 256, 8, 144};
  const absl::Status st = router_fused(q4, nullptr, nullptr, 1, 2, nullptr, nullptr, nullptr,
                                       nullptr, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
}

// ---- conv1d + SiLU with state ---------------------------------------------------------------------
TEST_F(CudaOps, Conv1dSiluCarriesStateAcrossCalls) {
  for (const auto& [C, K] : {std::tuple<int64_t, int64_t>{300, 4}, {5, 2}, {8192, 4}, {33, 1}}) {
    std::mt19937 rng(static_cast<uint32_t>(C + K));
    const std::vector<float> w = testing::randn(rng, C * K, 0.5f);
    std::vector<float> state = testing::randn(rng, (K - 1) * C);
    DeviceBuffer dw = upload(w), dstate = upload(state);
    for (int64_t T : {int64_t{1}, int64_t{2}, int64_t{7}, int64_t{1}}) {  // successive calls
      const std::vector<float> u = testing::randn(rng, T * C);
      std::vector<float> ref(T * C);
      conv1d_silu_ref(u.data(), T, C, w.data(), K, state.data(), ref.data());
      DeviceBuffer du = upload(u), dout = poisoned<float>(T * C);
      RS_ASSERT_OK(conv1d_silu(du.as<float>(), T, C, dw.as<float>(), K, dstate.as<float>(),
                               dout.as<float>()));
      EXPECT_LT(max_rel_err(download<float>(dout, T * C), ref, 1e-6), 2e-6)
          << "C " << C << " K " << K << " T " << T;
      if (K > 1) {
        EXPECT_EQ(download<float>(dstate, (K - 1) * C), state) << "state, C " << C << " T " << T;
      }
    }
  }
}

// ---- gated delta rule -------------------------------------------------------------------------
struct DeltaCase {
  int64_t T, Hk, Hv, dk, dv;
};

class CudaDeltaRuleTest : public ::testing::TestWithParam<DeltaCase> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

void make_delta_inputs(const DeltaNetDims& d, std::mt19937& rng, std::vector<float>* q,
                       std::vector<float>* k, std::vector<float>* v, std::vector<float>* g,
                       std::vector<float>* beta, std::vector<float>* S) {
  *q = testing::randn(rng, d.T * d.Hk * d.dk);
  *k = testing::randn(rng, d.T * d.Hk * d.dk);
  l2_norm_ref(q->data(), d.T * d.Hk, d.dk, 1e-6f);
  l2_norm_ref(k->data(), d.T * d.Hk, d.dk, 1e-6f);
  for (auto& x : *q) x /= std::sqrt(static_cast<float>(d.dk));
  *v = testing::randn(rng, d.T * d.Hv * d.dv);
  *g = testing::uniform(rng, d.T * d.Hv, -5.0f, 0.0f);
  *beta = testing::uniform(rng, d.T * d.Hv, 0.01f, 0.99f);
  *S = testing::randn(rng, d.Hv * d.dk * d.dv, 0.3f);
}

TEST_P(CudaDeltaRuleTest, MatchesRecurrentAndChunkedReference) {
  const DeltaCase c = GetParam();
  const DeltaNetDims d{c.T, c.Hk, c.Hv, c.dk, c.dv};
  std::mt19937 rng(static_cast<uint32_t>(c.T * 1000 + c.Hv * 10 + c.dk));
  std::vector<float> q, k, v, g, beta, S;
  make_delta_inputs(d, rng, &q, &k, &v, &g, &beta, &S);
  std::vector<float> ref_S = S, ref_out(d.T * d.Hv * d.dv);
  delta_rule_recurrent_ref(d, q.data(), k.data(), v.data(), g.data(), beta.data(), ref_S.data(),
                           ref_out.data());

  DeviceBuffer dq = upload(q), dk = upload(k), dv = upload(v), dg = upload(g), db = upload(beta),
               dS = upload(S), dout = poisoned<float>(ref_out.size());
  RS_ASSERT_OK(delta_rule(d, dq.as<float>(), dk.as<float>(), dv.as<float>(), dg.as<float>(),
                          db.as<float>(), dS.as<float>(), dout.as<float>()));
  const std::vector<float> out = download<float>(dout, ref_out.size());
  const std::vector<float> S1 = download<float>(dS, S.size());
  EXPECT_LT(max_rel_err(out, ref_out, 1e-3), 1e-4);
  EXPECT_LT(max_rel_err(S1, ref_S, 1e-3), 1e-4);

  if (c.T > 1) {  // the chunked reference (the prefill definition) agrees as well
    std::vector<float> ch_S = S, ch_out(ref_out.size());
    delta_rule_chunked_ref(d, q.data(), k.data(), v.data(), g.data(), beta.data(), ch_S.data(),
                           ch_out.data());
    EXPECT_LT(max_rel_err(out, ch_out, 1e-3), 2e-4);
    EXPECT_LT(max_rel_err(S1, ch_S, 1e-3), 2e-4);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaDeltaRuleTest,
                         ::testing::Values(DeltaCase{1, 16, 32, 128, 128},
                                           DeltaCase{3, 2, 6, 128, 128},
                                           DeltaCase{65, 3, 6, 64, 96},
                                           DeltaCase{130, 1, 2, 32, 32}),
                         [](const ::testing::TestParamInfo<DeltaCase>& info) {
                           const DeltaCase& c = info.param;
                           return "T" + std::to_string(c.T) + "_Hk" + std::to_string(c.Hk) +
                                  "_Hv" + std::to_string(c.Hv) + "_dk" + std::to_string(c.dk) +
                                  "_dv" + std::to_string(c.dv);
                         });

// ---- attention -------------------------------------------------------------------------------------
// (kv type, T, n_past, nh, nkv, hd)
using AttnParam = std::tuple<GgmlType, int64_t, int64_t, int64_t, int64_t, int64_t>;

class CudaAttentionTest : public ::testing::TestWithParam<AttnParam> {
 protected:
  void SetUp() override { RS_SKIP_WITHOUT_CUDA(); }
};

// A cache of n positions x nkv x hd encoded as `type`, with `pad` spare bytes per position.
std::vector<uint8_t> encode_cache(GgmlType type, const std::vector<float>& f, int64_t n,
                                  int64_t row, size_t stride) {
  std::vector<uint8_t> out(stride * n, 0);
  for (int64_t p = 0; p < n; ++p)
    quantize_row_ref(type, &f[p * row], out.data() + p * stride, row);
  return out;
}

TEST_P(CudaAttentionTest, MatchesReference) {
  const auto [type, T, n_past, nh, nkv, hd] = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(T * 7 + n_past * 3 + nh + hd + static_cast<int>(type)));
  const int64_t n = n_past + T, row = nkv * hd;
  const size_t stride = row_bytes(type, row) + 32;  // padded positions
  const std::vector<float> kf = testing::randn(rng, n * row), vf = testing::randn(rng, n * row);
  const std::vector<uint8_t> kc = encode_cache(type, kf, n, row, stride);
  const std::vector<uint8_t> vc = encode_cache(type, vf, n, row, stride);
  const std::vector<float> q = testing::randn(rng, T * nh * hd);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  KvView k{type, kc.data(), nkv, hd, stride}, v{type, vc.data(), nkv, hd, stride};
  std::vector<float> ref(T * nh * hd);
  attention_ref(q.data(), T, nh, hd, k, v, n_past, scale, ref.data());

  DeviceBuffer dk = upload(kc), dv = upload(vc), dq = upload(q), dout = poisoned<float>(ref.size());
  DeviceBuffer ws = poisoned<uint8_t>(attention_workspace_bytes(T, nh, hd, n_past));
  k.data = dk.get();
  v.data = dv.get();
  RS_ASSERT_OK(attention(dq.as<float>(), T, nh, hd, k, v, n_past, scale, dout.as<float>(),
                         ws.get(), ws.size()));
  EXPECT_LT(max_rel_err(download<float>(dout, ref.size()), ref, 1e-3), 2e-5);

  // attention_at: the positions from the device, the split sized for a longer context.
  std::vector<int64_t> pos(T);
  for (int64_t t = 0; t < T; ++t) pos[t] = n_past + t;
  const int64_t max_ctx = n + 777;
  DeviceBuffer dpos = upload(pos), dout2 = poisoned<float>(ref.size());
  DeviceBuffer ws2 = poisoned<uint8_t>(attention_workspace_bytes(T, nh, hd, max_ctx - T));
  RS_ASSERT_OK(attention_at(dq.as<float>(), T, nh, hd, k, v, dpos.as<int64_t>(), max_ctx, scale,
                            dout2.as<float>(), ws2.get(), ws2.size()));
  EXPECT_LT(max_rel_err(download<float>(dout2, ref.size()), ref, 1e-3), 2e-5);

  // Both again with the first pass per KV head (gqa): the same arithmetic per query head, so
  // the per-head pass's result up to the compiler's contraction choices.
  for (const bool at : {false, true}) {
    DeviceBuffer dout3 = poisoned<float>(ref.size());
    if (at)
      RS_ASSERT_OK(attention_at(dq.as<float>(), T, nh, hd, k, v, dpos.as<int64_t>(), max_ctx,
                                scale, dout3.as<float>(), ws2.get(), ws2.size(), nullptr, true));
    else
      RS_ASSERT_OK(attention(dq.as<float>(), T, nh, hd, k, v, n_past, scale, dout3.as<float>(),
                             ws.get(), ws.size(), nullptr, true));
    const std::vector<float> got = download<float>(dout3, ref.size());
    EXPECT_LT(max_rel_err(got, ref, 1e-3), 2e-5) << (at ? "attention_at" : "attention") << " gqa";
    EXPECT_LT(max_rel_err(got, download<float>(at ? dout2 : dout, ref.size()), 1e-3), 1e-6)
        << (at ? "attention_at" : "attention") << " gqa vs per head";
  }
}

std::string attn_name(const ::testing::TestParamInfo<AttnParam>& info) {
  const auto [type, T, n_past, nh, nkv, hd] = info.param;
  return std::string(type_name(type)) + "_T" + std::to_string(T) + "_past" +
         std::to_string(n_past) + "_nh" + std::to_string(nh) + "_kv" + std::to_string(nkv) +
         "_hd" + std::to_string(hd);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaAttentionTest,
    ::testing::Values(AttnParam{GgmlType::F16, 1, 0, 16, 2, 256},
                      AttnParam{GgmlType::F16, 1, 4095, 16, 2, 256},
                      AttnParam{GgmlType::F16, 1, 300, 24, 4, 256},
                      AttnParam{GgmlType::F32, 5, 513, 8, 8, 128},
                      AttnParam{GgmlType::Q8_0, 3, 257, 4, 2, 256},
                      AttnParam{GgmlType::F16, 70, 10, 4, 2, 64},
                      AttnParam{GgmlType::F32, 300, 0, 2, 1, 32}),
    attn_name);

// A decode batch: B sequences of different lengths, each token's K/V stored into its own cache
// (kv_store_kv_seqs_at) and its attention over that cache (attention_seqs_at), one launch each
// for the batch, against attention_ref per sequence.
TEST_F(CudaOps, DecodeBatchStoresAndAttendsPerSequence) {
  const int64_t nh = 16, nkv = 2, hd = 256, row = nkv * hd;
  const std::vector<int64_t> n_past = {0, 1, 300, 4095, 77};
  const int64_t B = static_cast<int64_t>(n_past.size()), cap = 4096 + 128;
  for (const GgmlType type : {GgmlType::F16, GgmlType::Q8_0}) {
    for (const bool gqa : {false, true}) {
      std::mt19937 rng(static_cast<uint32_t>(type) + (gqa ? 7 : 0));
      const size_t stride = row_bytes(type, row);
      const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
      std::vector<DeviceBuffer> dk, dv;
      std::vector<void*> kp, vp;
      std::vector<std::vector<float>> kf(B), vf(B);
      for (int64_t b = 0; b < B; ++b) {
        // Positions [0, n_past) already cached; the new token's row comes from the store.
        kf[b] = testing::randn(rng, (n_past[b] + 1) * row);
        vf[b] = testing::randn(rng, (n_past[b] + 1) * row);
        std::vector<uint8_t> kc = encode_cache(type, kf[b], n_past[b], row, stride);
        std::vector<uint8_t> vc = encode_cache(type, vf[b], n_past[b], row, stride);
        kc.resize(cap * stride, 0xFF);  // unwritten rows: NaN-ish poison
        vc.resize(cap * stride, 0xFF);
        dk.push_back(upload(kc));
        dv.push_back(upload(vc));
        kp.push_back(dk.back().get());
        vp.push_back(dv.back().get());
      }
      std::vector<float> knew(B * row), vnew(B * row);
      std::vector<int64_t> pos(B);
      for (int64_t b = 0; b < B; ++b) {
        std::copy_n(kf[b].begin() + n_past[b] * row, row, knew.begin() + b * row);
        std::copy_n(vf[b].begin() + n_past[b] * row, row, vnew.begin() + b * row);
        pos[b] = n_past[b];
      }
      const std::vector<float> q = testing::randn(rng, B * nh * hd);
      DeviceBuffer dkp = upload(kp), dvp = upload(vp), dkn = upload(knew), dvn = upload(vnew),
                   dpos = upload(pos), dq = upload(q), dout = poisoned<float>(B * nh * hd);
      RS_ASSERT_OK(kv_store_kv_seqs_at(dkn.as<float>(), dvn.as<float>(), B, row, type,
                                       dkp.as<void*>(), dvp.as<void*>(), stride,
                                       dpos.as<int64_t>()));
      const int64_t max_ctx = cap;
      DeviceBuffer ws = poisoned<uint8_t>(attention_seqs_workspace_bytes(B, nh, hd, max_ctx));
      const KvView view{type, nullptr, nkv, hd, stride};
      RS_ASSERT_OK(attention_seqs_at(dq.as<float>(), B, nh, hd, view, view,
                                     dkp.as<const void*>(), dvp.as<const void*>(),
                                     dpos.as<int64_t>(), max_ctx, scale, dout.as<float>(),
                                     ws.get(), ws.size(), nullptr, gqa));
      const std::vector<float> got = download<float>(dout, B * nh * hd);
      for (int64_t b = 0; b < B; ++b) {
        const std::vector<uint8_t> kc = encode_cache(type, kf[b], n_past[b] + 1, row, stride);
        const std::vector<uint8_t> vc = encode_cache(type, vf[b], n_past[b] + 1, row, stride);
        std::vector<float> ref(nh * hd);
        attention_ref(q.data() + b * nh * hd, 1, nh, hd, KvView{type, kc.data(), nkv, hd, stride},
                      KvView{type, vc.data(), nkv, hd, stride}, n_past[b], scale, ref.data());
        const std::vector<float> g(got.begin() + b * nh * hd, got.begin() + (b + 1) * nh * hd);
        EXPECT_LT(max_rel_err(g, ref, 1e-3), 2e-5)
            << type_name(type) << (gqa ? " gqa" : "") << " sequence " << b;
        // The stored rows are the reference encoding of the new token.
        std::vector<uint8_t> back(stride);
        RS_ASSERT_OK(copy_to_host(back.data(),
                                  static_cast<const uint8_t*>(kp[b]) + n_past[b] * stride, stride));
        EXPECT_TRUE(std::equal(back.begin(), back.end(), kc.begin() + n_past[b] * stride))
            << "K row of sequence " << b;
      }
    }
  }
}

// argmax_rows, split over chunks with a workspace and in one block per row without: rows at
// awkward lengths (up to a 248K vocabulary), ties to the lower index across chunk borders,
// -inf / NaN entries skipped, a row of only -inf giving 0.
TEST_F(CudaOps, ArgmaxRowsSplitAndWhole) {
  for (const int64_t n : {int64_t{1}, int64_t{37}, int64_t{4097}, int64_t{70001},
                          int64_t{248320}, int64_t{600000}}) {
    const int64_t rows = 5;
    std::mt19937 rng(static_cast<uint32_t>(n));
    std::vector<float> x = testing::randn(rng, rows * n, 2.0f);
    float* r1 = x.data() + n;  // row 1: its maximum twice, in different chunks
    const int64_t i1 = n / 3, i1b = n - 1;
    r1[i1] = 50.0f;
    r1[i1b] = 50.0f;
    float* r2 = x.data() + 2 * n;  // row 2: -inf and NaN around the maximum
    r2[0] = -INFINITY;
    r2[n / 2] = std::nanf("");
    for (int64_t i = 0; i < n; ++i) x[3 * n + i] = -INFINITY;  // row 3: nothing finite
    std::vector<int32_t> want(rows);
    for (int64_t r = 0; r < rows; ++r) {
      int64_t b = -1;
      for (int64_t i = 0; i < n; ++i) {
        const float v = x[r * n + i];
        if (!(v > -INFINITY)) continue;
        if (b < 0 || v > x[r * n + b]) b = i;
      }
      want[r] = static_cast<int32_t>(b < 0 ? 0 : b);
    }
    if (n > 1) {
      EXPECT_EQ(want[1], static_cast<int32_t>(i1));
    }
    DeviceBuffer dx = upload(x), ws = poisoned<uint8_t>(argmax_workspace_bytes(rows, n) + 8);
    for (const bool split : {true, false}) {
      DeviceBuffer ids = poisoned<int32_t>(rows);
      RS_ASSERT_OK(argmax_rows(dx.as<float>(), rows, n, ids.as<int32_t>(), nullptr,
                               split ? ws.get() : nullptr, split ? ws.size() : 0));
      EXPECT_EQ(download<int32_t>(ids, rows), want) << "n " << n << (split ? " split" : " whole");
    }
  }
}

TEST(CudaOpsArgs, RejectBadShapesWithNumbers) {
  const DeltaNetDims d{1, 2, 3, 100, 128};
  absl::Status st = delta_rule(d, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("dk = 100"), std::string::npos) << st.message();
  st = router_topk(nullptr, 1, 2000, 8, nullptr, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("2000"), std::string::npos) << st.message();
  KvView kv{GgmlType::Q4_K, nullptr, 2, 256, 0};
  st = attention(nullptr, 1, 16, 256, kv, kv, 0, 1.0f, nullptr, nullptr, 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("Q4_K"), std::string::npos) << st.message();
}

// ---- programmatic dependent launch ---------------------------------------------------------------
// A chain of kernels each reading the previous one's output gives the same bits with PDL (each
// kernel waits for its predecessor before touching memory) as without, graphs or not.
TEST_F(CudaOps, ProgrammaticLaunchKeepsResults) {
  if (!programmatic_launch_supported()) GTEST_SKIP() << "needs sm_90 or later";
  std::mt19937 rng(9);
  const int64_t n = 3 << 20, rows = 64, cols = n / rows;
  const std::vector<float> x0 = testing::randn(rng, n), w = testing::uniform(rng, cols, 0.5f, 1.5f);
  auto run = [&](bool pdl) {
    set_programmatic_launch(pdl);
    EXPECT_EQ(programmatic_launch(), pdl);
    DeviceBuffer a = upload(x0), b = poisoned<float>(n), dw = upload(w);
    for (int i = 0; i < 20; ++i) {
      EXPECT_TRUE(rms_norm(a.as<float>(), dw.as<float>(), rows, cols, 1e-6f, b.as<float>()).ok());
      EXPECT_TRUE(swiglu(b.as<float>(), a.as<float>(), n, a.as<float>()).ok());
    }
    set_programmatic_launch(false);
    return download<float>(a, n);
  };
  const std::vector<float> plain = run(false), pdl = run(true);
  ASSERT_EQ(plain.size(), pdl.size());
  EXPECT_EQ(std::memcmp(plain.data(), pdl.data(), plain.size() * 4), 0);
}

// ---- launch profile ------------------------------------------------------------------------------
// Every checked launch between profile_begin and profile_end is one mark, labelled with the scope
// set at the time; the kernels run after the hold, so their device times are there.
TEST_F(CudaOps, LaunchProfileCountsAndLabelsLaunches) {
  std::mt19937 rng(3);
  const int64_t n = 1 << 22;
  const std::vector<float> g = testing::randn(rng, n), u = testing::randn(rng, n);
  DeviceBuffer dg = upload(g), du = upload(u), dy = poisoned<float>(n);
  auto stream = create_stream();
  RS_ASSERT_OK(stream.status());
  RS_ASSERT_OK(profile_begin(*stream, 20.0));
  EXPECT_EQ(profile_begin(*stream).code(), absl::StatusCode::kFailedPrecondition);
  profile_scope("a");
  for (int i = 0; i < 3; ++i)
    RS_ASSERT_OK(swiglu(dg.as<float>(), du.as<float>(), n, dy.as<float>(), *stream));
  profile_scope(nullptr);
  RS_ASSERT_OK(fill_bytes(dy.get(), 0, 64, *stream));
  std::vector<float> host(16);
  RS_ASSERT_OK(copy_to_host(host.data(), dy.get(), 64, *stream));
  absl::StatusOr<LaunchProfile> p = profile_end();
  destroy_stream(*stream);
  RS_ASSERT_OK(p.status());
  EXPECT_EQ(p->marks, 5);
  EXPECT_FALSE(p->host_bound) << "queued in " << p->host_queue_ms << " ms";
  ASSERT_EQ(p->rows.size(), 3u);
  // 3 x 48 MiB of traffic take longer than a 64-byte fill or copy.
  EXPECT_EQ(p->rows[0].name, "a/swiglu");
  EXPECT_EQ(p->rows[0].calls, 3);
  EXPECT_GT(p->rows[0].ms, 0.0);
  double sum = 0;
  for (const LaunchTime& r : p->rows) sum += r.ms;
  EXPECT_NEAR(sum, p->total_ms, 1e-9);
  EXPECT_EQ(profile_end().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(CudaOpsArgs, ProfileEndWithoutBegin) {
  // Needs no device: nothing runs.
  EXPECT_EQ(profile_end().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(profile_begin(nullptr, 0.0).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rs::cuda
