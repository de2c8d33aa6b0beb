// Fast CPU versions of the ops in kernels/ops.h: loops laid out for the compiler's AVX2
// vectoriser (-O3 -mavx2 -mfma), F16C for the f16 KV cache, heads / rows over the kernels' thread
// pool (cpu_parallel_for, kernels/matmul.h).
// Each is tested against its *_ref twin (tests/ops_test.cc).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/matmul.h"
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
  int64_t i = 0;
  float s = 0;
#if defined(__AVX2__) && defined(__FMA__)
  // Four independent accumulators: one FMA chain would wait on its latency every 8 elements
  // (attention scores at long context are this loop).
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
  const __m256 v = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  s = _mm_cvtss_f32(h);
#else
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  for (int l = 0; l < 8; ++l) s += acc[l];
#endif
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Where element `first` (= h * head_dim + d) of position p lives: returns the base its offset
// is counted from and makes `first` relative to it (the head's start in a head-major cache).
inline const uint8_t* kv_base(const KvView& kv, int64_t p, int64_t& first) {
  const uint8_t* b = static_cast<const uint8_t*>(kv.data) + p * kv.pos_stride_bytes;
  if (kv.head_stride_bytes != 0) {
    const int64_t h = first / kv.head_dim;
    first -= h * kv.head_dim;
    b += h * kv.head_stride_bytes;
  }
  return b;
}

// First byte of KV head h at position p in an F16 cache.
inline const uint8_t* kv_head_f16(const KvView& kv, int64_t p, int64_t h) {
  int64_t first = h * kv.head_dim;
  return kv_base(kv, p, first) + first * 2;
}

// Converts n elements of KV row (position p, all heads) into f32.
void load_kv_row(const KvView& kv, int64_t p, int64_t first, int64_t n, float* dst) {
  const uint8_t* base = kv_base(kv, p, first);
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
#if defined(__AVX2__)
      if (first % 32 == 0 && n % 32 == 0) {  // whole blocks: 32 codes x the block scale
        const uint8_t* blk = base + (first / 32) * 34;
        for (int64_t b = 0; b < n / 32; ++b, blk += 34) {
          uint16_t dh;
          std::memcpy(&dh, blk, 2);
          const __m256 d = _mm256_set1_ps(fp16_to_f32(dh));
          for (int j = 0; j < 4; ++j) {
            const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * j));
            _mm256_storeu_ps(dst + b * 32 + 8 * j,
                             _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c))));
          }
        }
        break;
      }
#endif
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

// Prefetches the bytes of load_kv_row(kv, p, first, n) (the cache rows are strided by the other
// heads' entries; the hardware prefetcher alone left decode attention at long context waiting
// on memory).
inline void prefetch_kv_row(const KvView& kv, int64_t p, int64_t first, int64_t n) {
  const uint8_t* base = kv_base(kv, p, first);
  size_t lo, hi;
  switch (kv.type) {
    case GgmlType::F32: lo = first * 4; hi = (first + n) * 4; break;
    case GgmlType::F16: lo = first * 2; hi = (first + n) * 2; break;
    default: lo = first / 32 * 34; hi = (first + n + 31) / 32 * 34; break;
  }
  for (size_t o = lo; o < hi; o += 64) _mm_prefetch(reinterpret_cast<const char*>(base + o), _MM_HINT_T0);
}

// Elementwise maps over n floats: body in 8-lane vectors; the tail goes through the same vector
// code on a padded copy, so an element's value does not depend on its position (a prompt in one
// step equals the same prompt in pieces, bit for bit).
#if defined(__AVX2__) && defined(__FMA__)
// e^x, 8 lanes: x clamped to [-87.3, 88.3] (normal results), n = round(x log2 e), r = x - n ln 2
// in two parts, e^r by its degree-7 Taylor-like minimax polynomial (the Cephes expf
// coefficients), times 2^n through the exponent bits. Relative error below 2e-7.
inline __m256 exp_ps(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3365f)), _mm256_set1_ps(88.3762f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504089f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
inline __m256 sigmoid_ps(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}
inline __m256 silu_ps(__m256 x) { return _mm256_mul_ps(x, sigmoid_ps(x)); }
inline float hsum8(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

// out[i] = f(a[i], b[i]) for f on 8 lanes (b may be null: f ignores it).
template <typename F>
inline void map8(const float* a, const float* b, int64_t n, float* out, F f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, f(_mm256_loadu_ps(a + i), b ? _mm256_loadu_ps(b + i) : _mm256_setzero_ps()));
  if (i < n) {
    alignas(32) float ta[8] = {0}, tb[8] = {0}, to[8];
    std::memcpy(ta, a + i, (n - i) * 4);
    if (b) std::memcpy(tb, b + i, (n - i) * 4);
    _mm256_store_ps(to, f(_mm256_load_ps(ta), _mm256_load_ps(tb)));
    std::memcpy(out + i, to, (n - i) * 4);
  }
}
#endif

// Runs body(i0, i1) over [0, n) in pieces of 8K elements on the pool (inline when small).
template <typename F>
inline void elementwise(int64_t n, int n_threads, F body) {
  constexpr int64_t kPiece = 8192;
  if (n <= 2 * kPiece || n_threads <= 1) {
    body(0, n);
    return;
  }
  cpu_parallel_for(n_threads, (n + kPiece - 1) / kPiece,
                   [&](int64_t c) { body(c * kPiece, std::min(n, (c + 1) * kPiece)); });
}

}  // namespace

