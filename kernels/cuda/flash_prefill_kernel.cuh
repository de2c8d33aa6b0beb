// Causal GQA attention for a prefill piece, flash style: one block per (group of query tokens,
// KV head) walks the cache once in tiles of kFlashBK positions, with an online softmax, for all
// the query heads that share the KV head. Compared with the split-K decode kernel, which reads
// the cache once per (token, query head), the cache is read once per kFlashRows / R tokens of a
// KV head (R = query heads per KV head). Same contract as attention_ref (kernels/ops.h): q is
// [T][nh][hd], token t sits at position n_past + t and attends to [0, n_past + t], query head h
// reads KV head h / R; the cache is the GPU's interleaved rows (F32, F16 or Q8_0, decoded 32
// elements at a time by dequant32). f32 scores and accumulation; the softmax rescales by
// expf(m_old - m_new) per tile, so results equal the reference up to rounding.
// Written against simt.h: tests/cuda/flash_prefill_emu_test.cc runs this source on the host.
#pragma once

#include <cfloat>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_quant.cuh"
#include "kernels/cuda/flash_prefill_types.h"
#include "kernels/cuda/simt.h"

namespace rs::cuda::flash {

// Grid: (ceil(T / tokens_per_block(R)), nkv); kFlashThreads threads. hd: a multiple of 32, at
// most kFlashMaxHd.
template <GgmlType KT>
RS_KERNEL void RS_LAUNCH_BOUNDS(kFlashThreads) flash_prefill_kernel(PrefillArgs a) {
  RS_PDL_ENTRY();
  __shared__ float Ks[kFlashBK][kFlashMaxHd];
  __shared__ float Vs[kFlashBK][kFlashMaxHd];
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int64_t R = a.nh / a.nkv, g = blockIdx.y, hd = a.hd;
  const int64_t tpb = tokens_per_block(R);
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * tpb;
  const int per_lane = static_cast<int>(hd / 32);  // <= kFlashMaxHd / 32
  // This warp's rows: i = warp * kRowsPerWarp + r, token t0 + i / R, head g * R + i % R.
  float qv[kRowsPerWarp][kFlashMaxHd / 32];
  float acc[kRowsPerWarp][kFlashMaxHd / 32];
  float m[kRowsPerWarp], l[kRowsPerWarp];
  int64_t qpos[kRowsPerWarp];  // the row's position; -1: no row
  int64_t last = -1;           // last position any row of the block attends to
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = warp * kRowsPerWarp + r;
    const int64_t t = t0 + i / R, h = g * R + i % R;
    const bool on = i < tpb * R && t < a.T;
    qpos[r] = on ? a.n_past + t : -1;
    m[r] = -FLT_MAX;
    l[r] = 0.0f;
#pragma unroll
    for (int e = 0; e < kFlashMaxHd / 32; ++e) {
      acc[r][e] = 0.0f;
      qv[r][e] = (on && e < per_lane) ? a.q[(t * a.nh + h) * hd + e * 32 + lane] * a.scale : 0.0f;
    }
  }
  {
    const int64_t t_end = (t0 + tpb < a.T ? t0 + tpb : a.T) - 1;
    last = a.n_past + t_end;
  }
  const int units = static_cast<int>(kFlashBK * (hd / 32));
  for (int64_t p0 = 0; p0 <= last; p0 += kFlashBK) {
    __syncthreads();  // the previous tile is consumed
    for (int u = tid; u < units; u += kFlashThreads) {
      const int j = u / static_cast<int>(hd / 32), k0 = (u % static_cast<int>(hd / 32)) * 32;
      const int64_t p = p0 + j;
      float kv[32], vv[32];
      if (p <= last) {
        detail::dequant32<KT>(a.k + static_cast<size_t>(p) * a.k_stride, g * hd + k0, kv);
        detail::dequant32<KT>(a.v + static_cast<size_t>(p) * a.v_stride, g * hd + k0, vv);
      } else {
        for (int e = 0; e < 32; ++e) kv[e] = vv[e] = 0.0f;
      }
      for (int e = 0; e < 32; ++e) {
        Ks[j][k0 + e] = kv[e];
        Vs[j][k0 + e] = vv[e];
      }
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (qpos[r] < p0) continue;  // warp-uniform: the row sees none of this tile
      float s[kFlashBK];
      float tile_max = -FLT_MAX;
#pragma unroll
      for (int j = 0; j < kFlashBK; ++j) {
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < kFlashMaxHd / 32; ++e)
          if (e < per_lane) d = fmaf(qv[r][e], Ks[j][e * 32 + lane], d);
        for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        s[j] = p0 + j <= qpos[r] ? d : -FLT_MAX;
        tile_max = fmaxf(tile_max, s[j]);
      }
      const float m_new = fmaxf(m[r], tile_max);
      const float corr = expf(m[r] - m_new);
      float psum = 0.0f;
#pragma unroll
      for (int e = 0; e < kFlashMaxHd / 32; ++e) acc[r][e] *= corr;
#pragma unroll
      for (int j = 0; j < kFlashBK; ++j) {
        const float pj = p0 + j <= qpos[r] ? expf(s[j] - m_new) : 0.0f;
        psum += pj;
#pragma unroll
        for (int e = 0; e < kFlashMaxHd / 32; ++e)
          if (e < per_lane) acc[r][e] = fmaf(pj, Vs[j][e * 32 + lane], acc[r][e]);
      }
      l[r] = l[r] * corr + psum;
      m[r] = m_new;
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    if (qpos[r] < 0) continue;
    const int64_t i = warp * kRowsPerWarp + r;
    const int64_t t = t0 + i / R, h = g * R + i % R;
    const float inv = 1.0f / l[r];
#pragma unroll
    for (int e = 0; e < kFlashMaxHd / 32; ++e)
      if (e < per_lane) a.out[(t * a.nh + h) * hd + e * 32 + lane] = acc[r][e] * inv;
  }
}

}  // namespace rs::cuda::flash
