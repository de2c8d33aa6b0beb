// Residual add + RMSNorm, with the result's q8 blocks for the next matvecs in the same kernel
// (the quantize_act launch that would follow is saved). Compiled by nvcc (cuda_glue.cu) and by
// g++ for the SIMT emulator (tests/cuda/norm_q8_emu_test.cc).
//
// One block per row; thread i takes elements i, i + kNormQ8Threads, ...: a warp's 32 lanes hold
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

RS_KERNEL void RS_LAUNCH_BOUNDS(kNormQ8Threads) add_rms_norm_q8_kernel(const NormQ8Args a) {
  RS_PDL_ENTRY();
  const int64_t r = blockIdx.x, n = a.n;
  float* h = a.hidden + r * n;
  float ss = 0.0f;
  if (a.m) {
    const float* mr = a.m + r * n;
    for (int64_t i = threadIdx.x; i < n; i += kNormQ8Threads) {
      const float v = h[i] + mr[i];
      h[i] = v;
      ss += v * v;
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += kNormQ8Threads) ss += h[i] * h[i];
  }
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xFFFFFFFFu, ss, o);
  __shared__ float part[kNormQ8Threads / 32];
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  if (lane == 0) part[warp] = ss;
  __syncthreads();
  float tot = 0.0f;
  for (int i = 0; i < kNormQ8Threads / 32; ++i) tot += part[i];
  const float scale = 1.0f / sqrtf(tot / static_cast<float>(n) + a.eps);
  float* yr = a.y + r * n;
  for (int64_t i = threadIdx.x; i < n; i += kNormQ8Threads) {
    const float v = h[i] * scale * a.w[i];
    yr[i] = v;
    if (a.q == nullptr) continue;
    // n % 32 == 0: the whole warp is in range together.
    warp_q8_block(v, true, a.q + r * n + i, a.ds + 2 * (r * (n / 32) + i / 32), lane);
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

}  // namespace rs::cuda::glue
