// Reference implementations of the ops in kernels/ops.h: plain loops, fp32 (reductions in
// double), written to read like spec/qwen35.md. These define "right" for every other backend.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "kernels/ops.h"

namespace rs {

void rms_norm_ref(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * w[i];
  }
}

void rms_norm_gated_ref(const float* x, const float* w, const float* z, int64_t rows, int64_t n,
                        float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    const float* zr = z + r * n;
    float* yr = y + r * n;
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * w[i] * silu(zr[i]);
  }
}

void l2_norm_ref(float* x, int64_t rows, int64_t n, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * n;
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(ss + eps));
    for (int64_t i = 0; i < n; ++i) xr[i] *= scale;
  }
}

void rope_neox_ref(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                   const int64_t* pos, float theta) {
  const int64_t half = n_rot / 2;
  for (int64_t t = 0; t < n_tok; ++t) {
    const float p = static_cast<float>(pos[t]);
    for (int64_t d = 0; d < half; ++d) {
      const float inv_freq = std::pow(theta, -2.0f * static_cast<float>(d) / n_rot);
      const float angle = p * inv_freq;
      const float c = std::cos(angle), s = std::sin(angle);
      for (int64_t h = 0; h < n_heads; ++h) {
        float* xh = x + (t * n_heads + h) * head_dim;
        const float a = xh[d], b = xh[d + half];
        xh[d] = a * c - b * s;
        xh[d + half] = a * s + b * c;
      }
    }
  }
}

namespace {

// Element d of KV head h at position p, whatever the cache type.
float kv_at(const KvView& kv, int64_t p, int64_t h, int64_t d) {
  const uint8_t* base = static_cast<const uint8_t*>(kv.data) + p * kv.pos_stride_bytes;
  int64_t i = h * kv.head_dim + d;
  if (kv.head_stride_bytes != 0) {  // head-major: the head's own rows
    base += h * kv.head_stride_bytes;
    i = d;
  }
  switch (kv.type) {
    case GgmlType::F32: return reinterpret_cast<const float*>(base)[i];
    case GgmlType::F16: {
      uint16_t v;
      std::memcpy(&v, base + 2 * i, 2);
      return fp16_to_f32(v);
    }
    case GgmlType::Q8_0: {
      const uint8_t* blk = base + (i / 32) * 34;
      uint16_t dh;
      std::memcpy(&dh, blk, 2);
      return fp16_to_f32(dh) * static_cast<float>(static_cast<int8_t>(blk[2 + i % 32]));
    }
    default: return 0.0f;
  }
}

}  // namespace

void attention_ref(const float* q, int64_t T, int64_t nh, int64_t hd, const KvView& k,
                   const KvView& v, int64_t n_past, float scale, float* out) {
  const int64_t group = nh / k.n_kv_heads;
  std::vector<double> score;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n_ctx = n_past + t + 1;
    score.resize(n_ctx);
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t kvh = h / group;
      const float* qh = q + (t * nh + h) * hd;
      double mx = -INFINITY;
      for (int64_t p = 0; p < n_ctx; ++p) {
        double s = 0;
        for (int64_t d = 0; d < hd; ++d) s += static_cast<double>(qh[d]) * kv_at(k, p, kvh, d);
        score[p] = s * scale;
        mx = std::max(mx, score[p]);
      }
      double sum = 0;
      for (int64_t p = 0; p < n_ctx; ++p) sum += (score[p] = std::exp(score[p] - mx));
      float* oh = out + (t * nh + h) * hd;
      for (int64_t d = 0; d < hd; ++d) {
        double acc = 0;
        for (int64_t p = 0; p < n_ctx; ++p) acc += score[p] * kv_at(v, p, kvh, d);
        oh[d] = static_cast<float>(acc / sum);
      }
    }
  }
}

