// The decode matvec kernel (one warp per output row, lanes over the row's units; the formats'
// dot products in matvec_fmt.cuh) in its three modes: plain (1..8 tokens, up to 1 + kMvMaxMore
// matrices sharing the activations in one launch), MoE up (one block row per selected expert)
// and MoE down (the selected experts summed with their weights in a fixed order). Compiled by
// nvcc (cuda_matvec.cu) and by g++ for the SIMT emulator (tests/cuda/matvec_emu_test.cc).
#pragma once

#include <cstdint>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/matvec_fmt.cuh"
#include "kernels/cuda/simt.h"

namespace rs::cuda::detail {

constexpr int kMvWarps = 4;  // rows per thread block

RS_DEVICE float mv_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

// Blocks of a launch: kPlain covers every matrix's rows.
inline int64_t mv_blocks(const MvParams& p) {
  int64_t b = (p.rows + kMvWarps - 1) / kMvWarps;
  if (p.mode == MvMode::kPlain)
    for (int m = 0; m < p.n_more; ++m) b += (p.more[m].rows + kMvWarps - 1) / kMvWarps;
  return b;
}

template <GgmlType T, int NT, int MODE>
RS_KERNEL void RS_LAUNCH_BOUNDS(kMvWarps * 32) matvec_kernel(const MvParams p) {
  RS_PDL_ENTRY();
  const int lane = static_cast<int>(threadIdx.x & 31);
  // kPlain: find the block's matrix (the first one's blocks, then each further one's).
  MvMat cur{p.w, p.row_stride, p.rows, p.y, p.ldy};
  int64_t b = blockIdx.x;
  if constexpr (MODE == static_cast<int>(MvMode::kPlain)) {
    for (int m = 0; m < p.n_more; ++m) {
      const int64_t nb = (cur.rows + kMvWarps - 1) / kMvWarps;
      if (b < nb) break;
      b -= nb;
      cur = p.more[m];
    }
  }
  const int64_t row = b * kMvWarps + (threadIdx.x >> 5);
  if (row >= cur.rows) return;  // warp-uniform
  const int64_t n_units = Fmt<T>::units(p.cols);
  const ActDev act{p.x, p.ldx, p.q, reinterpret_cast<const float2*>(p.ds), p.cols};
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.0f;

  if constexpr (MODE == static_cast<int>(MvMode::kPlain)) {
    const uint8_t* wr = cur.w + row * cur.row_stride;
    // Unrolled 2 (4 for one token measured slower on the H200: Q4_K 21.2 against 19.6 us for
    // 27b's ffn_up, Q6_K 39.9 against 36.2).
#pragma unroll 2
    for (int64_t u = lane; u < n_units; u += 32) Fmt<T>::template dot<NT>(wr, u, act, acc);
  } else if constexpr (MODE == static_cast<int>(MvMode::kMoeUp)) {
    const int sel = static_cast<int>(blockIdx.y);
    const uint8_t* wr = p.w + static_cast<int64_t>(p.ids[sel]) * p.expert_stride + row * p.row_stride;
#pragma unroll 2
    for (int64_t u = lane; u < n_units; u += 32) Fmt<T>::template dot<1>(wr, u, act, acc);
  } else {
    for (int s = 0; s < p.n_sel; ++s) {
      const uint8_t* wr =
          p.w + static_cast<int64_t>(p.ids[s]) * p.expert_stride + row * p.row_stride;
      const ActDev as = act.token(s);
      float part[1] = {0.0f};
#pragma unroll 2
      for (int64_t u = lane; u < n_units; u += 32) Fmt<T>::template dot<1>(wr, u, as, part);
      acc[0] += p.sel_w[s] * part[0];
    }
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = mv_warp_sum(acc[t]);
  if (lane != 0) return;
  if constexpr (MODE == static_cast<int>(MvMode::kPlain)) {
#pragma unroll
    for (int t = 0; t < NT; ++t) cur.y[t * cur.ldy + row] = acc[t];
  } else if constexpr (MODE == static_cast<int>(MvMode::kMoeUp)) {
    p.y[static_cast<int64_t>(blockIdx.y) * p.ldy + row] = acc[0];
  } else {
    p.y[row] = (p.accumulate ? p.y[row] : 0.0f) + acc[0];
  }
}

}  // namespace rs::cuda::detail
