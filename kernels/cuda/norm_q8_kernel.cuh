// Residual add + RMSNorm, with the result's q8 blocks for the next matvecs in the same kernel
// (the quantize_act launch that would follow is saved). Compiled by nvcc (cuda_glue.cu) and by
// g++ for the SIMT emulator (tests/cuda/norm_q8_emu_test.cc).
//
// One block per row; thread i takes elements i, i + kNormRowThreads, ...: a warp's 32 lanes hold
// 32 consecutive elements, one q8 block, so its d = amax / 127, q = rint(y / d) and exact sum
// come from warp shuffles in the same order as quantize_act's (the same bits).
#pragma once

#include <cstdint>

#include "kernels/cuda/q8_block.cuh"
#include "kernels/cuda/simt.h"

namespace rs::cuda::glue {

constexpr int kNormQ8Threads = 256;

struct NormQ8Args {
  float* hidden = nullptr;   // [rows][n]
  const float* m = nullptr;  // [rows][n] added to hidden first (hidden is updated); nullptr: none
  const float* w = nullptr;  // [n]
  int64_t n = 0;
  float eps = 1e-6f;
  float* y = nullptr;        // [rows][n]
  int8_t* q = nullptr;       // [rows][n] and {d, sum} [rows][n / 32] (n % 32 == 0); nullptr: none
  float* ds = nullptr;
};

// add_rms_norm_q8_kernel's block, and the elements per thread it keeps in registers (rows up to
// kNormRowThreads * kNormRowPer = 8192 wide: every load of a row is issued before the first is
// used; the loop for wider rows waits on each in turn, which was most of this kernel's time).
constexpr int kNormRowThreads = 512;
constexpr int kNormRowPer = 16;

RS_KERNEL void RS_LAUNCH_BOUNDS(kNormRowThreads) add_rms_norm_q8_kernel(const NormQ8Args a) {
  RS_PDL_ENTRY();
  constexpr int kT = kNormRowThreads;
  const int64_t r = blockIdx.x, n = a.n;
  const int tid = static_cast<int>(threadIdx.x);
  float* h = a.hidden + r * n;
  const float* mr = a.m ? a.m + r * n : nullptr;
  const bool cached = n <= int64_t{kT} * kNormRowPer;
  float v[kNormRowPer];
  float ss = 0.0f;
  if (cached) {
#pragma unroll
    for (int j = 0; j < kNormRowPer; ++j) {
      const int64_t i = tid + int64_t{j} * kT;
      v[j] = i < n ? h[i] : 0.0f;
    }
    if (mr) {
      float mv[kNormRowPer];
#pragma unroll
      for (int j = 0; j < kNormRowPer; ++j) {
        const int64_t i = tid + int64_t{j} * kT;
        mv[j] = i < n ? mr[i] : 0.0f;
      }
#pragma unroll
      for (int j = 0; j < kNormRowPer; ++j) {
        const int64_t i = tid + int64_t{j} * kT;
        v[j] += mv[j];
        if (i < n) h[i] = v[j];
      }
    }
#pragma unroll
    for (int j = 0; j < kNormRowPer; ++j) ss += v[j] * v[j];
  } else if (mr) {
    for (int64_t i = tid; i < n; i += kT) {
      const float x = h[i] + mr[i];
      h[i] = x;
      ss += x * x;
    }
  } else {
    for (int64_t i = tid; i < n; i += kT) ss += h[i] * h[i];
  }
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xFFFFFFFFu, ss, o);
  __shared__ float part[kT / 32];
  const int warp = tid >> 5, lane = tid & 31;
  if (lane == 0) part[warp] = ss;
  __syncthreads();
  float tot = 0.0f;
  for (int i = 0; i < kT / 32; ++i) tot += part[i];
  const float scale = 1.0f / sqrtf(tot / static_cast<float>(n) + a.eps);
  float* yr = a.y + r * n;
  // n % 32 == 0 where q8 blocks are written: the whole warp is in range together.
  if (cached) {
#pragma unroll
    for (int j = 0; j < kNormRowPer; ++j) {
      const int64_t i = tid + int64_t{j} * kT;
      if (i >= n) break;
      const float y = v[j] * scale * a.w[i];
      yr[i] = y;
      if (a.q) warp_q8_block(y, true, a.q + r * n + i, a.ds + 2 * (r * (n / 32) + i / 32), lane);
    }
    return;
  }
  for (int64_t i = tid; i < n; i += kT) {
    const float y = h[i] * scale * a.w[i];
    yr[i] = y;
    if (a.q == nullptr) continue;
    warp_q8_block(y, true, a.q + r * n + i, a.ds + 2 * (r * (n / 32) + i / 32), lane);
  }
}

// y[i] *= sigmoid(gate[i]) (attention's output gate), then y's q8 blocks for the output
// projection: one launch instead of the gate and quantize_act. n a multiple of 32; grid
// n / kNormQ8Threads rounded up, a warp per q8 block.
RS_KERNEL void RS_LAUNCH_BOUNDS(kNormQ8Threads)
    gate_q8_kernel(float* y, const float* gate, int64_t n, int8_t* q, float* ds) {
  RS_PDL_ENTRY();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kNormQ8Threads + threadIdx.x;
  if (i >= n) return;  // n % 32 == 0: whole warps leave together
  const float v = y[i] * (1.0f / (1.0f + expf(-gate[i])));
  y[i] = v;
  warp_q8_block(v, true, q + i, ds + 2 * (i / 32), static_cast<int>(threadIdx.x & 31));
}

// y[i] = silu(y[i]) * up[i] (SwiGLU, into the gate's buffer), then y's q8 blocks for the down
// projection: one launch instead of swiglu and quantize_act. Launched as gate_q8_kernel.
RS_KERNEL void RS_LAUNCH_BOUNDS(kNormQ8Threads)
    swiglu_q8_kernel(float* y, const float* up, int64_t n, int8_t* q, float* ds) {
  RS_PDL_ENTRY();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kNormQ8Threads + threadIdx.x;
  if (i >= n) return;  // n % 32 == 0: whole warps leave together
  const float g = y[i];
  const float v = g / (1.0f + expf(-g)) * up[i];
  y[i] = v;
  warp_q8_block(v, true, q + i, ds + 2 * (i / 32), static_cast<int>(threadIdx.x & 31));
}

}  // namespace rs::cuda::glue
