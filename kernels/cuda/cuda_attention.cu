// Causal GQA attention over a KV cache (F32 / F16 / Q8_0), split-K.
//
// Pass 1: one warp per (token t, query head h, chunk c of `chunk` cache positions; attn_chunk()
// picks it: 256 for prefill, down to 32 for decode so that a long cache still spreads over
// enough warps). Lane i
// holds dims [i*DPL, (i+1)*DPL) of q and of the running output; each position costs one warp
// reduction for the score and an online-softmax update. It writes {m, l, acc[hd]} for its chunk
// (m = -inf, l = 0 for a chunk past the token's causal end).
// Pass 2: one block of 4 warps per (t, h) merges the chunks:
// out = sum_c acc_c e^(m_c - M) / sum_c l_c e^(m_c - M).
// Softmax in fp32 (the reference uses double; differences are rounding).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/attn_gqa_kernel.cuh"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_launch.cuh"
#include "kernels/cuda/cuda_quant.cuh"

namespace rs::cuda::detail {
namespace {

template <int DPL>
__device__ __forceinline__ void load_kv(const AttnKv& kv, int64_t p, int64_t kvh, int64_t hd,
                                        int lane, float* out) {
  const uint8_t* base = kv.data + p * kv.pos_stride;
  const int64_t i0 = kvh * hd + static_cast<int64_t>(lane) * DPL;
  if (kv.type == GgmlType::F16) {
    const uint16_t* src = reinterpret_cast<const uint16_t*>(base) + i0;
    if constexpr (DPL == 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(src);
      const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
      }
    } else {
#pragma unroll
      for (int i = 0; i < DPL; ++i) out[i] = h2f(src[i]);
    }
  } else if (kv.type == GgmlType::F32) {
    const float* src = reinterpret_cast<const float*>(base) + i0;
#pragma unroll
    for (int i = 0; i < DPL; ++i) out[i] = src[i];
  } else {  // Q8_0, blocks of 32 along the row; DPL divides 32 so one block per lane
    const uint8_t* blk = base + (i0 / 32) * 34;
    const float d = h2f(ld_u16(blk));
    const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2 + i0 % 32);
#pragma unroll
    for (int i = 0; i < DPL; ++i) out[i] = d * static_cast<float>(qs[i]);
  }
}

template <int DPL>
__global__ void __launch_bounds__(32)
    attn_partial_kernel(const float* __restrict__ q, int64_t nh, int64_t group, AttnKv k, AttnKv v,
                        int64_t n_past, const int64_t* __restrict__ pos, float scale,
                        float* __restrict__ ws, int64_t n_chunks, int64_t chunk) {
  RS_PDL_ENTRY();
  constexpr int64_t hd = 32 * DPL;
  const int64_t th = blockIdx.x;  // t * nh + h
  const int64_t t = th / nh, h = th % nh, kvh = h / group;
  const int64_t c = blockIdx.y;
  const int lane = static_cast<int>(threadIdx.x);
  if (k.tok) k.data = k.tok[t];
  if (v.tok) v.data = v.tok[t];
  const int64_t n_ctx = (pos ? pos[t] : n_past + t) + 1;
  const int64_t p0 = c * chunk;
  const int64_t p1 = min(n_ctx, p0 + chunk);
  float qv[DPL], acc[DPL];
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    qv[i] = q[th * hd + lane * DPL + i] * scale;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
#pragma unroll 4
  for (int64_t p = p0; p < p1; ++p) {
    float kk[DPL], vv[DPL];
    load_kv<DPL>(k, p, kvh, hd, lane, kk);
    load_kv<DPL>(v, p, kvh, hd, lane, vv);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) s += qv[i] * kk[i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, o);
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new);  // 0 on the first position (m = -inf)
    const float e = expf(s - m_new);
    l = l * corr + e;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[i] = acc[i] * corr + e * vv[i];
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