void conv1d_silu_ref(const float* u, int64_t T, int64_t C, const float* w, int64_t K,
                     float* state, float* out) {
  // Column j of the window for output t is input t - (K-1) + j; inputs before 0 are the state.
  auto input = [&](int64_t s, int64_t c) -> float {  // s in [-(K-1), T)
    return s >= 0 ? u[s * C + c] : state[(s + K - 1) * C + c];
  };
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < C; ++c) {
      double acc = 0;
      for (int64_t j = 0; j < K; ++j) acc += static_cast<double>(w[c * K + j]) * input(t - (K - 1) + j, c);
      out[t * C + c] = silu(static_cast<float>(acc));
    }
  }
  // New state: the last K-1 inputs of [state | u].
  std::vector<float> next((K - 1) * C);
  for (int64_t j = 0; j < K - 1; ++j)
    for (int64_t c = 0; c < C; ++c) next[j * C + c] = input(T - (K - 1) + j, c);
  std::copy(next.begin(), next.end(), state);
}

void delta_rule_recurrent_ref(const DeltaNetDims& d, const float* q, const float* k,
                              const float* v, const float* g, const float* beta, float* S,
                              float* out) {
  std::vector<double> kv_mem(d.dv);
  for (int64_t h = 0; h < d.Hv; ++h) {
    const int64_t j = h % d.Hk;  // GGUF tiled order
    float* Sh = S + h * d.dk * d.dv;
    for (int64_t t = 0; t < d.T; ++t) {
      const float* kt = k + (t * d.Hk + j) * d.dk;
      const float* qt = q + (t * d.Hk + j) * d.dk;
      const float* vt = v + (t * d.Hv + h) * d.dv;
      const float decay = std::exp(g[t * d.Hv + h]);
      const float b = beta[t * d.Hv + h];
      for (int64_t i = 0; i < d.dk * d.dv; ++i) Sh[i] *= decay;            // S = e^g S
      std::fill(kv_mem.begin(), kv_mem.end(), 0.0);
      for (int64_t a = 0; a < d.dk; ++a)
        for (int64_t c = 0; c < d.dv; ++c) kv_mem[c] += static_cast<double>(Sh[a * d.dv + c]) * kt[a];
      for (int64_t c = 0; c < d.dv; ++c) kv_mem[c] = b * (vt[c] - kv_mem[c]);  // delta
      for (int64_t a = 0; a < d.dk; ++a)
        for (int64_t c = 0; c < d.dv; ++c) Sh[a * d.dv + c] += static_cast<float>(kt[a] * kv_mem[c]);
      float* ot = out + (t * d.Hv + h) * d.dv;
      for (int64_t c = 0; c < d.dv; ++c) {
        double acc = 0;
        for (int64_t a = 0; a < d.dk; ++a) acc += static_cast<double>(Sh[a * d.dv + c]) * qt[a];
        ot[c] = static_cast<float>(acc);                                   // o = S^T q
      }
    }
  }
}