void swiglu_cpu(const float* gate, const float* up, int64_t n, float* out, int n_threads) {
  elementwise(n, n_threads, [&](int64_t i0, int64_t i1) {
#if defined(__AVX2__) && defined(__FMA__)
    map8(gate + i0, up + i0, i1 - i0, out + i0,
         [](__m256 g, __m256 u) { return _mm256_mul_ps(silu_ps(g), u); });
#else
    for (int64_t i = i0; i < i1; ++i) out[i] = silu(gate[i]) * up[i];
#endif
  });
}

void sigmoid_mul_cpu(const float* gate, int64_t n, float* out, int n_threads) {
  elementwise(n, n_threads, [&](int64_t i0, int64_t i1) {
#if defined(__AVX2__) && defined(__FMA__)
    map8(gate + i0, out + i0, i1 - i0, out + i0,
         [](__m256 g, __m256 o) { return _mm256_mul_ps(o, sigmoid_ps(g)); });
#else
    for (int64_t i = i0; i < i1; ++i) out[i] *= sigmoidf(gate[i]);
#endif
  });
}

void rms_norm_cpu(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    const float scale = 1.0f / std::sqrt(sum_squares(xr, n) / n + eps);
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * w[i];
  }
}

void rms_norm_gated_cpu(const float* x, const float* w, const float* z, int64_t rows, int64_t n,
                        float eps, float* y, int n_threads) {
  constexpr int64_t kRows = 64;  // rows per work item
  const int threads = rows * n >= 16384 ? n_threads : 1;
  cpu_parallel_for(threads, (rows + kRows - 1) / kRows, [&](int64_t item) {
  for (int64_t r = item * kRows; r < std::min(rows, (item + 1) * kRows); ++r) {
    const float* xr = x + r * n;
    const float* zr = z + r * n;
    float* yr = y + r * n;
    const float scale = 1.0f / std::sqrt(sum_squares(xr, n) / n + eps);
#if defined(__AVX2__) && defined(__FMA__)
    float sz[64];  // silu(z) of 64 elements at a time (y may alias x)
    for (int64_t i0 = 0; i0 < n; i0 += 64) {
      const int64_t m = std::min<int64_t>(64, n - i0);
      map8(zr + i0, nullptr, m, sz, [](__m256 v, __m256) { return silu_ps(v); });
      for (int64_t i = 0; i < m; ++i) yr[i0 + i] = xr[i0 + i] * scale * w[i0 + i] * sz[i];
    }
#else
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * w[i] * silu(zr[i]);
#endif
  }
  });
}

