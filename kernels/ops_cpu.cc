// Fast CPU versions of the ops in kernels/ops.h: loops laid out for the compiler's AVX2
// vectoriser (-O3 -mavx2 -mfma), F16C for the f16 KV cache, OpenMP over heads / rows.
// Each is tested against its *_ref twin (tests/ops_test.cc).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/ops.h"

namespace rs {
namespace {

inline float sum_squares(const float* x, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += x[i + l] * x[i + l];
  float s = 0;
  for (; i < n; ++i) s += x[i] * x[i];
  for (int l = 0; l < 8; ++l) s += acc[l];
  return s;
}

inline float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int l = 0; l < 8; ++l) s += acc[l];
  return s;
}

// Converts n elements of KV row (position p, all heads) into f32.
void load_kv_row(const KvView& kv, int64_t p, int64_t first, int64_t n, float* dst) {
  const uint8_t* base = static_cast<const uint8_t*>(kv.data) + p * kv.pos_stride_bytes;
  switch (kv.type) {
    case GgmlType::F32:
      std::memcpy(dst, reinterpret_cast<const float*>(base) + first, n * 4);
      break;
    case GgmlType::F16: {
      const uint16_t* src = reinterpret_cast<const uint16_t*>(base) + first;
      int64_t i = 0;
#if defined(__F16C__)
      for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
      for (; i < n; ++i) dst[i] = fp16_to_f32(src[i]);
      break;
    }
    case GgmlType::Q8_0: {
      for (int64_t i = 0; i < n; ++i) {
        const int64_t e = first + i;
        const uint8_t* blk = base + (e / 32) * 34;
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        dst[i] = fp16_to_f32(dh) * static_cast<float>(static_cast<int8_t>(blk[2 + e % 32]));
      }
      break;
    }
    default:
      std::memset(dst, 0, n * 4);
  }
}

}  // namespace

void rms_norm_cpu(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    const float scale = 1.0f / std::sqrt(sum_squares(xr, n) / n + eps);
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * w[i];
  }
}

void rms_norm_gated_cpu(const float* x, const float* w, const float* z, int64_t rows, int64_t n,
                        float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    const float* zr = z + r * n;
    float* yr = y + r * n;
    const float scale = 1.0f / std::sqrt(sum_squares(xr, n) / n + eps);
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * w[i] * silu(zr[i]);
  }
}

void attention_cpu(const float* q, int64_t T, int64_t nh, int64_t hd, const KvView& k,
                   const KvView& v, int64_t n_past, float scale, float* out, int n_threads) {
  const int64_t nkv = k.n_kv_heads;
  const int64_t group = nh / nkv;
  const int64_t n_ctx_max = n_past + T;
  // One task per (token, kv head): K and V rows are converted once and used by the group's
  // query heads.
#pragma omp parallel num_threads(n_threads)
  {
    std::vector<float> scores(group * n_ctx_max), krow(hd), acc(group * hd);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < T * nkv; ++task) {
      const int64_t t = task / nkv, kvh = task % nkv;
      const int64_t n_ctx = n_past + t + 1;
      const float* qg = q + (t * nh + kvh * group) * hd;
      for (int64_t p = 0; p < n_ctx; ++p) {
        load_kv_row(k, p, kvh * hd, hd, krow.data());
        for (int64_t g = 0; g < group; ++g) scores[g * n_ctx_max + p] = dot(qg + g * hd, krow.data(), hd) * scale;
      }
      for (int64_t g = 0; g < group; ++g) {
        float* s = scores.data() + g * n_ctx_max;
        float mx = -INFINITY;
        for (int64_t p = 0; p < n_ctx; ++p) mx = std::max(mx, s[p]);
        float sum = 0;
        for (int64_t p = 0; p < n_ctx; ++p) sum += (s[p] = std::exp(s[p] - mx));
        const float inv = 1.0f / sum;
        for (int64_t p = 0; p < n_ctx; ++p) s[p] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t p = 0; p < n_ctx; ++p) {
        load_kv_row(v, p, kvh * hd, hd, krow.data());
        for (int64_t g = 0; g < group; ++g) {
          const float w = scores[g * n_ctx_max + p];
          float* a = acc.data() + g * hd;
          for (int64_t d = 0; d < hd; ++d) a[d] += w * krow[d];
        }
      }
      for (int64_t g = 0; g < group; ++g)
        std::memcpy(out + (t * nh + kvh * group + g) * hd, acc.data() + g * hd, hd * 4);
    }
  }
}

