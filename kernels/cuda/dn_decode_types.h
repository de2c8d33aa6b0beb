// Arguments of the fused DeltaNet decode kernel (dn_decode_kernel.cuh), in a plain header that
// the launcher, cuda_glue.h and the tests include without CUDA or the emulator.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rs::cuda::dn {

constexpr int kDecodeThreads = 512;
constexpr int kDecodeMaxRows = 32;  // state rows per thread: ceil(dk / (threads / dv)) <= this

struct DecodeArgs {
  int64_t Hk = 0, Hv = 0, dk = 0, dv = 0, K = 0;
  const float* u = nullptr;      // [B][conv_dim]: [q Hk*dk | k Hk*dk | v Hv*dv], not convolved
  const float* z = nullptr;      // [B][Hv*dv]
  const float* b = nullptr;      // [B][Hv]
  const float* al = nullptr;     // [B][Hv]
  const float* conv_w = nullptr; // [conv_dim][K]
  const float* ssm_a = nullptr;  // [Hv]
  const float* dt_bias = nullptr;  // [Hv]
  const float* norm_w = nullptr;   // [dv]
  float q_scale = 1.0f, eps = 1e-6f;
  // Sequence i's layer state: conv state [(K-1)][conv_dim] at seq_base[i] + conv_off, recurrent
  // state [Hv][dk][dv] at seq_base[i] + ssm_off (bytes).
  uint8_t* const* seq_base = nullptr;
  size_t conv_off = 0, ssm_off = 0;
  float* y = nullptr;            // [B][Hv*dv]
  // [B][Hk] ints, all 0 (and 0 again after the kernel): needed when Hv > Hk or col_split > 1.
  int* counters = nullptr;
  // Column groups per value head (decode_col_split): > 1 spreads a head's state columns over
  // that many blocks, which then need norm_part [B][Hv][col_split] floats and norm_cnt [B][Hv]
  // ints (all 0, and 0 again after the kernel) for the head's gated norm.
  int64_t col_split = 1;
  float* norm_part = nullptr;
  int* norm_cnt = nullptr;
  // When not null (dv % 32 == 0): y's q8 blocks as quantize_act makes them for ssm_out's matvec,
  // yq [B][Hv*dv] and {d, sum} yds [B][Hv*dv / 32].
  int8_t* yq = nullptr;
  float* yds = nullptr;
};

// Column groups for dv-wide value heads: 4 (or 2) groups of a multiple of 32 columns where dv
// allows, else 1 (the whole head in one block).
inline int64_t decode_col_split(int64_t dv) {
  if (dv % 128 == 0 && dv / 4 <= kDecodeThreads) return 4;
  if (dv % 64 == 0 && dv / 2 <= kDecodeThreads) return 2;
  return 1;
}

// Shared memory the kernel needs (dynamic; the same for every col_split); grid (Hk, B,
// Hv / Hk * col_split).
inline size_t decode_smem_bytes(int64_t Hk, int64_t Hv, int64_t dk, int64_t dv) {
  (void)Hk;
  (void)Hv;
  // q, k, v, the gates, two [P][columns] reductions (P * columns <= kDecodeThreads for every
  // col_split) and the block sums' 32.
  return sizeof(float) * static_cast<size_t>(2 * dk + dv + 2 + 2 * kDecodeThreads + 64);
}

}  // namespace rs::cuda::dn
