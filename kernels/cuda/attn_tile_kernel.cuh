// Split-K attention's first pass, one warp per (token, query head, chunk), taking the chunk's
// positions 32 at a time: the 32 scores first (every K row's load independent of the others, so
// all in flight together; one 31-shuffle reduce-scatter leaves lane j the score of position j),
// one softmax update per tile, then the 32 V rows. The per-position walk it replaces waited on a
// 5-shuffle reduction and two exps for every position in turn. Writes the same {m, l, acc[hd]}
// record per chunk for the same merge kernel (cuda_attention.cu); the arithmetic is the same up
// to the order of the additions. Compiled by nvcc (cuda_attention.cu) and by g++ for the SIMT
// emulator (tests/cuda/attn_gqa_emu_test.cc).
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_quant.cuh"
#include "kernels/cuda/simt.h"

namespace rs::cuda::detail {

// Dims [lane * DPL, (lane + 1) * DPL) of KV head kvh at position p, as f32.
template <int DPL>
RS_DEVICE void attn_load_lane(const AttnKv& kv, int64_t p, int64_t kvh, int lane, float* out) {
  constexpr int64_t hd = 32 * DPL;
  const uint8_t* base = kv.data + p * kv.pos_stride;
  const int64_t i0 = kvh * hd + static_cast<int64_t>(lane) * DPL;
  if (kv.type == GgmlType::F16) {
    const uint16_t* src = reinterpret_cast<const uint16_t*>(base) + i0;
    if constexpr (DPL == 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(src);
      const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        out[2 * i] = h2f(static_cast<uint16_t>(w[i] & 0xFFFF));
        out[2 * i + 1] = h2f(static_cast<uint16_t>(w[i] >> 16));
      }
    } else if constexpr (DPL == 4) {
      const uint2 raw = *reinterpret_cast<const uint2*>(src);
      out[0] = h2f(static_cast<uint16_t>(raw.x & 0xFFFF));
      out[1] = h2f(static_cast<uint16_t>(raw.x >> 16));
      out[2] = h2f(static_cast<uint16_t>(raw.y & 0xFFFF));
      out[3] = h2f(static_cast<uint16_t>(raw.y >> 16));
    } else {
#pragma unroll
      for (int i = 0; i < DPL; ++i) out[i] = h2f(src[i]);
    }
  } else if (kv.type == GgmlType::F32) {
    const float* src = reinterpret_cast<const float*>(base) + i0;
    if constexpr (DPL % 4 == 0) {
#pragma unroll
      for (int i = 0; i < DPL; i += 4) {
        const float4 f = *reinterpret_cast<const float4*>(src + i);
        out[i] = f.x;
        out[i + 1] = f.y;
        out[i + 2] = f.z;
        out[i + 3] = f.w;
      }
    } else {
#pragma unroll
      for (int i = 0; i < DPL; ++i) out[i] = src[i];
    }
  } else {  // Q8_0, blocks of 32 along the row; DPL divides 32 so one block per lane
    const uint8_t* blk = base + (i0 / 32) * 34;
    const float d = h2f(ld_u16(blk));
    const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2 + i0 % 32);
#pragma unroll
    for (int i = 0; i < DPL; ++i) out[i] = d * static_cast<float>(qs[i]);
  }
}

constexpr int kAttnTile = 32;  // positions per softmax update: one per lane

// Grid (T * nh, n_chunks), 32 threads. ws[(th * n_chunks + c) * (hd + 2)] = {m, l, acc[hd]} of
// chunk c (m = -inf, l = 0 past the token's causal end), th = t * nh + h.
template <int DPL>
RS_KERNEL void RS_LAUNCH_BOUNDS(32)
    attn_tile_partial_kernel(const float* q, int64_t nh, int64_t group, AttnKv k, AttnKv v,
                             int64_t n_past, const int64_t* pos, float scale, float* ws,
                             int64_t n_chunks, int64_t chunk) {
  RS_PDL_ENTRY();
  constexpr int64_t hd = 32 * DPL;
  constexpr unsigned kAll = 0xFFFFFFFFu;
  const int64_t th = blockIdx.x;  // t * nh + h
  const int64_t t = th / nh, h = th % nh, kvh = h / group;
  const int64_t c = blockIdx.y;
  const int lane = static_cast<int>(threadIdx.x);
  if (k.tok) k.data = k.tok[t];
  if (v.tok) v.data = v.tok[t];
  const int64_t n_ctx = (pos ? pos[t] : n_past + t) + 1;
  const int64_t p0 = c * chunk;
  const int64_t p1 = n_ctx < p0 + chunk ? n_ctx : p0 + chunk;
  float qv[DPL], acc[DPL];
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    qv[i] = q[th * hd + lane * DPL + i] * scale;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t tp = p0; tp < p1; tp += kAttnTile) {
    const int n = static_cast<int>(p1 - tp < kAttnTile ? p1 - tp : kAttnTile);  // warp-uniform
    float s[kAttnTile];
#pragma unroll
    for (int j = 0; j < kAttnTile; ++j) {
      float kk[DPL];
      if (j < n) {
        attn_load_lane<DPL>(k, tp + j, kvh, lane, kk);
      } else {
#pragma unroll
        for (int i = 0; i < DPL; ++i) kk[i] = 0.0f;
      }
      float d = 0.0f;
#pragma unroll
      for (int i = 0; i < DPL; ++i) d += qv[i] * kk[i];
      s[j] = d;
    }
    // Reduce-scatter: at each step a lane keeps the half of its partial sums whose position has
    // its lane bit and adds the partner's; after the five steps s[0] is position tp + lane's.
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) {
      const bool upper = (lane & o) != 0;
#pragma unroll
      for (int i = 0; i < o; ++i) {
        const float send = upper ? s[i] : s[i + o];
        const float keep = upper ? s[i + o] : s[i];
        s[i] = keep + __shfl_xor_sync(kAll, send, o);
      }
    }
    const float sc = lane < n ? s[0] : -INFINITY;
    float tmax = sc;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(kAll, tmax, o));
    const float m_new = fmaxf(m, tmax);
    const float corr = expf(m - m_new);  // 0 on the first tile (m = -inf)
    const float e = lane < n ? expf(sc - m_new) : 0.0f;
    float es = e;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) es += __shfl_xor_sync(kAll, es, o);
    l = l * corr + es;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[i] *= corr;
#pragma unroll
    for (int j = 0; j < kAttnTile; ++j) {
      if (j >= n) break;  // warp-uniform
      const float ej = __shfl_sync(kAll, e, j);
      float vv[DPL];
      attn_load_lane<DPL>(v, tp + j, kvh, lane, vv);
#pragma unroll
      for (int i = 0; i < DPL; ++i) acc[i] += ej * vv[i];
    }
    m = m_new;
  }
  float* o = ws + (th * n_chunks + c) * (hd + 2);
  if (lane == 0) {
    o[0] = m;
    o[1] = l;
  }
#pragma unroll
  for (int i = 0; i < DPL; ++i) o[2 + lane * DPL + i] = acc[i];
}

}  // namespace rs::cuda::detail
