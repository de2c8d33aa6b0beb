// Routed experts for a prefill step, grouped by expert: every selected expert's weights are read
// once per step (per 32-slot tile) instead of once per token. Three kernels:
//   moe_sort_kernel     one block: the N*k (token, slot) pairs bucketed by expert: perm[pos] =
//                       slot, inv[slot] = pos, off[e] = first pos of expert e, tile_off[e] = first
//                       32-row tile of expert e (positions inside a bucket are in no fixed order;
//                       no result depends on them)
//   moe_gemm_kernel<T>  Y[pos] = W_e . A[row(pos)] for the tiles of all experts in one launch
//                       (blockIdx.y = tile, found in tile_off; blockIdx.x = 64 weight rows);
//                       row(pos) = perm[pos] / k (a slot's token: gate/up) or pos (down, whose
//                       input is already in bucket order). f32 activations, weights dequantised
//                       32 at a time into shared memory (dequant32), f32 accumulation in a fixed
//                       order: a row's result does not depend on its tile or position.
//   moe_combine_kernel  out[t] = sum over the token's slots i, in slot order, of
//                       w[t][i] * D[inv[t*k + i]] (deterministic).
// Written against simt.h: tests/cuda/moe_grouped_emu_test.cc runs this source on the host.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_quant.cuh"
#include "kernels/cuda/moe_grouped_types.h"
#include "kernels/cuda/simt.h"

namespace rs::cuda::moe {

// One block of kSortThreads; dynamic shared memory: 2 * E ints.
RS_KERNEL void moe_sort_kernel(const int32_t* ids, int64_t n_slots, int64_t E, int32_t* perm,
                               int32_t* inv, int32_t* off, int32_t* tile_off) {
  RS_PDL_ENTRY();
  RS_DYN_SHARED(int, sm);
  int* count = sm;       // [E]
  int* cursor = sm + E;  // [E]
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t e = tid; e < E; e += kSortThreads) count[e] = 0;
  __syncthreads();
  for (int64_t s = tid; s < n_slots; s += kSortThreads) {
    const int32_t e = ids[s];
    if (e >= 0 && e < E) atomicAdd(&count[e], 1);
  }
  __syncthreads();
  if (tid == 0) {
    int o = 0, t = 0;
    for (int64_t e = 0; e < E; ++e) {
      off[e] = o;
      tile_off[e] = t;
      cursor[e] = o;
      o += count[e];
      t += (count[e] + kTileM - 1) / kTileM;
    }
    off[E] = o;
    tile_off[E] = t;
  }
  __syncthreads();
  for (int64_t s = tid; s < n_slots; s += kSortThreads) {
    const int32_t e = ids[s];
    if (e < 0 || e >= E) {
      inv[s] = -1;
      continue;
    }
    const int pos = atomicAdd(&cursor[e], 1);
    perm[pos] = static_cast<int32_t>(s);
    inv[s] = pos;
  }
}

// Grid: x = ceil(rows / kTileN), y >= tile_off[E] (extra blocks return); kGemmThreads threads.
template <GgmlType T>
RS_KERNEL void RS_LAUNCH_BOUNDS(kGemmThreads) moe_gemm_kernel(GemmArgs g) {
  RS_PDL_ENTRY();
  __shared__ float As[kTileM][kTileK + 1];
  __shared__ float Ws[kTileN][kTileK + 1];
  __shared__ int32_t arow[kTileM];
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t mt = blockIdx.y;
  if (mt >= g.tile_off[g.E]) return;
  // The expert whose tiles hold mt (binary search over tile_off).
  int64_t lo = 0, hi = g.E;  // tile_off[lo] <= mt < tile_off[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (g.tile_off[mid] <= mt) lo = mid; else hi = mid;
  }
  const int64_t e = lo;
  const int64_t m0 = g.off[e] + (mt - g.tile_off[e]) * kTileM;
  const int64_t m_end = m0 + kTileM < g.off[e + 1] ? m0 + kTileM : g.off[e + 1];
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  const uint8_t* W = g.w + static_cast<size_t>(e) * g.expert_stride;
  if (tid < kTileM) {
    const int64_t p = m0 + tid;
    arow[tid] = p < m_end ? (g.by_token ? g.perm[p] / g.k : static_cast<int32_t>(p)) : -1;
  }
  // Thread tile: tokens {ty, ty + 16} x rows {tx + 16 j, j < 4}.
  const int ty = tid / 16, tx = tid % 16;
  float acc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
  for (int64_t k0 = 0; k0 < g.cols; k0 += kTileK) {
    __syncthreads();  // the previous step's tiles are consumed (and arow is written)
    for (int i = tid; i < kTileM * kTileK; i += kGemmThreads) {
      const int r = i / kTileK, c = i % kTileK;
      const int32_t ar = arow[r];
      As[r][c] = ar >= 0 ? g.a[static_cast<int64_t>(ar) * g.lda + k0 + c] : 0.0f;
    }
    if (tid < kTileN) {
      const int64_t row = n0 + tid;
      float v[32];
      if (row < g.rows) {
        detail::dequant32<T>(W + static_cast<size_t>(row) * g.row_stride, k0, v);
      } else {
        for (int i = 0; i < 32; ++i) v[i] = 0.0f;
      }
      for (int i = 0; i < kTileK; ++i) Ws[tid][i] = v[i];
    }
    __syncthreads();
    for (int c = 0; c < kTileK; ++c) {
      const float a0 = As[ty][c], a1 = As[ty + 16][c];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float w = Ws[tx + 16 * j][c];
        acc[0][j] = fmaf(a0, w, acc[0][j]);
        acc[1][j] = fmaf(a1, w, acc[1][j]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t p = m0 + ty + 16 * i;
    if (p >= m_end) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t row = n0 + tx + 16 * j;
      if (row < g.rows) g.y[p * g.ldy + row] = acc[i][j];
    }
  }
}

// Grid: (ceil(H / kCombineThreads), n_tok); kCombineThreads threads.
RS_KERNEL void moe_combine_kernel(const float* d, int64_t ldd, const int32_t* inv,
                                  const float* w, int64_t k, int64_t H, float* out) {
  RS_PDL_ENTRY();
  const int64_t t = blockIdx.y;
  const int64_t h = static_cast<int64_t>(blockIdx.x) * kCombineThreads + threadIdx.x;
  if (h >= H) return;
  float acc = 0.0f;
  for (int64_t i = 0; i < k; ++i) {
    const int32_t p = inv[t * k + i];
    if (p >= 0) acc = fmaf(w[t * k + i], d[static_cast<int64_t>(p) * ldd + h], acc);
  }
  out[t * H + h] = acc;
}

}  // namespace rs::cuda::moe
