// Reference dequantisers and quantisers of the compute types (spec §6.2). Plain loops: these
// are the definition of right for the fast CPU path and the CUDA kernels.
//
// Quantisers: round to nearest with a least-squares scale search per sub-block (a handful of
// candidate scales, each refitted by least squares on the integer codes it produces; the one
// with the smallest squared error wins), then the sub-block scales are themselves quantised
// (6 or 8 bits) against a per-block fp16 super-scale and the codes recomputed with the scales
// actually stored. Deterministic; not bit-identical to ggml's search.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/formats.h"
#include "kernels/quant_blocks.h"

namespace rs {
namespace {

using namespace qblk;

inline int nearest_int(float v) { return static_cast<int>(std::lrintf(v)); }
inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
inline float h2f(uint16_t h) { return fp16_to_f32(h); }

// ---------------------------------------------------------------------------------------------
// Dequantisers
// ---------------------------------------------------------------------------------------------

void deq_q8_0(const BlockQ8_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d);
    for (int j = 0; j < kQK; ++j) y[i * kQK + j] = d * b[i].qs[j];
  }
}

void deq_q4_0(const BlockQ4_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      y[i * kQK + j] = d * ((b[i].qs[j] & 15) - 8);
      y[i * kQK + j + 16] = d * ((b[i].qs[j] >> 4) - 8);
    }
  }
}

void deq_q4_k(const BlockQ4_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    float* out = y + i * kQKK;
    for (int c = 0; c < 4; ++c) {
      uint8_t sc0, m0, sc1, m1;
      get_scale_min(2 * c, b[i].scales, &sc0, &m0);
      get_scale_min(2 * c + 1, b[i].scales, &sc1, &m1);
      const float d0 = d * sc0, o0 = dmin * m0, d1 = d * sc1, o1 = dmin * m1;
      for (int l = 0; l < 32; ++l) {
        const uint8_t q = b[i].qs[32 * c + l];
        out[64 * c + l] = d0 * (q & 15) - o0;
        out[64 * c + 32 + l] = d1 * (q >> 4) - o1;
      }
    }
  }
}

void deq_q5_k(const BlockQ5_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    float* out = y + i * kQKK;
    for (int c = 0; c < 4; ++c) {
      uint8_t sc0, m0, sc1, m1;
      get_scale_min(2 * c, b[i].scales, &sc0, &m0);
      get_scale_min(2 * c + 1, b[i].scales, &sc1, &m1);
      const float d0 = d * sc0, o0 = dmin * m0, d1 = d * sc1, o1 = dmin * m1;
      for (int l = 0; l < 32; ++l) {
        const uint8_t q = b[i].qs[32 * c + l];
        const int h0 = (b[i].qh[l] >> (2 * c)) & 1, h1 = (b[i].qh[l] >> (2 * c + 1)) & 1;
        out[64 * c + l] = d0 * ((q & 15) + 16 * h0) - o0;
        out[64 * c + 32 + l] = d1 * ((q >> 4) + 16 * h1) - o1;
      }
    }
  }
}

void deq_q6_k(const BlockQ6_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d);
    for (int n = 0; n < 2; ++n) {
      const uint8_t* ql = b[i].ql + 64 * n;
      const uint8_t* qh = b[i].qh + 32 * n;
      const int8_t* sc = b[i].scales + 8 * n;
      float* out = y + i * kQKK + 128 * n;
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = (ql[l] & 15) | (((qh[l] >> 0) & 3) << 4);
        const int q2 = (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4);
        const int q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
        const int q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        out[l] = d * sc[is] * (q1 - 32);
        out[l + 32] = d * sc[is + 2] * (q2 - 32);
        out[l + 64] = d * sc[is + 4] * (q3 - 32);
        out[l + 96] = d * sc[is + 6] * (q4 - 32);
      }
    }
  }
}