namespace {
// The two-pass form (all scores of a block of tokens, softmax, then V): any head dim, any ISA.
// attention_cpu uses it where the blocked form below does not apply (head dim not a multiple of
// 16, no AVX2).
void attention_two_pass(const float* q, int64_t T, int64_t nh, int64_t hd, const KvView& k,
                        const KvView& v, int64_t n_past, float scale, float* out, int n_threads) {
  const int64_t nkv = k.n_kv_heads;
  const int64_t group = nh / nkv;
  // One task per (block of up to kTb tokens, kv head): each K and V row is converted to f32
  // once per block and used by the block's tokens x the group's query heads (prefill at long
  // context was dominated by converting the cache once per token). Every (token, head) result
  // is computed in the same order as token by token. Tasks come from a shared counter, the
  // blocks with the longest contexts first.
  constexpr int64_t kTb = 16;
  const int64_t n_blocks = (T + kTb - 1) / kTb;
  const int64_t n_tasks = n_blocks * nkv;
  cpu_parallel_for(n_threads, n_tasks, [&](int64_t task) {
    thread_local std::vector<float> scratch;
    const int64_t rows_max = std::min(kTb, T) * group;
    const int64_t ctx_cap = n_past + T;
    const size_t need = static_cast<size_t>(rows_max * ctx_cap + hd + rows_max * hd + 32 * hd);
    if (scratch.size() < need) scratch.resize(need);
    {
      const int64_t blk = n_blocks - 1 - task / nkv, kvh = task % nkv;
      const int64_t t0 = blk * kTb, tn = std::min(kTb, T - t0);
      const int64_t n_ctx_blk = n_past + t0 + tn;  // context of the block's last token
      const int64_t ld = n_ctx_blk;                 // scores row stride
      float* scores = scratch.data();
      float* krow = scores + tn * group * ld;
      float* acc = krow + hd;
      constexpr int64_t kAheadRows = 12;
      for (int64_t p = 0; p < n_ctx_blk; ++p) {
        if (p + kAheadRows < n_ctx_blk) prefetch_kv_row(k, p + kAheadRows, kvh * hd, hd);
        load_kv_row(k, p, kvh * hd, hd, krow);
        // Token i sees positions <= n_past + t0 + i.
        for (int64_t i = std::max<int64_t>(0, p - n_past - t0); i < tn; ++i) {
          const float* qi = q + ((t0 + i) * nh + kvh * group) * hd;
          for (int64_t g = 0; g < group; ++g)
            scores[(i * group + g) * ld + p] = dot(qi + g * hd, krow, hd) * scale;
        }
      }
      for (int64_t i = 0; i < tn; ++i) {
        const int64_t n_ctx = n_past + t0 + i + 1;
        for (int64_t g = 0; g < group; ++g) {
          float* s = scores + (i * group + g) * ld;
          float mx = -INFINITY;
          for (int64_t p = 0; p < n_ctx; ++p) mx = std::max(mx, s[p]);
          float sum = 0;
          for (int64_t p = 0; p < n_ctx; ++p) sum += (s[p] = std::exp(s[p] - mx));
          const float inv = 1.0f / sum;
          for (int64_t p = 0; p < n_ctx; ++p) s[p] *= inv;
          for (int64_t p = n_ctx; p < n_ctx_blk; ++p) s[p] = 0.0f;  // masked: adds exactly 0
        }
      }
      std::fill(acc, acc + tn * group * hd, 0.0f);
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
      if (v.type == GgmlType::F16 && hd % 16 == 0) {
        // out_r = sum_p s_r[p] v_p straight from the f16 cache: positions in blocks of 64 (their
        // V rows stay in L1), 4 rows x 16 dims of accumulators in registers; per (row, dim)
        // the sum runs over p in order, as in the generic loop below.
        // The block's rows are first copied in position order into a contiguous buffer (a
        // sequential stream with a short prefetch distance): reading them straight from the
        // cache, 16 dims of every position per pass, left decode at 16K context waiting on
        // memory (6.8 ms per layer, 2.5 GB/s).
        const int64_t R = tn * group;
        const uint8_t* vbase = kv_head_f16(v, 0, kvh);
        uint16_t* vblk = reinterpret_cast<uint16_t*>(acc + tn * group * hd);
        for (int64_t pb = 0; pb < n_ctx_blk; pb += 64) {
          const int64_t pe = std::min(n_ctx_blk, pb + 64);
          for (int64_t p = pb; p < pe; ++p) {
            if (p + 8 < n_ctx_blk) prefetch_kv_row(v, p + 8, kvh * hd, hd);
            std::memcpy(vblk + (p - pb) * hd, vbase + p * v.pos_stride_bytes, hd * 2);
          }
          for (int64_t r0 = 0; r0 < R; r0 += 4) {
            const int nr = static_cast<int>(std::min<int64_t>(4, R - r0));
            for (int64_t d0 = 0; d0 < hd; d0 += 16) {
              __m256 a0[4], a1[4];
              for (int r = 0; r < nr; ++r) {
                a0[r] = _mm256_loadu_ps(acc + (r0 + r) * hd + d0);
                a1[r] = _mm256_loadu_ps(acc + (r0 + r) * hd + d0 + 8);
              }
              for (int64_t p = pb; p < pe; ++p) {
                const uint16_t* vp = vblk + (p - pb) * hd + d0;
                const __m256 v0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(vp)));
                const __m256 v1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(vp + 8)));
                for (int r = 0; r < nr; ++r) {
                  const __m256 w = _mm256_broadcast_ss(scores + (r0 + r) * ld + p);
                  a0[r] = _mm256_fmadd_ps(w, v0, a0[r]);
                  a1[r] = _mm256_fmadd_ps(w, v1, a1[r]);
                }
              }
              for (int r = 0; r < nr; ++r) {
                _mm256_storeu_ps(acc + (r0 + r) * hd + d0, a0[r]);
                _mm256_storeu_ps(acc + (r0 + r) * hd + d0 + 8, a1[r]);
              }
            }
          }
        }
      } else
#endif
      for (int64_t p = 0; p < n_ctx_blk; ++p) {
        if (p + kAheadRows < n_ctx_blk) prefetch_kv_row(v, p + kAheadRows, kvh * hd, hd);
        load_kv_row(v, p, kvh * hd, hd, krow);
        for (int64_t i = std::max<int64_t>(0, p - n_past - t0); i < tn; ++i)
          for (int64_t g = 0; g < group; ++g) {
            const float w = scores[(i * group + g) * ld + p];
            float* a = acc + (i * group + g) * hd;
            for (int64_t d = 0; d < hd; ++d) a[d] += w * krow[d];
          }
      }
      for (int64_t i = 0; i < tn; ++i)
        for (int64_t g = 0; g < group; ++g)
          std::memcpy(out + ((t0 + i) * nh + kvh * group + g) * hd, acc + (i * group + g) * hd,
                      hd * 4);
    }
  });
}

}  // namespace

void conv1d_silu_cpu(const float* u, int64_t T, int64_t C, const float* w, int64_t K,
                     float* state, float* out, int n_threads) {
  // Channels are independent: pieces of 256 channels over the pool, each with its taps
  // transposed to [K][piece] for unit-stride loops and its own state update at the end.
  // Window rows: state rows 0..K-2 then u rows; output t uses rows t..t+K-1 of the window.
  constexpr int64_t kPiece = 256;
  const int64_t n_pieces = (C + kPiece - 1) / kPiece;
  const int threads = T * C >= 16384 ? n_threads : 1;
  cpu_parallel_for(threads, n_pieces, [&](int64_t piece) {
    const int64_t c0 = piece * kPiece, nc = std::min(kPiece, C - c0);
    thread_local std::vector<float> scratch;
    if (scratch.size() < static_cast<size_t>((2 * K - 1) * kPiece)) scratch.resize((2 * K - 1) * kPiece);
    float* wt = scratch.data();          // [K][nc]
    float* next = wt + K * kPiece;       // [K - 1][nc]
    for (int64_t c = 0; c < nc; ++c)
      for (int64_t j = 0; j < K; ++j) wt[j * nc + c] = w[(c0 + c) * K + j];
    auto row = [&](int64_t r) -> const float* {  // r in [0, T + K - 1), at channel c0
      return (r < K - 1 ? state + r * C : u + (r - (K - 1)) * C) + c0;
    };
    for (int64_t t = 0; t < T; ++t) {
      float* o = out + t * C + c0;
      const float* r0 = row(t);
      for (int64_t c = 0; c < nc; ++c) o[c] = wt[c] * r0[c];
      for (int64_t j = 1; j < K; ++j) {
        const float* rj = row(t + j);
        const float* wj = wt + j * nc;
        for (int64_t c = 0; c < nc; ++c) o[c] += wj[c] * rj[c];
      }
#if defined(__AVX2__) && defined(__FMA__)
      map8(o, nullptr, nc, o, [](__m256 v, __m256) { return silu_ps(v); });
#else
      for (int64_t c = 0; c < nc; ++c) o[c] = silu(o[c]);
#endif
    }
    for (int64_t j = 0; j < K - 1; ++j) std::memcpy(next + j * nc, row(T + j), nc * 4);
    for (int64_t j = 0; j < K - 1; ++j) std::memcpy(state + j * C + c0, next + j * nc, nc * 4);
  });
}

