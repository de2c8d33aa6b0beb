// Private to kernels/cuda/*.cu: device-side views of the GGUF block layouts
// (../shared/spec/qwen35.md §6.2, kernels/quant_blocks.h) and a dequantiser of 32 consecutive
// elements for any supported type (used by the tensor-core matmul and the embedding lookup).
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

#include "kernels/formats.h"

namespace rs::cuda::detail {

// Everything below up to dequant32 is __host__ __device__: the host build of the same code
// lets tests/cuda/cuda_emulation_test.cc check the block decoding on machines without a GPU.
#define RS_HD __host__ __device__ __forceinline__

// Intrinsics with a portable host version.
RS_HD float u2f(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
RS_HD int dp4a(uint32_t a, int b, int c) {
#ifdef __CUDA_ARCH__
  return __dp4a(static_cast<int>(a), b, c);
#else
  for (int i = 0; i < 4; ++i)
    c += static_cast<int8_t>(a >> (8 * i)) * static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * i));
  return c;
#endif
}
RS_HD uint32_t vsub4(uint32_t a, uint32_t b) {  // per-byte a - b, wrapping
#ifdef __CUDA_ARCH__
  return __vsub4(a, b);
#else
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= ((((a >> (8 * i)) & 0xFF) - ((b >> (8 * i)) & 0xFF)) & 0xFF) << (8 * i);
  return r;
#endif
}
RS_HD uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#ifdef __CUDA_ARCH__
  return __byte_perm(x, y, s);
#else
  const uint64_t v = static_cast<uint64_t>(x) | (static_cast<uint64_t>(y) << 32);
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<uint32_t>((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
#endif
}

RS_HD float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
RS_HD float bf2f(uint16_t h) { return u2f(static_cast<uint32_t>(h) << 16); }
RS_HD uint16_t ld_u16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }
// 32-bit word from a 2-byte aligned address.
RS_HD uint32_t ld_u32_a2(const uint8_t* p) {
  const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
  return static_cast<uint32_t>(h[0]) | (static_cast<uint32_t>(h[1]) << 16);
}
RS_HD uint8_t byte_of(const uint32_t* w, int i) {
  return static_cast<uint8_t>(w[i >> 2] >> (8 * (i & 3)));
}

// 6-bit scale and min of sub-block j of a Q4_K / Q5_K block; s = the 12 scale bytes as 3 words.
RS_HD void kq_scale_min(int j, const uint32_t* s, int* sc, int* m) {
  if (j < 4) {
    *sc = byte_of(s, j) & 63;
    *m = byte_of(s, j + 4) & 63;
  } else {
    *sc = (byte_of(s, j + 4) & 15) | ((byte_of(s, j - 4) >> 6) << 4);
    *m = (byte_of(s, j + 4) >> 4) | ((byte_of(s, j) >> 6) << 4);
  }
}

// IQ4_NL code book; 4 values (bytes of q, each 0..15) -> 4 signed bytes of the table.
RS_HD uint32_t iq4_lookup4(uint32_t q) {
  // Table bytes, little-endian words: {-127,-104,-83,-65}, {-49,-35,-22,-10}, {1,13,25,38},
  // {53,69,89,113}.
  constexpr uint32_t t0 = 0xBFAD9881u, t1 = 0xF6EADDCFu, t2 = 0x26190D01u, t3 = 0x71594535u;
  const uint32_t x = q & 0x07070707u;
  const uint32_t sel = (x & 0xFu) | ((x >> 4) & 0xF0u) | ((x >> 8) & 0xF00u) | ((x >> 12) & 0xF000u);
  const uint32_t lo = byte_perm(t0, t1, sel);
  const uint32_t hi = byte_perm(t2, t3, sel);
  const uint32_t m = ((q >> 3) & 0x01010101u) * 0xFFu;
  return (hi & m) | (lo & ~m);
}

RS_HD float iq4_value(int q) {
  return static_cast<float>(static_cast<int8_t>(iq4_lookup4(static_cast<uint32_t>(q)) & 0xFF));
}

// Dequantise elements [k0, k0 + 32) of a row (k0 a multiple of 32) into v. Plain byte loads:
// used where the weights are read once per tile (prefill) or per token (embedding).
template <GgmlType T>
RS_HD void dequant32(const uint8_t* row, int64_t k0, float* v) {
  if constexpr (T == GgmlType::F32) {
    const float* p = reinterpret_cast<const float*>(row) + k0;
#pragma unroll
    for (int i = 0; i < 32; ++i) v[i] = p[i];
  } else if constexpr (T == GgmlType::F16) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + k0;
#pragma unroll
    for (int i = 0; i < 32; ++i) v[i] = h2f(p[i]);
  } else if constexpr (T == GgmlType::BF16) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + k0;