void deq_iq4_xs(const BlockIQ4_XS* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d);
    for (int ib = 0; ib < 8; ++ib) {
      const int ls = ((b[i].scales_l[ib / 2] >> (4 * (ib % 2))) & 15) |
                     (((b[i].scales_h >> (2 * ib)) & 3) << 4);
      const float dl = d * (ls - 32);
      const uint8_t* qs = b[i].qs + 16 * ib;
      float* out = y + i * kQKK + 32 * ib;
      for (int j = 0; j < 16; ++j) {
        out[j] = dl * kIq4nl[qs[j] & 15];
        out[j + 16] = dl * kIq4nl[qs[j] >> 4];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Scale searches
// ---------------------------------------------------------------------------------------------

// Symmetric codes q in [qmin, qmax] (qmin < 0 < qmax), x ~= s * q. Returns the best s (0 for an
// all-zero input). The candidates map the largest-magnitude value to slightly different codes
// near qmin (the longer side of the range), each refitted by least squares.
float search_scale_sym(const float* x, int n, int qmin, int qmax) {
  float amax = 0, xm = 0;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) { amax = std::fabs(x[i]); xm = x[i]; }
  }
  if (amax == 0) return 0;
  float best_s = xm / qmin, best_err = INFINITY;
  for (int k = -8; k <= 8; ++k) {
    const float iscale = (qmin - 0.1f * k) / xm;
    double sqx = 0, sqq = 0;
    for (int i = 0; i < n; ++i) {
      const int q = clampi(nearest_int(iscale * x[i]), qmin, qmax);
      sqx += static_cast<double>(q) * x[i];
      sqq += static_cast<double>(q) * q;
    }
    if (sqq == 0) continue;
    const float s = static_cast<float>(sqx / sqq);
    double err = 0;
    for (int i = 0; i < n; ++i) {
      const int q = clampi(nearest_int(x[i] / s), qmin, qmax);
      const double e = x[i] - s * q;
      err += e * e;
    }
    if (err < best_err) { best_err = err; best_s = s; }
  }
  return best_s;
}

// Asymmetric codes q in [0, qmax], x ~= scale * q - min with scale >= 0, min >= 0 (the block
// minimum is taken as <= 0, as the stored min is unsigned). Least-squares refit per candidate.
void search_scale_min(const float* x, int n, int qmax, float* scale_out, float* min_out) {
  float xmin = x[0], xmax = x[0];
  for (int i = 1; i < n; ++i) {
    xmin = std::fmin(xmin, x[i]);
    xmax = std::fmax(xmax, x[i]);
  }
  if (xmin > 0) xmin = 0;
  if (xmax <= xmin) {
    *scale_out = 0;
    *min_out = -xmin;
    return;
  }
  float best_scale = (xmax - xmin) / qmax, best_off = xmin;
  double best_err = INFINITY;
  for (int k = -6; k <= 8; ++k) {
    const float iscale = (qmax + 0.1f * k) / (xmax - xmin);
    double sq = 0, sx = 0, sqq = 0, sqx = 0;
    for (int i = 0; i < n; ++i) {
      const int q = clampi(nearest_int(iscale * (x[i] - xmin)), 0, qmax);
      sq += q; sx += x[i]; sqq += static_cast<double>(q) * q; sqx += static_cast<double>(q) * x[i];
    }
    // Least squares for x ~= scale*q + off.
    const double det = n * sqq - sq * sq;
    double scale, off;
    if (det > 0) {
      scale = (n * sqx - sq * sx) / det;
      off = (sx - scale * sq) / n;
    } else {
      scale = (xmax - xmin) / qmax; off = xmin;
    }
    if (off > 0) {  // the offset must be <= 0: refit the scale alone with off = 0
      off = 0;
      scale = sqq > 0 ? sqx / sqq : 0;
    }
    if (scale <= 0) continue;
    double err = 0;
    for (int i = 0; i < n; ++i) {
      const int q = clampi(nearest_int(static_cast<float>((x[i] - off) / scale)), 0, qmax);
      const double e = x[i] - (scale * q + off);
      err += e * e;
    }
    if (err < best_err) {
      best_err = err;
      best_scale = static_cast<float>(scale);
      best_off = static_cast<float>(off);
    }
  }
  *scale_out = best_scale;
  *min_out = -best_off;
}