namespace {

// Grow-only per-thread scratch (no allocation once warm).
float* dn_scratch(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

#if defined(__AVX2__) && defined(__FMA__)
// C[MR x 16] += A[MR x kk] B[kk x 16]: MR rows x 16 columns of accumulators, summed from zero
// over p in order and then added to C. load_b(p, c) gives B[p][c .. c + 8) (f32 rows, or an
// f16 cache read in place: attention's P.V gives the same bits either way).
template <int MR, typename LoadB>
inline void gemm_cols16(int64_t kk, const float* A, int64_t lda, LoadB load_b, float* C,
                        int64_t ldc) {
  __m256 c0[MR], c1[MR];
  for (int r = 0; r < MR; ++r) { c0[r] = _mm256_setzero_ps(); c1[r] = _mm256_setzero_ps(); }
  for (int64_t p = 0; p < kk; ++p) {
    const __m256 b0 = load_b(p, 0), b1 = load_b(p, 8);
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + p);
      c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* cr = C + r * ldc;
    _mm256_storeu_ps(cr, _mm256_add_ps(_mm256_loadu_ps(cr), c0[r]));
    _mm256_storeu_ps(cr + 8, _mm256_add_ps(_mm256_loadu_ps(cr + 8), c1[r]));
  }
}
#endif

// C[m x n] += A[m x kk] B[kk x n], row-major with leading dimensions; register tiles of
// MR rows x 16 columns (8 accumulators for MR = 4), scalar column tail.
template <int MR>
inline void gemm_tile(int64_t n, int64_t kk, const float* A, int64_t lda, const float* B,
                      int64_t ldb, float* C, int64_t ldc) {
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  for (; j + 16 <= n; j += 16)
    gemm_cols16<MR>(
        kk, A, lda, [&](int64_t p, int64_t c) { return _mm256_loadu_ps(B + p * ldb + j + c); },
        C + j, ldc);
  for (; j + 8 <= n; j += 8) {
    __m256 c0[MR];
    for (int r = 0; r < MR; ++r) c0[r] = _mm256_setzero_ps();
    for (int64_t p = 0; p < kk; ++p) {
      const __m256 b0 = _mm256_loadu_ps(B + p * ldb + j);
      for (int r = 0; r < MR; ++r) c0[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(A + r * lda + p), b0, c0[r]);
    }
    for (int r = 0; r < MR; ++r) {
      float* cr = C + r * ldc + j;
      _mm256_storeu_ps(cr, _mm256_add_ps(_mm256_loadu_ps(cr), c0[r]));
    }
  }
#endif
  for (; j < n; ++j)
    for (int r = 0; r < MR; ++r) {
      float acc = 0;
      for (int64_t p = 0; p < kk; ++p) acc += A[r * lda + p] * B[p * ldb + j];
      C[r * ldc + j] += acc;
    }
}

void gemm_acc(int64_t m, int64_t n, int64_t kk, const float* A, int64_t lda, const float* B,
              int64_t ldb, float* C, int64_t ldc) {
  if (kk <= 0) return;
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) gemm_tile<4>(n, kk, A + i * lda, lda, B, ldb, C + i * ldc, ldc);
  switch (m - i) {
    case 3: gemm_tile<3>(n, kk, A + i * lda, lda, B, ldb, C + i * ldc, ldc); break;
    case 2: gemm_tile<2>(n, kk, A + i * lda, lda, B, ldb, C + i * ldc, ldc); break;
    case 1: gemm_tile<1>(n, kk, A + i * lda, lda, B, ldb, C + i * ldc, ldc); break;
    default: break;
  }
}

