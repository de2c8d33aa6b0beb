// Causal GQA attention over a KV cache (F32 / F16 / Q8_0), split-K.
//
// Pass 1: one warp per (token t, query head h, chunk c of `chunk` cache positions; attn_chunk()
// picks it: 256 for prefill, down to 32 for decode so that a long cache still spreads over
// enough warps), attn_tile_kernel.cuh: lane i holds dims [i*DPL, (i+1)*DPL) of q and of the
// running output, and the chunk is taken 32 positions (one softmax update) at a time. It writes
// {m, l, acc[hd]} for its chunk (m = -inf, l = 0 for a chunk past the token's causal end). Or,
// with gqa, a block per KV head (attn_gqa_kernel.cuh), the same records.
// Pass 2: one block of kMergeWarps warps per (t, h) merges the chunks:
// out = sum_c acc_c e^(m_c - M) / sum_c l_c e^(m_c - M).
// Softmax in fp32 (the reference uses double; differences are rounding).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/attn_gqa_kernel.cuh"
#include "kernels/cuda/attn_tile_kernel.cuh"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_launch.cuh"
#include "kernels/cuda/cuda_quant.cuh"

namespace rs::cuda::detail {
namespace {

// kMergeWarps warps per (t, h): warp w folds chunks w, w + kMergeWarps, ... into its own
// (M, L, acc), then warp 0 merges theirs (a long cache split for decode has ~100+ chunks: few
// warps walking them one load after another were the slow part).
constexpr int kMergeWarps = 16;
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
    detail::launch_kernel(attn_tile_partial_kernel<DPL>,
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