// ---------------------------------------------------------------------------------------------
// Quantisers
// ---------------------------------------------------------------------------------------------

void quant_q8_0(const float* x, BlockQ8_0* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * kQK;
    float amax = 0;
    for (int j = 0; j < kQK; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
    b[i].d = f32_to_fp16(amax / 127);
    const float d = h2f(b[i].d);
    const float id = d != 0 ? 1.0f / d : 0;
    for (int j = 0; j < kQK; ++j) b[i].qs[j] = static_cast<int8_t>(clampi(nearest_int(xb[j] * id), -127, 127));
  }
}

void quant_q4_0(const float* x, BlockQ4_0* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * kQK;
    b[i].d = f32_to_fp16(search_scale_sym(xb, kQK, -8, 7));
    const float d = h2f(b[i].d);
    const float id = d != 0 ? 1.0f / d : 0;
    int q[kQK];
    for (int j = 0; j < kQK; ++j) q[j] = clampi(nearest_int(xb[j] * id), -8, 7) + 8;
    for (int j = 0; j < 16; ++j) b[i].qs[j] = static_cast<uint8_t>(q[j] | (q[j + 16] << 4));
  }
}

// Shared by Q4_K (qmax 15) and Q5_K (qmax 31): 8 sub-blocks with 6-bit scales and mins.
// Writes d, dmin, scales[12] and the codes q[256] in 0..qmax.
void quant_kx_block(const float* x, int qmax, uint16_t* d_out, uint16_t* dmin_out,
                    uint8_t scales[12], uint8_t q[kQKK]) {
  float sub_scale[8], sub_min[8], max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    search_scale_min(x + 32 * j, 32, qmax, &sub_scale[j], &sub_min[j]);
    max_scale = std::fmax(max_scale, sub_scale[j]);
    max_min = std::fmax(max_min, sub_min[j]);
  }
  *d_out = f32_to_fp16(max_scale / 63);
  *dmin_out = f32_to_fp16(max_min / 63);
  const float d = h2f(*d_out), dmin = h2f(*dmin_out);
  uint8_t sc[8], m[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = static_cast<uint8_t>(d > 0 ? clampi(nearest_int(sub_scale[j] / d), 0, 63) : 0);
    m[j] = static_cast<uint8_t>(dmin > 0 ? clampi(nearest_int(sub_min[j] / dmin), 0, 63) : 0);
  }
  std::memset(scales, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      scales[j] |= sc[j];
      scales[j + 4] |= m[j];
    } else {
      scales[j + 4] = static_cast<uint8_t>((sc[j] & 15) | ((m[j] & 15) << 4));
      scales[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      scales[j] |= static_cast<uint8_t>((m[j] >> 4) << 6);
    }
  }
  for (int j = 0; j < 8; ++j) {
    uint8_t scj, mj;
    get_scale_min(j, scales, &scj, &mj);
    const float dl = d * scj, ml = dmin * mj;
    for (int l = 0; l < 32; ++l) {
      q[32 * j + l] = static_cast<uint8_t>(dl > 0 ? clampi(nearest_int((x[32 * j + l] + ml) / dl), 0, qmax) : 0);
    }
  }
}

void quant_q4_k(const float* x, BlockQ4_K* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    uint8_t q[kQKK];
    quant_kx_block(x + i * kQKK, 15, &b[i].d, &b[i].dmin, b[i].scales, q);
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l)
        b[i].qs[32 * c + l] = static_cast<uint8_t>(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
  }
}