// Token-by-token recurrence of one value head over T tokens (decode and short inputs).
void delta_head_recurrent(const DeltaNetDims& d, int64_t h, const float* q, const float* k,
                          const float* v, const float* g, const float* beta, float* S,
                          float* out, float* mem) {
  const int64_t dk = d.dk, dv = d.dv, j = h % d.Hk;
  float* Sh = S + h * dk * dv;
  for (int64_t t = 0; t < d.T; ++t) {
    const float* kt = k + (t * d.Hk + j) * dk;
    const float* qt = q + (t * d.Hk + j) * dk;
    const float* vt = v + (t * d.Hv + h) * dv;
    const float decay = std::exp(g[t * d.Hv + h]);
    const float b = beta[t * d.Hv + h];
    // mem = (e^g S)^T k, computed without touching S twice.
    std::fill(mem, mem + dv, 0.0f);
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

constexpr int64_t kDnChunk = 64;

size_t delta_chunk_scratch(const DeltaNetDims& d) {
  const int64_t C = kDnChunk, dk = d.dk, dv = d.dv;
  return 2 * C * dk      // KQ: [k rows; q rows] of the chunk
         + dk * C        // Kt: k transposed, later scaled by e^(Gc - G_s)
         + 2 * C * dv    // X: [K S0; Q S0]
         + 2 * C * C     // Y: [K K^T; Q K^T]
         + 2 * C * C     // negL, P
         + C * dv        // Del
         + 2 * C + 64;   // G, eG
}

// Chunked gated delta rule (spec §4) of one value head, chunks of C = 64 tokens. Per chunk with
// cumulative log decay G (within the chunk) and the state S0 at its start:
//   Del = (I + L)^-1 diag(beta) (V - diag(e^G) K S0),  L_rs = beta_r e^(G_r - G_s) k_r.k_s, s < r
//   O   = diag(e^G) Q S0 + P Del,                       P_rs = e^(G_r - G_s) q_r.k_s,      s <= r
//   S   = e^(G_last) S0 + (diag(e^(G_last - G)) K)^T Del
// The inverse is a blocked forward substitution; every product is one register-tiled GEMM.
void delta_head_chunked(const DeltaNetDims& d, int64_t h, const float* q, const float* k,
                        const float* v, const float* g, const float* beta, float* S, float* out,
                        float* scratch) {
  const int64_t C = kDnChunk, dk = d.dk, dv = d.dv, j = h % d.Hk;
  float* KQ = scratch;
  float* Kt = KQ + 2 * C * dk;
  float* X = Kt + dk * C;
  float* Y = X + 2 * C * dv;
  float* negL = Y + 2 * C * C;
  float* P = negL + C * C;
  float* Del = P + C * C;
  float* G = Del + C * dv;
  float* eG = G + C;
  float* S0 = S + h * dk * dv;
  const int64_t ldo = d.Hv * dv;
  for (int64_t c0 = 0; c0 < d.T; c0 += C) {
    const int64_t n = std::min(C, d.T - c0);
    // Gather [K; Q] (2n rows of dk) and K^T (dk x n).
    for (int64_t r = 0; r < n; ++r) {
      const float* kr = k + ((c0 + r) * d.Hk + j) * dk;
      std::memcpy(KQ + r * dk, kr, dk * 4);
      std::memcpy(KQ + (n + r) * dk, q + ((c0 + r) * d.Hk + j) * dk, dk * 4);
      for (int64_t a = 0; a < dk; ++a) Kt[a * n + r] = kr[a];
    }
    float acc = 0;
    for (int64_t r = 0; r < n; ++r) {
      acc += g[(c0 + r) * d.Hv + h];
      G[r] = acc;
      eG[r] = std::exp(acc);
    }
    // X = [K; Q] S0, Y = [K; Q] K^T.
    std::fill(X, X + 2 * n * dv, 0.0f);
    gemm_acc(2 * n, dv, dk, KQ, dk, S0, dv, X, dv);
    std::fill(Y, Y + 2 * n * n, 0.0f);
    gemm_acc(2 * n, n, dk, KQ, dk, Kt, n, Y, n);
    // Decay-weighted masks.
    for (int64_t r = 0; r < n; ++r) {
      const float br = beta[(c0 + r) * d.Hv + h];
      float* lr = negL + r * n;
      float* pr = P + r * n;
      const float* kk = Y + r * n;
      const float* qk = Y + (n + r) * n;
      for (int64_t s = 0; s < r; ++s) {
        const float gam = std::exp(G[r] - G[s]);
        lr[s] = -br * gam * kk[s];
        pr[s] = gam * qk[s];
      }
      lr[r] = 0.0f;
      pr[r] = qk[r];
      for (int64_t s = r + 1; s < n; ++s) lr[s] = pr[s] = 0.0f;
    }
    // Right-hand side: beta_r (v_r - e^G_r (S0^T k_r)).
    for (int64_t r = 0; r < n; ++r) {
      const float br = beta[(c0 + r) * d.Hv + h], er = eG[r];
      const float* vr = v + ((c0 + r) * d.Hv + h) * dv;
      const float* xr = X + r * dv;
      float* dr = Del + r * dv;
      for (int64_t c = 0; c < dv; ++c) dr[c] = br * (vr[c] - er * xr[c]);
    }
    // Forward substitution Del_r -= sum_{s<r} L_rs Del_s, four rows at a time: the rows before
    // the block by GEMM, the block's own triangle by axpys.
    for (int64_t r0 = 0; r0 < n; r0 += 4) {
      const int64_t rb = std::min<int64_t>(4, n - r0);
      gemm_acc(rb, dv, r0, negL + r0 * n, n, Del, dv, Del + r0 * dv, dv);
      for (int64_t r = r0 + 1; r < r0 + rb; ++r)
        for (int64_t s = r0; s < r; ++s) {
          const float l = negL[r * n + s];
          const float* ds = Del + s * dv;
          float* dr = Del + r * dv;
          for (int64_t c = 0; c < dv; ++c) dr[c] += l * ds[c];
        }
    }
    // O = diag(e^G) Q S0 + P Del (P is lower triangular: row block r0 needs columns <= r0+3).
    float* o = out + (c0 * d.Hv + h) * dv;
    for (int64_t r = 0; r < n; ++r) {
      const float er = eG[r];
      const float* xr = X + (n + r) * dv;
      float* orow = o + r * ldo;
      for (int64_t c = 0; c < dv; ++c) orow[c] = er * xr[c];
    }
    for (int64_t r0 = 0; r0 < n; r0 += 4) {
      const int64_t rb = std::min<int64_t>(4, n - r0);
      gemm_acc(rb, dv, r0 + rb, P + r0 * n, n, Del, dv, o + r0 * ldo, ldo);
    }
    // S = e^Gc S0 + (diag(e^(Gc - G)) K)^T Del.
    const float Gc = G[n - 1], egc = eG[n - 1];
    for (int64_t s = 0; s < n; ++s) {
      const float w = std::exp(Gc - G[s]);
      for (int64_t a = 0; a < dk; ++a) Kt[a * n + s] *= w;
    }
    for (int64_t i = 0; i < dk * dv; ++i) S0[i] *= egc;
    gemm_acc(dk, dv, n, Kt, n, Del, dv, S0, dv);
  }
}

}  // namespace

// Shorter inputs run the recurrence. Measured on the 2-core EPYC, 1 thread, per token: bench-moe
// shapes (Hv 16, dk = dv = 64) recurrence ~19 us, chunked 26 us at T = 1, 10-14 us at T = 8-16,
// 17-23 us at T = 128-512 (vs 26 us); real shapes (Hv 32, 128 x 128) recurrence 180-250 us,
// chunked 90-190 us from T = 8 on.
constexpr int64_t kDeltaChunkedMinT = 8;

namespace {
void delta_rule_run(const DeltaNetDims& d, const float* q, const float* k, const float* v,
                    const float* g, const float* beta, float* S, float* out, int n_threads,
                    bool chunked) {
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, d.Hv)));
  cpu_parallel_for(nt, d.Hv, [&](int64_t h) {
    float* scratch = dn_scratch(chunked ? delta_chunk_scratch(d) : static_cast<size_t>(d.dv));
    if (chunked)
      delta_head_chunked(d, h, q, k, v, g, beta, S, out, scratch);
    else
      delta_head_recurrent(d, h, q, k, v, g, beta, S, out, scratch);
  });
}
}  // namespace

