// Attention's per-head preparation of q and k in one kernel (instead of five): q and the gate
// split out of the fused q|gate projection, RMSNorm of each q and k head (q_norm, k_norm),
// then partial NeoX RoPE on both at each token's position. The CPU definitions it follows:
// rms_norm_ref, rope_neox_ref (kernels/ops.h; the order of worker/model.cc). Compiled by nvcc
// (cuda_glue.cu) and by g++ for the SIMT emulator (tests/cuda/attn_prep_emu_test.cc).
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/cuda/attn_prep_types.h"
#include "kernels/cuda/simt.h"

namespace rs::cuda::glue {

// Grid n_tok * (nh + nkv): block b < n_tok * nh is q head (b / nh, b % nh), the rest k heads.
RS_KERNEL void RS_LAUNCH_BOUNDS(kAttnPrepThreads) attn_prep_kernel(const AttnPrepArgs a) {
  RS_PDL_ENTRY();
  __shared__ float xs[kAttnPrepMaxDim];
  __shared__ float red[kAttnPrepThreads / 32];
  const int64_t b = blockIdx.x, hd = a.hd;
  const bool is_q = b < a.n_tok * a.nh;
  const int64_t t = is_q ? b / a.nh : (b - a.n_tok * a.nh) / a.nkv;
  const float* src;
  float* dst;
  const float* w;
  if (is_q) {
    src = a.qg + b * 2 * hd;
    dst = a.q + b * hd;
    w = a.q_norm;
    for (int64_t c = threadIdx.x; c < hd; c += kAttnPrepThreads) a.gate[b * hd + c] = src[hd + c];
  } else {
    dst = a.k + (b - a.n_tok * a.nh) * hd;
    src = dst;
    w = a.k_norm;
  }
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < hd; c += kAttnPrepThreads) {
    const float v = src[c];
    xs[c] = v;
    ss += v * v;
  }
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xFFFFFFFFu, ss, o);
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  if (lane == 0) red[warp] = ss;
  __syncthreads();
  float tot = 0.0f;
  for (int i = 0; i < kAttnPrepThreads / 32; ++i) tot += red[i];
  const float scale = 1.0f / sqrtf(tot / static_cast<float>(hd) + a.eps);
  for (int64_t c = threadIdx.x; c < hd; c += kAttnPrepThreads) xs[c] = xs[c] * scale * w[c];
  __syncthreads();
  // RoPE on the first n_rot dims (pairs d, d + n_rot / 2); the rest pass through.
  const int64_t half = a.n_rot / 2;
  const float p = static_cast<float>(a.pos[t]);
  for (int64_t c = threadIdx.x; c < hd; c += kAttnPrepThreads) {
    if (c >= 2 * half) {
      dst[c] = xs[c];
      continue;
    }
    const int64_t d = c < half ? c : c - half;
    const float e = -2.0f * static_cast<float>(d) / static_cast<float>(a.n_rot);
    const float inv_freq =
        static_cast<float>(pow(static_cast<double>(a.theta), static_cast<double>(e)));
    float s, co;
    sincosf(p * inv_freq, &s, &co);
    const float x0 = xs[d], x1 = xs[d + half];
    dst[c] = c < half ? x0 * co - x1 * s : x0 * s + x1 * co;
  }
}

}  // namespace rs::cuda::glue