void quant_q5_k(const float* x, BlockQ5_K* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    uint8_t q[kQKK];
    quant_kx_block(x + i * kQKK, 31, &b[i].d, &b[i].dmin, b[i].scales, q);
    std::memset(b[i].qh, 0, sizeof(b[i].qh));
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t lo = q[64 * c + l], hi = q[64 * c + 32 + l];
        b[i].qs[32 * c + l] = static_cast<uint8_t>((lo & 15) | ((hi & 15) << 4));
        b[i].qh[l] |= static_cast<uint8_t>(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
      }
    }
  }
}

void quant_q6_k(const float* x, BlockQ6_K* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * kQKK;
    float sub[16], amax = 0;
    for (int s = 0; s < 16; ++s) {
      sub[s] = search_scale_sym(xb + 16 * s, 16, -32, 31);
      amax = std::fmax(amax, std::fabs(sub[s]));
    }
    b[i].d = f32_to_fp16(amax / 127);
    const float d = h2f(b[i].d);
    int q[kQKK];
    for (int s = 0; s < 16; ++s) {
      b[i].scales[s] = static_cast<int8_t>(d > 0 ? clampi(nearest_int(sub[s] / d), -127, 127) : 0);
      const float dl = d * b[i].scales[s];
      for (int l = 0; l < 16; ++l)
        q[16 * s + l] = (dl != 0 ? clampi(nearest_int(xb[16 * s + l] / dl), -32, 31) : 0) + 32;
    }
    std::memset(b[i].qh, 0, sizeof(b[i].qh));
    for (int n = 0; n < 2; ++n) {
      uint8_t* ql = b[i].ql + 64 * n;
      uint8_t* qh = b[i].qh + 32 * n;
      const int* qq = q + 128 * n;
      for (int l = 0; l < 32; ++l) {
        ql[l] = static_cast<uint8_t>((qq[l] & 15) | ((qq[l + 64] & 15) << 4));
        ql[l + 32] = static_cast<uint8_t>((qq[l + 32] & 15) | ((qq[l + 96] & 15) << 4));
        qh[l] = static_cast<uint8_t>((qq[l] >> 4) | ((qq[l + 32] >> 4) << 2) |
                                     ((qq[l + 64] >> 4) << 4) | ((qq[l + 96] >> 4) << 6));
      }
    }
  }
}

int nearest_iq4(float v) {  // index of the code book entry nearest to v
  int best = 0;
  float best_e = std::fabs(v - kIq4nl[0]);
  for (int k = 1; k < 16; ++k) {
    const float e = std::fabs(v - kIq4nl[k]);
    if (e < best_e) { best_e = e; best = k; }
  }
  return best;
}

// Best s for x ~= s * kIq4nl[k_i] over a sub-block of 32 (s may be negative).
float search_scale_iq4(const float* x, int n) {
  float amax = 0, xm = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) { amax = std::fabs(x[i]); xm = x[i]; }
  if (amax == 0) return 0;
  float best_s = xm / -127.0f;
  double best_err = INFINITY;
  for (int sign = 0; sign < 2; ++sign) {
    const float extreme = sign == 0 ? -127.0f : 113.0f;
    for (int k = -6; k <= 6; ++k) {
      const float s0 = xm / (extreme + 2.0f * k * (sign == 0 ? -1 : 1));
      double stx = 0, stt = 0;
      for (int i = 0; i < n; ++i) {
        const float t = kIq4nl[nearest_iq4(x[i] / s0)];
        stx += static_cast<double>(t) * x[i];
        stt += static_cast<double>(t) * t;
      }
      const float s = static_cast<float>(stx / stt);
      if (s == 0) continue;
      double err = 0;
      for (int i = 0; i < n; ++i) {
        const double e = x[i] - s * kIq4nl[nearest_iq4(x[i] / s)];
        err += e * e;
      }
      if (err < best_err) { best_err = err; best_s = s; }
    }
  }
  return best_s;
}

