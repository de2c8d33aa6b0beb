// The dense FFN's fused up kernel (arguments: ffn_up_types.h). Compiled by nvcc for the device
// (cuda_ffn_up.cu) and by g++ for the SIMT emulator (tests/cuda/ffn_up_emu_test.cc).
//
// Block b computes rows 32b .. 32b+31 of gate and of up for every token: warp w takes
// kRowsPerWarp gate rows and the same up rows, whose loads each lane keeps in flight, and each
// weight unit is read once for all tokens (as the decode matvec does: lane i takes units i,
// i+32, ...).
// Then warp t (one per token) forms h = silu(gate) * up for the 32 rows and their q8 block.
#pragma once

#include <cstdint>

#include "kernels/cuda/ffn_up_types.h"
#include "kernels/cuda/matvec_fmt.cuh"
#include "kernels/cuda/q8_block.cuh"
#include "kernels/cuda/simt.h"

namespace rs::cuda::ffnup {

using detail::ActDev;
using detail::Fmt;

template <GgmlType T, int NT>
RS_KERNEL void RS_LAUNCH_BOUNDS(kThreads) ffn_up_kernel(const Args a) {
  RS_PDL_ENTRY();
  constexpr int kWarps = kThreads / 32, kR = kRowsPerWarp;
  __shared__ float sg[NT][kTile];
  __shared__ float su[NT][kTile];
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int n = static_cast<int>(a.I - r0 < kTile ? a.I - r0 : kTile);
  const int w0 = warp * kR;
  const int wn = n - w0 < 0 ? 0 : (n - w0 < kR ? n - w0 : kR);
  const ActDev act{a.x, a.ldx, a.xq, reinterpret_cast<const float2*>(a.xds), a.H};
  const int64_t U = Fmt<T>::units(a.H);
  const uint8_t* rows[2 * kR];
  float acc[2 * kR][NT];
#pragma unroll
  for (int j = 0; j < kR; ++j) {
    const size_t off = static_cast<size_t>(r0 + w0 + j) * a.row_stride;
    rows[j] = j < wn ? a.gate + off : nullptr;
    rows[kR + j] = j < wn ? a.up + off : nullptr;
  }
#pragma unroll
  for (int j = 0; j < 2 * kR; ++j)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[j][t] = 0.0f;
  if (wn > 0) {
    for (int64_t u = lane; u < U; u += 32) {
#pragma unroll
      for (int j = 0; j < 2 * kR; ++j)
        if (rows[j]) Fmt<T>::template dot<NT>(rows[j], u, act, acc[j]);
    }
#pragma unroll
    for (int j = 0; j < 2 * kR; ++j)
#pragma unroll
      for (int t = 0; t < NT; ++t)
        for (int o = 16; o > 0; o >>= 1) acc[j][t] += __shfl_xor_sync(0xFFFFFFFFu, acc[j][t], o);
    if (lane == 0) {
#pragma unroll
      for (int j = 0; j < kR; ++j) {
        if (j >= wn) break;
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          sg[t][w0 + j] = acc[j][t];
          su[t][w0 + j] = acc[kR + j][t];
        }
      }
    }
  }
  __syncthreads();
  for (int t = warp; t < a.n_tok; t += kWarps) {
    const bool valid = lane < n;
    const float g = valid ? sg[t][lane] : 0.0f;
    const float v = valid ? g / (1.0f + expf(-g)) * su[t][lane] : 0.0f;
    if (valid) a.h[t * a.ldh + r0 + lane] = v;
    if (a.hq != nullptr)
      warp_q8_block(v, valid, a.hq + t * a.I + r0 + lane, a.hds + 2 * (t * (a.I / 32) + r0 / 32),
                    lane);
  }
}

}  // namespace rs::cuda::ffnup
