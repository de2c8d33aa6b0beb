// The weight formats' matvec dot products, private to kernels/cuda: one "unit" (16..32 weights
// of a row, the share of one lane) times the activations, for 1..NT tokens. Used by the decode
// matvec (cuda_matvec.cu) and the fused MoE decode kernels (moe_decode_kernel.cuh); everything
// is __host__ __device__, so the host build (cuda_emulation_test, the SIMT emulator) runs the
// same code.
//
// Units: lane i of a warp takes units i, i+32, ...; each unit is read with 16-byte loads where
// the block layout allows it (Q4_K, Q5_K, F16, BF16, F32), 8-byte loads (IQ4_XS) or 2-byte loads
// (Q6_K, Q8_0, Q4_0: their blocks are only 2-byte aligned). Integer formats multiply with dp4a
// against the activations quantised to q8 blocks of 32 ({d, sum(x)} per block; the k-quant
// minimum term uses the exact float sum); float formats use the f32 activations.
#pragma once

#include <cstdint>

#include "kernels/cuda/cuda_quant.cuh"

namespace rs::cuda::detail {

struct ActDev {
  const float* x;
  int64_t ldx;
  const int8_t* q;
  const float2* ds;
  int64_t cols;
  RS_HD ActDev token(int t) const {
    ActDev a = *this;
    a.x += t * ldx;
    if (q) {
      a.q += t * cols;
      a.ds += t * (cols / 32);
    }
    return a;
  }
};

RS_HD int4 ld_act16(const int8_t* q, int64_t e) {
  return *reinterpret_cast<const int4*>(q + e);
}
RS_HD int dot16(const uint32_t* w, int4 x) {
  int s = dp4a(w[0], x.x, 0);
  s = dp4a(w[1], x.y, s);
  s = dp4a(w[2], x.z, s);
  return dp4a(w[3], x.w, s);
}
// The 6-bit scales and mins of sub-blocks 2c and 2c+1 (c = 0..3) at once, without branches (the
// lanes of a warp hold different c): byte 0 of *sc / *m is sub-block 2c's, byte 1 2c+1's. Those
// are bytes 2(c&1) and 2(c&1)+1 of each scale word; for c >= 2 the low 4 bits come from s2 and
// the top 2 from bits 6-7 of s0 (scales) or s1 (mins), as scale_min's j >= 4 case.
RS_HD void scale_min_pair(int c, uint32_t s0, uint32_t s1, uint32_t s2, uint32_t* sc,
                          uint32_t* m) {
  const int sh = 16 * (c & 1);
  const uint32_t a0 = s0 >> sh, a1 = s1 >> sh, a2 = s2 >> sh;
  const bool hi = c >= 2;
  *sc = hi ? ((a2 & 0x0F0Fu) | ((a0 >> 2) & 0x3030u)) : (a0 & 0x3F3Fu);
  *m = hi ? (((a2 >> 4) & 0x0F0Fu) | ((a1 >> 2) & 0x3030u)) : (a1 & 0x3F3Fu);
}

template <GgmlType T> struct Fmt;

template <> struct Fmt<GgmlType::F32> {
  static __host__ __device__ int64_t units(int64_t cols) { return cols / 8; }
  template <int NT>
  static RS_HD void dot(const uint8_t* row, int64_t u, const ActDev& a,
                                             float* acc) {
    const float4* w = reinterpret_cast<const float4*>(row) + 2 * u;
    const float4 w0 = w[0], w1 = w[1];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float4* x = reinterpret_cast<const float4*>(a.x + t * a.ldx) + 2 * u;
      const float4 x0 = x[0], x1 = x[1];
      acc[t] += w0.x * x0.x + w0.y * x0.y + w0.z * x0.z + w0.w * x0.w + w1.x * x1.x +
                w1.y * x1.y + w1.z * x1.z + w1.w * x1.w;
    }
  }
};