// Four warps per (t, h): warp w folds chunks w, w + 4, ... into its own (M, L, acc), then warp 0
// merges the four (a long cache split for decode has ~100+ chunks: one warp walking them all
// was the slow part).
constexpr int kMergeWarps = 4;
template <int DPL>
__global__ void __launch_bounds__(32 * kMergeWarps)
    attn_merge_kernel(const float* __restrict__ ws, int64_t n_chunks, float* __restrict__ out) {
  RS_PDL_ENTRY();
  constexpr int64_t hd = 32 * DPL;
  const int64_t th = blockIdx.x;
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  const float* part = ws + th * n_chunks * (hd + 2);
  float M = -INFINITY;
#pragma unroll 4
  for (int64_t c = warp; c < n_chunks; c += kMergeWarps) M = fmaxf(M, part[c * (hd + 2)]);
  float L = 0.0f, acc[DPL];
#pragma unroll
  for (int i = 0; i < DPL; ++i) acc[i] = 0.0f;
#pragma unroll 2
  for (int64_t c = warp; c < n_chunks; c += kMergeWarps) {
    const float* pc = part + c * (hd + 2);
    if (pc[1] == 0.0f) continue;  // empty chunk
    const float f = expf(pc[0] - M);
    L += pc[1] * f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[i] += pc[2 + lane * DPL + i] * f;
  }
  __shared__ float sM[kMergeWarps], sL[kMergeWarps], sacc[kMergeWarps][hd];
  if (lane == 0) {
    sM[warp] = M;
    sL[warp] = L;
  }
#pragma unroll
  for (int i = 0; i < DPL; ++i) sacc[warp][lane * DPL + i] = acc[i];
  __syncthreads();
  if (warp != 0) return;
  float MM = -INFINITY;
#pragma unroll
  for (int w = 0; w < kMergeWarps; ++w) MM = fmaxf(MM, sM[w]);
  float LL = 0.0f, a2[DPL];
#pragma unroll
  for (int i = 0; i < DPL; ++i) a2[i] = 0.0f;
#pragma unroll
  for (int w = 0; w < kMergeWarps; ++w) {
    if (sL[w] == 0.0f) continue;
    const float f = expf(sM[w] - MM);
    LL += sL[w] * f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) a2[i] += sacc[w][lane * DPL + i] * f;
  }
  const float inv = 1.0f / LL;
#pragma unroll
  for (int i = 0; i < DPL; ++i) out[th * hd + lane * DPL + i] = a2[i] * inv;
}

template <int DPL>
cudaError_t launch_attn(const float* q, int64_t T, int64_t nh, const AttnKv& k, const AttnKv& v,
                        int64_t n_past, const int64_t* pos, float scale, float* out, float* ws,
                        int64_t n_chunks, int64_t chunk, bool gqa, cudaStream_t s) {
  const int64_t group = nh / k.n_kv_heads;
  if (gqa && group >= 2 && group <= kGqaMaxGroup) {
    detail::launch_kernel(
        attn_gqa_partial_kernel<DPL>,
        dim3(static_cast<unsigned>(T * k.n_kv_heads), static_cast<unsigned>(n_chunks)),
        static_cast<unsigned>(32 * group), 0, s, q, nh, group, k, v, n_past, pos, scale, ws,
        n_chunks, chunk);
  } else {
    detail::launch_kernel(attn_partial_kernel<DPL>,
                          dim3(static_cast<unsigned>(T * nh), static_cast<unsigned>(n_chunks)), 32,
                          0, s, q, nh, group, k, v, n_past, pos, scale, ws, n_chunks, chunk);
  }
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  detail::launch_kernel(attn_merge_kernel<DPL>, static_cast<unsigned>(T * nh), 32 * kMergeWarps, 0,
                        s, ws, n_chunks, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_attention(const float* q, int64_t T, int64_t nh, int64_t hd, const AttnKv& k,
                             const AttnKv& v, int64_t n_past, const int64_t* pos, float scale,
                             float* out, float* ws, int64_t n_chunks, int64_t chunk, bool gqa,
                             cudaStream_t s) {
  switch (hd) {
    case 32: return launch_attn<1>(q, T, nh, k, v, n_past, pos, scale, out, ws, n_chunks, chunk, gqa, s);
    case 64: return launch_attn<2>(q, T, nh, k, v, n_past, pos, scale, out, ws, n_chunks, chunk, gqa, s);
    case 128: return launch_attn<4>(q, T, nh, k, v, n_past, pos, scale, out, ws, n_chunks, chunk, gqa, s);
    case 256: return launch_attn<8>(q, T, nh, k, v, n_past, pos, scale, out, ws, n_chunks, chunk, gqa, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace rs::cuda::detail