void quant_iq4_xs(const float* x, BlockIQ4_XS* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * kQKK;
    float sub[8], max_s = 0;
    for (int ib = 0; ib < 8; ++ib) {
      sub[ib] = search_scale_iq4(xb + 32 * ib, 32);
      if (std::fabs(sub[ib]) > std::fabs(max_s)) max_s = sub[ib];
    }
    // The largest-magnitude sub-scale maps to code -32 (the longer side of -32..31).
    b[i].d = f32_to_fp16(-max_s / 32);
    const float d = h2f(b[i].d);
    b[i].scales_h = 0;
    std::memset(b[i].scales_l, 0, sizeof(b[i].scales_l));
    for (int ib = 0; ib < 8; ++ib) {
      // The stored sub-scale: the rounded one or a neighbour, whichever gives the least error.
      int l = d != 0 ? clampi(nearest_int(sub[ib] / d), -32, 31) : 0;
      if (d != 0) {
        double best_err = INFINITY;
        const int l0 = l;
        for (int cand = std::max(-32, l0 - 1); cand <= std::min(31, l0 + 1); ++cand) {
          const float dl = d * cand;
          if (dl == 0) continue;
          double err = 0;
          for (int j = 0; j < 32; ++j) {
            const float v = xb[32 * ib + j];
            const double e = v - dl * kIq4nl[nearest_iq4(v / dl)];
            err += e * e;
          }
          if (err < best_err) { best_err = err; l = cand; }
        }
      }
      const int ls = l + 32;
      b[i].scales_l[ib / 2] |= static_cast<uint8_t>((ls & 15) << (4 * (ib % 2)));
      b[i].scales_h |= static_cast<uint16_t>((ls >> 4) << (2 * ib));
      const float dl = d * l;
      uint8_t* qs = b[i].qs + 16 * ib;
      for (int j = 0; j < 16; ++j) {
        const int q0 = dl != 0 ? nearest_iq4(xb[32 * ib + j] / dl) : 8;
        const int q1 = dl != 0 ? nearest_iq4(xb[32 * ib + j + 16] / dl) : 8;
        qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
      }
    }
  }
}

}  // namespace

void dequantize_row_ref(GgmlType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_f32(s[i]);
      return;
    }
    case GgmlType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case GgmlType::Q8_0: return deq_q8_0(static_cast<const BlockQ8_0*>(src), dst, n / kQK);
    case GgmlType::Q4_0: return deq_q4_0(static_cast<const BlockQ4_0*>(src), dst, n / kQK);
    case GgmlType::Q4_K: return deq_q4_k(static_cast<const BlockQ4_K*>(src), dst, n / kQKK);
    case GgmlType::Q5_K: return deq_q5_k(static_cast<const BlockQ5_K*>(src), dst, n / kQKK);
    case GgmlType::Q6_K: return deq_q6_k(static_cast<const BlockQ6_K*>(src), dst, n / kQKK);
    case GgmlType::IQ4_XS: return deq_iq4_xs(static_cast<const BlockIQ4_XS*>(src), dst, n / kQKK);
    default:
      std::abort();  // callers check is_compute_type() first; anything else is a bug
  }
}

void quantize_row_ref(GgmlType t, const float* src, void* dst, int64_t n) {
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_fp16(src[i]);
      return;
    }
    case GgmlType::BF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case GgmlType::Q8_0: return quant_q8_0(src, static_cast<BlockQ8_0*>(dst), n / kQK);
    case GgmlType::Q4_0: return quant_q4_0(src, static_cast<BlockQ4_0*>(dst), n / kQK);
    case GgmlType::Q4_K: return quant_q4_k(src, static_cast<BlockQ4_K*>(dst), n / kQKK);
    case GgmlType::Q5_K: return quant_q5_k(src, static_cast<BlockQ5_K*>(dst), n / kQKK);
    case GgmlType::Q6_K: return quant_q6_k(src, static_cast<BlockQ6_K*>(dst), n / kQKK);
    case GgmlType::IQ4_XS: return quant_iq4_xs(src, static_cast<BlockIQ4_XS*>(dst), n / kQKK);
    default:
      std::abort();  // callers check is_compute_type() first; anything else is a bug
  }
}

}  // namespace rs