void delta_rule_chunked_ref(const DeltaNetDims& d, const float* q, const float* k, const float* v,
                            const float* g, const float* beta, float* S, float* out) {
  constexpr int64_t C = 64;
  const int64_t dk = d.dk, dv = d.dv;
  std::vector<float> G(C), Gam(C * C), L(C * C), Tm(C * C), U(C * dv), W(C * dk), Del(C * dv);
  std::vector<float> KK(C * C), QK(C * C);
  for (int64_t h = 0; h < d.Hv; ++h) {
    const int64_t j = h % d.Hk;
    float* S0 = S + h * dk * dv;
    for (int64_t c0 = 0; c0 < d.T; c0 += C) {
      const int64_t n = std::min(C, d.T - c0);  // padding rows (beta = g = 0, q = k = v = 0)
      auto Kr = [&](int64_t r) { return k + ((c0 + r) * d.Hk + j) * dk; };
      auto Qr = [&](int64_t r) { return q + ((c0 + r) * d.Hk + j) * dk; };
      auto Vr = [&](int64_t r) { return v + ((c0 + r) * d.Hv + h) * dv; };
      auto Br = [&](int64_t r) { return beta[(c0 + r) * d.Hv + h]; };
      // G_r: cumulative log decay within the chunk.
      double acc = 0;
      for (int64_t r = 0; r < n; ++r) G[r] = static_cast<float>(acc += g[(c0 + r) * d.Hv + h]);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t s = 0; s < n; ++s) {
          Gam[r * C + s] = s <= r ? std::exp(G[r] - G[s]) : 0.0f;
          double kk = 0, qk = 0;
          for (int64_t a = 0; a < dk; ++a) {
            kk += static_cast<double>(Kr(r)[a]) * Kr(s)[a];
            qk += static_cast<double>(Qr(r)[a]) * Kr(s)[a];
          }
          KK[r * C + s] = static_cast<float>(kk);
          QK[r * C + s] = static_cast<float>(qk);
          L[r * C + s] = s < r ? Br(r) * Gam[r * C + s] * KK[r * C + s] : 0.0f;
        }
      // T = (I + L)^-1 by forward substitution, row by row: T[r] = e_r - sum_{s<r} L[r][s] T[s].
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t c = 0; c < n; ++c) {
          double x = (r == c) ? 1.0 : 0.0;
          for (int64_t s = 0; s < r; ++s) x -= static_cast<double>(L[r * C + s]) * Tm[s * C + c];
          Tm[r * C + c] = static_cast<float>(x);
        }
      }
      // U = T diag(beta) V;  W = T diag(beta e^G) K;  Delta = U - W S0.
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t c = 0; c < dv; ++c) {
          double x = 0;
          for (int64_t s = 0; s <= r; ++s) x += static_cast<double>(Tm[r * C + s]) * Br(s) * Vr(s)[c];
          U[r * dv + c] = static_cast<float>(x);
        }
        for (int64_t a = 0; a < dk; ++a) {
          double x = 0;
          for (int64_t s = 0; s <= r; ++s)
            x += static_cast<double>(Tm[r * C + s]) * Br(s) * std::exp(G[s]) * Kr(s)[a];
          W[r * dk + a] = static_cast<float>(x);
        }
        for (int64_t c = 0; c < dv; ++c) {
          double x = U[r * dv + c];
          for (int64_t a = 0; a < dk; ++a) x -= static_cast<double>(W[r * dk + a]) * S0[a * dv + c];
          Del[r * dv + c] = static_cast<float>(x);
        }
      }
      // O = diag(e^G) Q S0 + P Delta, P_rs = Gamma_rs (q_r . k_s) for s <= r.
      for (int64_t r = 0; r < n; ++r) {
        float* o = out + ((c0 + r) * d.Hv + h) * dv;
        const double eg = std::exp(G[r]);
        for (int64_t c = 0; c < dv; ++c) {
          double x = 0;
          for (int64_t a = 0; a < dk; ++a) x += static_cast<double>(Qr(r)[a]) * S0[a * dv + c];
          x *= eg;
          for (int64_t s = 0; s <= r; ++s)
            x += static_cast<double>(Gam[r * C + s]) * QK[r * C + s] * Del[s * dv + c];
          o[c] = static_cast<float>(x);
        }
      }
      // S_C = e^{G_C} S0 + (diag(e^{G_C - G}) K)^T Delta.
      const float Gc = G[n - 1];
      const double egc = std::exp(Gc);
      for (int64_t a = 0; a < dk; ++a)
        for (int64_t c = 0; c < dv; ++c) {
          double x = egc * S0[a * dv + c];
          for (int64_t s = 0; s < n; ++s)
            x += std::exp(static_cast<double>(Gc) - G[s]) * Kr(s)[a] * Del[s * dv + c];
          S0[a * dv + c] = static_cast<float>(x);
        }
    }
  }
}

void swiglu_ref(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = silu(gate[i]) * up[i];
}

void sigmoid_mul_ref(const float* gate, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] *= sigmoidf(gate[i]);
}

void router_topk_ref(const float* logits, int64_t E, int64_t k, int32_t* ids, float* weights) {
  double mx = -INFINITY;
  for (int64_t e = 0; e < E; ++e) mx = std::max(mx, static_cast<double>(logits[e]));
  std::vector<double> p(E);
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += (p[e] = std::exp(logits[e] - mx));
  for (auto& x : p) x /= sum;
  std::vector<int32_t> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  double chosen = 0;
  for (int64_t i = 0; i < k; ++i) chosen += p[order[i]];
  for (int64_t i = 0; i < k; ++i) {
    ids[i] = order[i];
    weights[i] = static_cast<float>(p[order[i]] / chosen);
  }
}

}  // namespace rs
