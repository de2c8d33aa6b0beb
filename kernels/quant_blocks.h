// Private: the byte layouts of the quantised blocks (../shared/spec/qwen35.md §6.2) and the
// q8 activation blocks of the fast CPU path. Shared by quant_ref.cc, matmul_cpu.cc and tests.
#pragma once

#include <cstdint>

#include "kernels/formats.h"

namespace rs::qblk {

constexpr int kQK = 32;    // elements per block of Q8_0 / Q4_0 and per IQ4_XS / k-quant sub-block
constexpr int kQKK = 256;  // QK_K: elements per k-quant / IQ4_XS super-block

struct BlockQ8_0 {  // x_j = d * qs[j]
  uint16_t d;
  int8_t qs[kQK];
};
struct BlockQ4_0 {  // x_j = d * ((qs[j] & 15) - 8), x_{j+16} = d * ((qs[j] >> 4) - 8)
  uint16_t d;
  uint8_t qs[kQK / 2];
};
struct BlockQ4_K {  // 8 sub-blocks of 32: value = d*sc*q - dmin*m, q in 0..15
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];  // 6-bit sc and m per sub-block, packed (get_scale_min)
  uint8_t qs[kQKK / 2];
};
struct BlockQ5_K {  // as Q4_K plus a fifth bit per element in qh, q in 0..31
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
struct BlockQ6_K {  // 16 sub-blocks of 16: value = d*scales[i]*(q-32), q in 0..63
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  uint16_t d;
};
struct BlockIQ4_XS {  // 8 sub-blocks of 32: value = d*(ls-32)*kIq4nl[q], ls 6 bits
  uint16_t d;
  uint16_t scales_h;
  uint8_t scales_l[kQKK / 64];
  uint8_t qs[kQKK / 2];
};

static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockIQ4_XS) == 136);

// The non-linear 4-bit code book of IQ4_NL / IQ4_XS.
inline constexpr int8_t kIq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                      1,    13,   25,  38,  53,  69,  89,  113};

// 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block.
inline void get_scale_min(int j, const uint8_t* s, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Activation blocks of the fast path (our own layouts, never stored in files).
// q8 block of 32 for Q8_0 / Q4_0 / IQ4_XS weights: x_j ~= d * qs[j]; s = sum of qs.
struct ActQ8x32 {
  float d;
  int32_t s;
  int8_t qs[kQK];
};
// q8 block of 256 for the k-quants: x_j ~= d * qs[j]; bsums[i] = sum of qs[16i .. 16i+15];
// dsums[j] = d * (sum of qs[32j .. 32j+31]) (the Q4_K / Q5_K min term as one f32 FMA).
struct ActQ8x256 {
  float d;
  int16_t bsums[kQKK / 16];
  float dsums[kQKK / 32];
  int8_t qs[kQKK];
};

}  // namespace rs::qblk