void conv1d_silu_cpu(const float* u, int64_t T, int64_t C, const float* w, int64_t K,
                     float* state, float* out) {
  // Window rows: state rows 0..K-2 then u rows; output t uses rows t..t+K-1 of the window.
  std::vector<float> wt(K * C);  // taps transposed to [K][C] for unit-stride loops
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < K; ++j) wt[j * C + c] = w[c * K + j];
  auto row = [&](int64_t s) -> const float* {  // s in [0, T + K - 1)
    return s < K - 1 ? state + s * C : u + (s - (K - 1)) * C;
  };
  for (int64_t t = 0; t < T; ++t) {
    float* o = out + t * C;
    const float* r0 = row(t);
    for (int64_t c = 0; c < C; ++c) o[c] = wt[c] * r0[c];
    for (int64_t j = 1; j < K; ++j) {
      const float* rj = row(t + j);
      const float* wj = wt.data() + j * C;
      for (int64_t c = 0; c < C; ++c) o[c] += wj[c] * rj[c];
    }
    for (int64_t c = 0; c < C; ++c) o[c] = silu(o[c]);
  }
  std::vector<float> next((K - 1) * C);
  for (int64_t j = 0; j < K - 1; ++j) std::memcpy(next.data() + j * C, row(T + j), C * 4);
  std::memcpy(state, next.data(), next.size() * 4);
}

void delta_rule_cpu(const DeltaNetDims& d, const float* q, const float* k, const float* v,
                    const float* g, const float* beta, float* S, float* out, int n_threads) {
  const int64_t dk = d.dk, dv = d.dv;
#pragma omp parallel num_threads(n_threads)
  {
    std::vector<float> mem(dv);
#pragma omp for schedule(static)
    for (int64_t h = 0; h < d.Hv; ++h) {
      const int64_t j = h % d.Hk;
      float* Sh = S + h * dk * dv;
      for (int64_t t = 0; t < d.T; ++t) {
        const float* kt = k + (t * d.Hk + j) * dk;
        const float* qt = q + (t * d.Hk + j) * dk;
        const float* vt = v + (t * d.Hv + h) * dv;
        const float decay = std::exp(g[t * d.Hv + h]);
        const float b = beta[t * d.Hv + h];
        // mem = (e^g S)^T k, computed without touching S twice.
        std::fill(mem.begin(), mem.end(), 0.0f);
        for (int64_t a = 0; a < dk; ++a) {
          const float ka = kt[a] * decay;
          const float* Sa = Sh + a * dv;
          for (int64_t c = 0; c < dv; ++c) mem[c] += Sa[c] * ka;
        }
        for (int64_t c = 0; c < dv; ++c) mem[c] = b * (vt[c] - mem[c]);  // delta
        // S = e^g S + k delta^T ; o = S^T q, fused in one pass over S.
        float* ot = out + (t * d.Hv + h) * dv;
        std::fill(ot, ot + dv, 0.0f);
        for (int64_t a = 0; a < dk; ++a) {
          float* Sa = Sh + a * dv;
          const float ka = kt[a], qa = qt[a];
          for (int64_t c = 0; c < dv; ++c) {
            const float s = Sa[c] * decay + ka * mem[c];
            Sa[c] = s;
            ot[c] += s * qa;
          }
        }
      }
    }
  }
}

}  // namespace rs