template <> struct Fmt<GgmlType::F16> {
  static __host__ __device__ int64_t units(int64_t cols) { return cols / 8; }
  template <int NT>
  static RS_HD void dot(const uint8_t* row, int64_t u, const ActDev& a,
                                             float* acc) {
    const uint4 raw = reinterpret_cast<const uint4*>(row)[u];
    const uint32_t wr[4] = {raw.x, raw.y, raw.z, raw.w};
    float wf[8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      wf[2 * i] = h2f(static_cast<uint16_t>(wr[i] & 0xFFFF));
      wf[2 * i + 1] = h2f(static_cast<uint16_t>(wr[i] >> 16));
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float4* x = reinterpret_cast<const float4*>(a.x + t * a.ldx) + 2 * u;
      const float4 x0 = x[0], x1 = x[1];
      acc[t] += wf[0] * x0.x + wf[1] * x0.y + wf[2] * x0.z + wf[3] * x0.w + wf[4] * x1.x +
                wf[5] * x1.y + wf[6] * x1.z + wf[7] * x1.w;
    }
  }
};

template <> struct Fmt<GgmlType::BF16> {
  static __host__ __device__ int64_t units(int64_t cols) { return cols / 8; }
  template <int NT>
  static RS_HD void dot(const uint8_t* row, int64_t u, const ActDev& a,
                                             float* acc) {
    const uint4 raw = reinterpret_cast<const uint4*>(row)[u];
    const uint32_t wr[4] = {raw.x, raw.y, raw.z, raw.w};
    float wf[8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      wf[2 * i] = u2f(wr[i] << 16);
      wf[2 * i + 1] = u2f(wr[i] & 0xFFFF0000u);
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float4* x = reinterpret_cast<const float4*>(a.x + t * a.ldx) + 2 * u;
      const float4 x0 = x[0], x1 = x[1];
      acc[t] += wf[0] * x0.x + wf[1] * x0.y + wf[2] * x0.z + wf[3] * x0.w + wf[4] * x1.x +
                wf[5] * x1.y + wf[6] * x1.z + wf[7] * x1.w;
    }
  }
};

// Q8_0: unit = half a block (16 weights).
template <> struct Fmt<GgmlType::Q8_0> {
  static __host__ __device__ int64_t units(int64_t cols) { return cols / 16; }
  template <int NT>
  static RS_HD void dot(const uint8_t* row, int64_t u, const ActDev& a,
                                             float* acc) {
    const int64_t b = u >> 1;
    const int h = static_cast<int>(u & 1);
    const uint8_t* blk = row + b * 34;
    const float d = h2f(ld_u16(blk));
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = ld_u32_a2(blk + 2 + 16 * h + 4 * i);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int8_t* q = a.q + t * a.cols;
      const float2* ds = a.ds + t * (a.cols / 32);
      const int s = dot16(w, ld_act16(q, b * 32 + 16 * h));
      acc[t] += d * ds[b].x * static_cast<float>(s);
    }
  }
};

// Q4_0: unit = one block (32 weights).
template <> struct Fmt<GgmlType::Q4_0> {
  static __host__ __device__ int64_t units(int64_t cols) { return cols / 32; }
  template <int NT>
  static RS_HD void dot(const uint8_t* row, int64_t u, const ActDev& a,
                                             float* acc) {
    const uint8_t* blk = row + u * 18;
    const float d = h2f(ld_u16(blk));
    uint32_t lo[4], hi[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t w = ld_u32_a2(blk + 2 + 4 * i);
      lo[i] = vsub4(w & 0x0F0F0F0Fu, 0x08080808u);
      hi[i] = vsub4((w >> 4) & 0x0F0F0F0Fu, 0x08080808u);
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int8_t* q = a.q + t * a.cols;
      const float2* ds = a.ds + t * (a.cols / 32);
      const int s = dot16(lo, ld_act16(q, u * 32)) + dot16(hi, ld_act16(q, u * 32 + 16));
      acc[t] += d * ds[u].x * static_cast<float>(s);
    }
  }
};