#pragma unroll
    for (int i = 0; i < 32; ++i) v[i] = bf2f(p[i]);
  } else if constexpr (T == GgmlType::Q8_0) {
    const uint8_t* b = row + (k0 / 32) * 34;
    const float d = h2f(ld_u16(b));
#pragma unroll
    for (int i = 0; i < 32; ++i) v[i] = d * static_cast<float>(static_cast<int8_t>(b[2 + i]));
  } else if constexpr (T == GgmlType::Q4_0) {
    const uint8_t* b = row + (k0 / 32) * 18;
    const float d = h2f(ld_u16(b));
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      v[i] = d * static_cast<float>((b[2 + i] & 15) - 8);
      v[i + 16] = d * static_cast<float>((b[2 + i] >> 4) - 8);
    }
  } else if constexpr (T == GgmlType::Q4_K || T == GgmlType::Q5_K) {
    constexpr int kBytes = T == GgmlType::Q4_K ? 144 : 176;
    const uint8_t* b = row + (k0 / 256) * kBytes;
    const int j = static_cast<int>((k0 % 256) / 32);
    const float d = h2f(ld_u16(b)), dmin = h2f(ld_u16(b + 2));
    uint32_t s[3];
#pragma unroll
    for (int i = 0; i < 3; ++i) s[i] = ld_u32_a2(b + 4 + 4 * i);
    int sc, m;
    kq_scale_min(j, s, &sc, &m);
    const float dl = d * sc, ml = dmin * m;
    const int c = j / 2, shift = (j & 1) * 4;
    const uint8_t* qs = b + (T == GgmlType::Q4_K ? 16 : 48) + 32 * c;
#pragma unroll
    for (int l = 0; l < 32; ++l) {
      int q = (qs[l] >> shift) & 15;
      if constexpr (T == GgmlType::Q5_K) q += ((b[16 + l] >> j) & 1) << 4;
      v[l] = dl * static_cast<float>(q) - ml;
    }
  } else if constexpr (T == GgmlType::Q6_K) {
    const uint8_t* b = row + (k0 / 256) * 210;
    const int j = static_cast<int>((k0 % 256) / 32);
    const int n = j / 4, kq = j % 4;
    const uint8_t* ql = b + 64 * n + (kq & 1) * 32;
    const uint8_t* qh = b + 128 + 32 * n;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * n + 2 * kq;
    const float d = h2f(ld_u16(b + 208));
    const int shift = (kq >> 1) * 4;
#pragma unroll
    for (int l = 0; l < 32; ++l) {
      const int q = ((ql[l] >> shift) & 15) | (((qh[l] >> (2 * kq)) & 3) << 4);
      v[l] = d * static_cast<float>(sc[l / 16]) * static_cast<float>(q - 32);
    }
  } else if constexpr (T == GgmlType::IQ4_XS) {
    const uint8_t* b = row + (k0 / 256) * 136;
    const int ib = static_cast<int>((k0 % 256) / 32);
    const float d = h2f(ld_u16(b));
    const int sh = ld_u16(b + 2);
    const int ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4);
    const float dl = d * static_cast<float>(ls - 32);
    const uint8_t* qs = b + 8 + 16 * ib;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      v[i] = dl * iq4_value(qs[i] & 15);
      v[i + 16] = dl * iq4_value(qs[i] >> 4);
    }
  }
}

// Expands BODY once per supported type with `kT` a constexpr GgmlType; unsupported types fall
// to `default` (the caller returns an error after the switch).
#define RS_CUDA_TYPE_CASE(TYPE, ...) \
  case TYPE: {                       \
    constexpr GgmlType kT = TYPE;    \
    __VA_ARGS__;                     \
  } break;
#define RS_CUDA_TYPE_SWITCH(t, ...)                         \
  switch (t) {                                              \
    RS_CUDA_TYPE_CASE(GgmlType::F32, __VA_ARGS__)           \
    RS_CUDA_TYPE_CASE(GgmlType::F16, __VA_ARGS__)           \
    RS_CUDA_TYPE_CASE(GgmlType::BF16, __VA_ARGS__)          \
    RS_CUDA_TYPE_CASE(GgmlType::Q8_0, __VA_ARGS__)          \
    RS_CUDA_TYPE_CASE(GgmlType::Q4_0, __VA_ARGS__)          \
    RS_CUDA_TYPE_CASE(GgmlType::Q4_K, __VA_ARGS__)          \
    RS_CUDA_TYPE_CASE(GgmlType::Q5_K, __VA_ARGS__)          \
    RS_CUDA_TYPE_CASE(GgmlType::Q6_K, __VA_ARGS__)          \
    RS_CUDA_TYPE_CASE(GgmlType::IQ4_XS, __VA_ARGS__)        \
    default: break;                                         \
  }

}  // namespace rs::cuda::detail
