// Split-K attention's first pass with the KV cache read once per KV head: a block per (token,
// KV head, chunk of positions) whose warps are the KV head's query heads (GQA: nh / nkv of
// them, at most kGqaMaxGroup). The block stages the chunk's K and V rows in shared memory, a
// tile of kGqaTile positions at a time (dequantised to f32 once), and each warp runs a
// per-position online softmax on its head: the records of attn_tile_partial_kernel
// (attn_tile_kernel.cuh), equal up to rounding, for the same merge kernel.
// The per-head kernel reads each K/V row once per query head (8 times for 35b-a3b's 16/2
// heads). Compiled by nvcc (cuda_attention.cu) and by g++ for the SIMT emulator
// (tests/cuda/attn_gqa_emu_test.cc).
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_quant.cuh"
#include "kernels/cuda/simt.h"

namespace rs::cuda::detail {

constexpr int kGqaTile = 8;
constexpr int kGqaMaxGroup = 16;

// Element i of position p's row (all KV heads) as f32.
RS_DEVICE float kv_elem(const AttnKv& kv, int64_t p, int64_t i) {
  const uint8_t* base = kv.data + p * kv.pos_stride;
  if (kv.type == GgmlType::F16) return h2f(reinterpret_cast<const uint16_t*>(base)[i]);
  if (kv.type == GgmlType::F32) return reinterpret_cast<const float*>(base)[i];
  const uint8_t* blk = base + (i / 32) * 34;  // Q8_0
  return h2f(ld_u16(blk)) * static_cast<float>(reinterpret_cast<const int8_t*>(blk + 2)[i % 32]);
}

// Grid (T * nkv, n_chunks), 32 * group threads. ws records as attn_tile_partial_kernel's:
// ws[(th * n_chunks + c) * (hd + 2)] = {m, l, acc[hd]}, th = t * nh + h.
template <int DPL>
RS_KERNEL void RS_LAUNCH_BOUNDS(32 * kGqaMaxGroup)
    attn_gqa_partial_kernel(const float* q, int64_t nh, int64_t group, AttnKv k, AttnKv v,
                            int64_t n_past, const int64_t* pos, float scale, float* ws,
                            int64_t n_chunks, int64_t chunk) {
  RS_PDL_ENTRY();
  constexpr int64_t hd = 32 * DPL;
  __shared__ float sk[kGqaTile * hd], sv[kGqaTile * hd];
  const int64_t nkv = nh / group;
  const int64_t t = blockIdx.x / nkv, kvh = blockIdx.x % nkv;
  if (k.tok) k.data = k.tok[t];
  if (v.tok) v.data = v.tok[t];
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  const int64_t th = t * nh + kvh * group + warp;
  const int64_t c = blockIdx.y;
  const int64_t n_ctx = (pos ? pos[t] : n_past + t) + 1;
  const int64_t p0 = c * chunk;
  const int64_t p1 = n_ctx < p0 + chunk ? n_ctx : p0 + chunk;
  float qv[DPL], acc[DPL];
  for (int i = 0; i < DPL; ++i) {
    qv[i] = q[th * hd + lane * DPL + i] * scale;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int64_t n_threads = 32 * group;
  for (int64_t tp = p0; tp < p1; tp += kGqaTile) {  // block-uniform bounds
    const int64_t n = p1 - tp < kGqaTile ? p1 - tp : kGqaTile;
    __syncthreads();  // the previous tile is consumed
    for (int64_t e = threadIdx.x; e < n * hd; e += n_threads) {
      const int64_t i = e / hd, d = e % hd;
      sk[e] = kv_elem(k, tp + i, kvh * hd + d);
      sv[e] = kv_elem(v, tp + i, kvh * hd + d);
    }
    __syncthreads();
    for (int64_t i = 0; i < n; ++i) {
      const float* kk = sk + i * hd + lane * DPL;
      const float* vv = sv + i * hd + lane * DPL;
      float s = 0.0f;
      for (int j = 0; j < DPL; ++j) s += qv[j] * kk[j];
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, o);
      const float m_new = fmaxf(m, s);
      const float corr = expf(m - m_new);  // 0 on the first position (m = -inf)
      const float e = expf(s - m_new);
      l = l * corr + e;
      for (int j = 0; j < DPL; ++j) acc[j] = acc[j] * corr + e * vv[j];
      m = m_new;
    }
  }
  float* o = ws + (th * n_chunks + c) * (hd + 2);
  if (lane == 0) {
    o[0] = m;
    o[1] = l;
  }
  for (int j = 0; j < DPL; ++j) o[2 + lane * DPL + j] = acc[j];
}

}  // namespace rs::cuda::detail