// Q4_K / Q5_K: unit = 16 bytes of qs = 16 weights of sub-block 2c and 16 of sub-block 2c+1.
template <GgmlType T>
struct FmtQ45K {
  static constexpr int kBytes = T == GgmlType::Q4_K ? 144 : 176;
  static __host__ __device__ int64_t units(int64_t cols) { return cols / 32; }
  template <int NT>
  static RS_HD void dot(const uint8_t* row, int64_t u, const ActDev& a,
                                             float* acc) {
    const int64_t b = u >> 3;
    const int t8 = static_cast<int>(u & 7), c = t8 >> 1, h = t8 & 1;
    const uint8_t* blk = row + b * kBytes;
    const uint4 hdr = *reinterpret_cast<const uint4*>(blk);
    const uint4 qv = *reinterpret_cast<const uint4*>(blk + (T == GgmlType::Q4_K ? 16 : 48) +
                                                     32 * c + 16 * h);
    const float d = h2f(static_cast<uint16_t>(hdr.x & 0xFFFF));
    const float dmin = h2f(static_cast<uint16_t>(hdr.x >> 16));
    uint32_t scp, mp;
    scale_min_pair(c, hdr.y, hdr.z, hdr.w, &scp, &mp);
    const int sc0 = static_cast<int>(scp & 0xFF), sc1 = static_cast<int>((scp >> 8) & 0xFF);
    const int m0 = static_cast<int>(mp & 0xFF), m1 = static_cast<int>((mp >> 8) & 0xFF);
    const uint32_t qw[4] = {qv.x, qv.y, qv.z, qv.w};
    uint32_t lo[4], hi[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      lo[i] = qw[i] & 0x0F0F0F0Fu;
      hi[i] = (qw[i] >> 4) & 0x0F0F0F0Fu;
    }
    if constexpr (T == GgmlType::Q5_K) {
      const uint4 hv = *reinterpret_cast<const uint4*>(blk + 16 + 16 * h);
      const uint32_t hw[4] = {hv.x, hv.y, hv.z, hv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        lo[i] |= ((hw[i] >> (2 * c)) & 0x01010101u) << 4;
        hi[i] |= ((hw[i] >> (2 * c + 1)) & 0x01010101u) << 4;
      }
    }
    const int64_t e = b * 256 + 64 * c + 16 * h;
    const int64_t ab = b * 8 + 2 * c;
    const float dm = h == 0 ? dmin : 0.0f;  // the min term once per sub-block
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int8_t* q = a.q + t * a.cols;
      const float2* ds = a.ds + t * (a.cols / 32);
      const int sl = dot16(lo, ld_act16(q, e));
      const int sh = dot16(hi, ld_act16(q, e + 32));
      const float2 d0 = ds[ab], d1 = ds[ab + 1];
      acc[t] += d * (static_cast<float>(sc0) * d0.x * static_cast<float>(sl) +
                     static_cast<float>(sc1) * d1.x * static_cast<float>(sh)) -
                dm * (static_cast<float>(m0) * d0.y + static_cast<float>(m1) * d1.y);
    }
  }
};
template <> struct Fmt<GgmlType::Q4_K> : FmtQ45K<GgmlType::Q4_K> {};
template <> struct Fmt<GgmlType::Q5_K> : FmtQ45K<GgmlType::Q5_K> {};