namespace {
#if defined(__AVX2__) && defined(__FMA__)
// S[r][j] = dot(Q[r], K[j]) for r < 4 rows of Q (stride hd) and j < np positions (np even; hd a
// multiple of 8), K's row j read as 8-float vectors by k_row(j, d); before each pair of positions
// `before(j)` runs (prefetches). 4 rows x 2 positions of accumulators; the 8 sums reduced together
// (hadd tree) instead of one horizontal sum per score.
template <typename KRow, typename Before>
inline void qk_rows4_impl(const float* Q, int64_t np, int64_t hd, float* S, int64_t lds,
                          KRow k_row, Before before) {
  for (int64_t j = 0; j < np; j += 2) {
    before(j);
    __m256 a[8];
    for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; d += 8) {
      const __m256 x0 = k_row(j, d), x1 = k_row(j + 1, d);
      for (int r = 0; r < 4; ++r) {
        const __m256 qv = _mm256_loadu_ps(Q + r * hd + d);
        a[2 * r] = _mm256_fmadd_ps(qv, x0, a[2 * r]);
        a[2 * r + 1] = _mm256_fmadd_ps(qv, x1, a[2 * r + 1]);
      }
    }
    const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20),
                                     _mm256_permute2f128_ps(h0, h1, 0x31));
    alignas(32) float t[8];
    _mm256_store_ps(t, sum);
    for (int r = 0; r < 4; ++r) {
      S[r * lds + j] = t[2 * r];
      S[r * lds + j + 1] = t[2 * r + 1];
    }
  }
}

// K as f32 rows ([np][hd]).
inline void qk_rows4(const float* Q, const float* K, int64_t np, int64_t hd, float* S, int64_t lds) {
  qk_rows4_impl(
      Q, np, hd, S, lds, [&](int64_t j, int64_t d) { return _mm256_loadu_ps(K + j * hd + d); },
      [](int64_t) {});
}

// K straight from an f16 cache (rows `stride` bytes apart: a decode step reads each cached row
// once, no f32 copy), prefetching K 16 positions on and this block's V rows for pv_rows_f16.
inline void qk_rows4_f16(const float* Q, const uint8_t* K, const uint8_t* V, size_t stride,
                         int64_t np, int64_t hd, float* S, int64_t lds, int64_t n_prefetch) {
  constexpr int64_t kAhead = 16;
  auto prefetch_row = [hd](const uint8_t* row) {
    for (int64_t o = 0; o < hd * 2; o += 64) _mm_prefetch(reinterpret_cast<const char*>(row + o), _MM_HINT_T0);
  };
  qk_rows4_impl(
      Q, np, hd, S, lds,
      [&](int64_t j, int64_t d) {
        const uint16_t* k = reinterpret_cast<const uint16_t*>(K + j * stride) + d;
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k)));
      },
      [&](int64_t j) {
        for (int64_t x = j + kAhead; x < j + kAhead + 2 && x < n_prefetch; ++x) prefetch_row(K + x * stride);
        for (int64_t x = j; x < j + 2; ++x) prefetch_row(V + x * stride);
      });
}