// Q6_K: unit = 8 consecutive l of one half n: 4 groups of 8 weights (32 weights).
template <> struct Fmt<GgmlType::Q6_K> {
  static __host__ __device__ int64_t units(int64_t cols) { return cols / 32; }
  template <int NT>
  static RS_HD void dot(const uint8_t* row, int64_t u, const ActDev& a,
                                             float* acc) {
    const int64_t b = u >> 3;
    const int t8 = static_cast<int>(u & 7), n = t8 >> 2, l0 = (t8 & 3) * 8, is = l0 >> 4;
    const uint8_t* blk = row + b * 210;
    const uint32_t qa0 = ld_u32_a2(blk + 64 * n + l0), qa1 = ld_u32_a2(blk + 64 * n + l0 + 4);
    const uint32_t qb0 = ld_u32_a2(blk + 64 * n + 32 + l0);
    const uint32_t qb1 = ld_u32_a2(blk + 64 * n + 32 + l0 + 4);
    const uint32_t h0 = ld_u32_a2(blk + 128 + 32 * n + l0);
    const uint32_t h1 = ld_u32_a2(blk + 128 + 32 * n + l0 + 4);
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192 + 8 * n + is);
    const float d = h2f(ld_u16(blk + 208));
    uint32_t w[4][2];
    w[0][0] = (qa0 & 0x0F0F0F0Fu) | ((h0 & 0x03030303u) << 4);
    w[0][1] = (qa1 & 0x0F0F0F0Fu) | ((h1 & 0x03030303u) << 4);
    w[1][0] = (qb0 & 0x0F0F0F0Fu) | (((h0 >> 2) & 0x03030303u) << 4);
    w[1][1] = (qb1 & 0x0F0F0F0Fu) | (((h1 >> 2) & 0x03030303u) << 4);
    w[2][0] = ((qa0 >> 4) & 0x0F0F0F0Fu) | (((h0 >> 4) & 0x03030303u) << 4);
    w[2][1] = ((qa1 >> 4) & 0x0F0F0F0Fu) | (((h1 >> 4) & 0x03030303u) << 4);
    w[3][0] = ((qb0 >> 4) & 0x0F0F0F0Fu) | (((h0 >> 6) & 0x03030303u) << 4);
    w[3][1] = ((qb1 >> 4) & 0x0F0F0F0Fu) | (((h1 >> 6) & 0x03030303u) << 4);
    float scf[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      w[k][0] = vsub4(w[k][0], 0x20202020u);
      w[k][1] = vsub4(w[k][1], 0x20202020u);
      scf[k] = d * static_cast<float>(sc[2 * k]);
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int8_t* q = a.q + t * a.cols;
      const float2* ds = a.ds + t * (a.cols / 32);
      float s = 0.0f;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int2 x = *reinterpret_cast<const int2*>(q + b * 256 + 128 * n + 32 * k + l0);
        const int si = dp4a(w[k][1], x.y, dp4a(w[k][0], x.x, 0));
        s += scf[k] * ds[b * 8 + 4 * n + k].x * static_cast<float>(si);
      }
      acc[t] += s;
    }
  }
};

// IQ4_XS: unit = one sub-block of 32.
template <> struct Fmt<GgmlType::IQ4_XS> {
  static __host__ __device__ int64_t units(int64_t cols) { return cols / 32; }
  template <int NT>
  static RS_HD void dot(const uint8_t* row, int64_t u, const ActDev& a,
                                             float* acc) {
    const int64_t b = u >> 3;
    const int ib = static_cast<int>(u & 7);
    const uint8_t* blk = row + b * 136;
    const uint2 hdr = *reinterpret_cast<const uint2*>(blk);
    const uint2 q0 = *reinterpret_cast<const uint2*>(blk + 8 + 16 * ib);
    const uint2 q1 = *reinterpret_cast<const uint2*>(blk + 16 + 16 * ib);
    const float d = h2f(static_cast<uint16_t>(hdr.x & 0xFFFF));
    const uint32_t sh = hdr.x >> 16;
    const int ls = static_cast<int>(((hdr.y >> (8 * (ib >> 1) + 4 * (ib & 1))) & 15) |
                                    (((sh >> (2 * ib)) & 3) << 4));
    const uint32_t qw[4] = {q0.x, q0.y, q1.x, q1.y};
    uint32_t lo[4], hi[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      lo[i] = iq4_lookup4(qw[i] & 0x0F0F0F0Fu);
      hi[i] = iq4_lookup4((qw[i] >> 4) & 0x0F0F0F0Fu);
    }
    const float dl = d * static_cast<float>(ls - 32);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int8_t* q = a.q + t * a.cols;
      const float2* ds = a.ds + t * (a.cols / 32);
      const int s = dot16(lo, ld_act16(q, b * 256 + 32 * ib)) +
                    dot16(hi, ld_act16(q, b * 256 + 32 * ib + 16));
      acc[t] += dl * ds[b * 8 + ib].x * static_cast<float>(s);
    }
  }
};

}  // namespace rs::cuda::detail