// O[r] += sum_j P[r][j] V[j] for r < NR <= 4, V rows straight from an f16 cache (qk_rows4_f16
// has prefetched them): gemm_tile's 16-column body with B read from the cache, so it gives the
// same bits as gemm_acc on an f32 copy.
template <int NR>
inline void pv_rows_f16(const float* P, int64_t lds, const uint8_t* V, size_t stride, int64_t np,
                        int64_t hd, float* O) {
  for (int64_t d0 = 0; d0 < hd; d0 += 16)
    gemm_cols16<NR>(
        np, P, lds,
        [&](int64_t j, int64_t c) {
          const uint16_t* v = reinterpret_cast<const uint16_t*>(V + j * stride) + d0 + c;
          return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v)));
        },
        O + d0, hd);
}
#endif
}  // namespace

// Blocked ("flash") form: per (block of up to 16 tokens, KV head), positions in blocks of 64:
// the block's K and V rows converted to f32 once for all the block's tokens x the group's query
// heads; scores as a small matrix product; an online softmax (running max and sum per row, the
// output rescaled when the max grows); P . V as a register-tiled product. No score row of the
// whole context is kept, so long contexts stay in L1/L2.
void attention_cpu(const float* q, int64_t T, int64_t nh, int64_t hd, const KvView& k,
                   const KvView& v, int64_t n_past, float scale, float* out, int n_threads) {
#if defined(__AVX2__) && defined(__FMA__)
  if (hd % 16 != 0)
#endif
  {
    attention_two_pass(q, T, nh, hd, k, v, n_past, scale, out, n_threads);
    return;
  }
#if defined(__AVX2__) && defined(__FMA__)
  const int64_t nkv = k.n_kv_heads;
  const int64_t group = nh / nkv;
  constexpr int64_t kTb = 16, kP = 64;
  constexpr int64_t kAhead = 8;  // prefetch distance (rows) of the f32-copy path
  const int64_t n_blocks = (T + kTb - 1) / kTb;
  // One token over a long context: the positions in segments of kSeg, each a task with its own
  // running max / sum / output, merged in segment order afterwards (flash-decoding), so that
  // more threads than KV heads share the cache reads. The split depends on the context length
  // only, never on the thread count.
  constexpr int64_t kSeg = 4096;
  const int64_t n_seg = T == 1 ? (n_past + 1 + kSeg - 1) / kSeg : 1;
  const int64_t n_tasks = n_blocks * nkv * n_seg;
  thread_local std::vector<float> parts;  // [nkv][n_seg][group] x (m, l, O[hd]) when n_seg > 1
  if (n_seg > 1 && parts.size() < static_cast<size_t>(nkv * n_seg * group * (hd + 2)))
    parts.resize(nkv * n_seg * group * (hd + 2));
  float* const parts_base = parts.data();
  cpu_parallel_for(n_threads, n_tasks, [&](int64_t task) {
    const int64_t seg = task / (n_blocks * nkv), bt = task % (n_blocks * nkv);
    const int64_t blk = n_blocks - 1 - bt / nkv, kvh = bt % nkv;
    const int64_t t0 = blk * kTb, tn = std::min(kTb, T - t0);
    const int64_t R = tn * group, Rp = (R + 3) / 4 * 4;
    const int64_t n_ctx_all = n_past + t0 + tn;  // context of the block's last token
    const int64_t p_begin = seg * kSeg;
    const int64_t n_ctx_blk = n_seg > 1 ? std::min(n_ctx_all, p_begin + kSeg) : n_ctx_all;
    thread_local std::vector<float> scratch;
    const size_t need = static_cast<size_t>(Rp * hd + Rp * kP + 2 * kP * hd + R * hd + 2 * R + 8);
    if (scratch.size() < need) scratch.resize(need);
    float* Q = scratch.data();       // [Rp][hd], pre-scaled, padding rows zero
    float* S = Q + Rp * hd;          // [Rp][kP] scores, then probabilities
    float* Kb = S + Rp * kP;         // [kP][hd]
    float* Vb = Kb + kP * hd;        // [kP][hd]
    float* O = Vb + kP * hd;         // [R][hd]
    float* m = O + R * hd;           // running max per row
    float* l = m + R;                // running sum per row
    // Row r = (token i, head g in the group) = query head kvh * group + g of token t0 + i.
    for (int64_t r = 0; r < Rp; ++r) {
      float* qr = Q + r * hd;
      if (r >= R) {
        std::fill(qr, qr + hd, 0.0f);
        continue;
      }
      const float* src = q + ((t0 + r / group) * nh + kvh * group + r % group) * hd;
      for (int64_t d = 0; d < hd; ++d) qr[d] = src[d] * scale;
    }
    std::fill(O, O + R * hd, 0.0f);
    std::fill(m, m + R, -INFINITY);
    std::fill(l, l + R, 0.0f);
    for (int64_t pb = p_begin; pb < n_ctx_blk; pb += kP) {
      const int64_t np = std::min(kP, n_ctx_blk - pb);
      const int64_t npe = (np + 1) / 2 * 2;  // even: qk_rows4 takes positions in pairs
      // Decode (up to 4 rows, f16 cache): K and V read in place, once.
      const bool direct = Rp == 4 && k.type == GgmlType::F16 && v.type == GgmlType::F16 &&
                          np == npe && k.pos_stride_bytes == v.pos_stride_bytes;
      const uint8_t* kb = kv_head_f16(k, pb, kvh);
      const uint8_t* vb = kv_head_f16(v, pb, kvh);
      if (direct)
        qk_rows4_f16(Q, kb, vb, k.pos_stride_bytes, npe, hd, S, kP, n_ctx_blk - pb);
      for (int64_t j = 0; !direct && j < np; ++j) {
        if (pb + j + kAhead < n_ctx_blk) {
          prefetch_kv_row(k, pb + j + kAhead, kvh * hd, hd);
          prefetch_kv_row(v, pb + j + kAhead, kvh * hd, hd);
        }
        load_kv_row(k, pb + j, kvh * hd, hd, Kb + j * hd);
        load_kv_row(v, pb + j, kvh * hd, hd, Vb + j * hd);
      }
      if (!direct) {
        if (npe > np) std::fill(Kb + np * hd, Kb + npe * hd, 0.0f);
        for (int64_t r0 = 0; r0 < Rp; r0 += 4) qk_rows4(Q + r0 * hd, Kb, npe, hd, S + r0 * kP, kP);
      }
      // Online softmax per row over its visible positions in this block.
      for (int64_t r = 0; r < R; ++r) {
        const int64_t lim = n_past + t0 + r / group;  // last visible position
        const int64_t nv = std::min(np, lim - pb + 1);
        float* sr = S + r * kP;
        if (nv <= 0) {
          std::fill(sr, sr + np, 0.0f);
          continue;
        }
        float bm = -INFINITY;
        for (int64_t j = 0; j < nv; ++j) bm = std::max(bm, sr[j]);
        const float mn = std::max(m[r], bm);
        const float c = m[r] == -INFINITY ? 0.0f : std::exp(m[r] - mn);
        m[r] = mn;
        const __m256 mv = _mm256_set1_ps(mn);
        __m256 sum = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 8 <= nv; j += 8) {
          const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(sr + j), mv));
          _mm256_storeu_ps(sr + j, e);
          sum = _mm256_add_ps(sum, e);
        }
        float ls = hsum8(sum);
        if (j < nv) {  // the tail through the same vector exp, on a padded copy
          alignas(32) float tt[8];
          for (int64_t x = 0; x < 8; ++x) tt[x] = j + x < nv ? sr[j + x] - mn : -INFINITY;
          _mm256_store_ps(tt, exp_ps(_mm256_load_ps(tt)));
          for (int64_t x = 0; j + x < nv; ++x) {
            sr[j + x] = tt[x];
            ls += tt[x];
          }
        }
        for (int64_t x = nv; x < np; ++x) sr[x] = 0.0f;
        l[r] = l[r] * c + ls;
        if (c != 1.0f) {
          float* orow = O + r * hd;
          for (int64_t d = 0; d < hd; ++d) orow[d] *= c;
        }
      }
      if (direct) {
        switch (R) {
          case 4: pv_rows_f16<4>(S, kP, vb, v.pos_stride_bytes, np, hd, O); break;
          case 3: pv_rows_f16<3>(S, kP, vb, v.pos_stride_bytes, np, hd, O); break;
          case 2: pv_rows_f16<2>(S, kP, vb, v.pos_stride_bytes, np, hd, O); break;
          default: pv_rows_f16<1>(S, kP, vb, v.pos_stride_bytes, np, hd, O); break;
        }
      } else
        gemm_acc(R, hd, np, S, kP, Vb, hd, O, hd);
    }
    if (n_seg > 1) {  // T == 1: R == group rows; keep this segment's state for the merge
      for (int64_t r = 0; r < R; ++r) {
        float* part = parts_base + ((kvh * n_seg + seg) * group + r) * (hd + 2);
        part[0] = m[r];
        part[1] = l[r];
        std::memcpy(part + 2, O + r * hd, hd * 4);
      }
      return;
    }
    for (int64_t r = 0; r < R; ++r) {
      const float inv = 1.0f / l[r];
      float* dst = out + ((t0 + r / group) * nh + kvh * group + r % group) * hd;
      const float* orow = O + r * hd;
      for (int64_t d = 0; d < hd; ++d) dst[d] = orow[d] * inv;
    }
  });
  if (n_seg == 1) return;
  // Merge the segments in order: max of the maxima, each segment's sum and output rescaled.
  for (int64_t kvh = 0; kvh < nkv; ++kvh)
    for (int64_t r = 0; r < group; ++r) {
      const auto part = [&](int64_t sg) { return parts_base + ((kvh * n_seg + sg) * group + r) * (hd + 2); };
      float mx = -INFINITY;
      for (int64_t sg = 0; sg < n_seg; ++sg) mx = std::max(mx, part(sg)[0]);
      float* dst = out + (kvh * group + r) * hd;
      std::fill(dst, dst + hd, 0.0f);
      float sum = 0.0f;
      for (int64_t sg = 0; sg < n_seg; ++sg) {
        const float* ps = part(sg);
        const float w = std::exp(ps[0] - mx);
        sum += ps[1] * w;
        for (int64_t d = 0; d < hd; ++d) dst[d] += ps[2 + d] * w;
      }
      const float inv = 1.0f / sum;
      for (int64_t d = 0; d < hd; ++d) dst[d] *= inv;
    }
#endif
}

void delta_rule_cpu(const DeltaNetDims& d, const float* q, const float* k, const float* v,
                    const float* g, const float* beta, float* S, float* out, int n_threads) {
  delta_rule_run(d, q, k, v, g, beta, S, out, n_threads, d.T >= kDeltaChunkedMinT);
}

void delta_rule_chunked_cpu(const DeltaNetDims& d, const float* q, const float* k,
                            const float* v, const float* g, const float* beta, float* S,
                            float* out, int n_threads) {
  delta_rule_run(d, q, k, v, g, beta, S, out, n_threads, true);
}

}  // namespace rs
