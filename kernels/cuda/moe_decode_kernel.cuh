// The fused MoE decode kernels (arguments and slot numbering: moe_decode_types.h). Compiled by
// nvcc for the device (cuda_moe_decode.cu) and by g++ for the SIMT emulator
// (tests/cuda/moe_decode_emu_test.cc).
//
// Both kernels hand a warp several dot products at once (warp_dots): each product gets L lanes
// (32, or fewer when its row has fewer units than that), so a warp runs 32 / L products side by
// side and NR such groups unrolled: every lane has NR row loads in flight instead of one.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/matvec_fmt.cuh"
#include "kernels/cuda/moe_decode_types.h"
#include "kernels/cuda/q8_block.cuh"
#include "kernels/cuda/simt.h"

namespace rs::cuda::moed {

using detail::ActDev;
using detail::Fmt;

// Lanes per product for rows of U units: 32, or the largest power of two <= U.
RS_DEVICE int lanes_per_row(int64_t U) {
  int l = 32;
  while (l > 1 && l > U) l >>= 1;
  return l;
}

// Products 0..n-1 (n <= NR * 32 / L) of rows of `cols` weights: dot(prod(i).row, prod(i).act),
// handed to store(i, value) by the product's first lane (the caller synchronises before another
// lane reads it). A null row is skipped: store is not called for it.
struct Product {
  const uint8_t* row;
  ActDev act;
};
template <GgmlType T, int NR, class ProdFn, class StoreFn>
RS_DEVICE void warp_dots(int64_t cols, int n, int lane, const ProdFn& prod, const StoreFn& store) {
  const int64_t U = Fmt<T>::units(cols);
  const int L = lanes_per_row(U), rpp = 32 / L, sub = lane / L, ul = lane % L;
  Product p[NR];
  float acc[NR];
#pragma unroll
  for (int j = 0; j < NR; ++j) {
    const int i = j * rpp + sub;
    p[j] = i < n ? prod(i) : Product{nullptr, ActDev{}};
    acc[j] = 0.0f;
  }
  for (int64_t u = ul; u < U; u += L) {
#pragma unroll
    for (int j = 0; j < NR; ++j)
      if (p[j].row) Fmt<T>::template dot<1>(p[j].row, u, p[j].act, &acc[j]);
  }
#pragma unroll
  for (int j = 0; j < NR; ++j) {
    for (int o = L / 2; o > 0; o >>= 1) acc[j] += __shfl_xor_sync(0xFFFFFFFFu, acc[j], o);
    if (ul == 0 && p[j].row) store(j * rpp + sub, acc[j]);
  }
}

RS_DEVICE ActDev token_act(const float* x, const int8_t* q, const float* ds, int64_t cols,
                           int64_t ld, int64_t t) {
  ActDev a{x + t * ld, ld, q ? q + t * ld : nullptr,
           ds ? reinterpret_cast<const float2*>(ds) + t * (ld / 32) : nullptr, cols};
  return a;
}

RS_DEVICE float silu_f(float x) { return x / (1.0f + expf(-x)); }

// Grid (up_tiles, up_slots), kUpThreads: block (tile, slot) computes rows tile*32 .. +31 of the
// slot's gate and up, h = silu(gate) * up, and h's q8 block.
template <GgmlType T>
RS_KERNEL void RS_LAUNCH_BOUNDS(kUpThreads) moe_up_kernel(const UpArgs a) {
  RS_PDL_ENTRY();
  constexpr int kWarps = kUpThreads / 32, kPerWarp = kUpTile / kWarps;
  __shared__ float sgu[2 * kUpTile];  // gate rows, then up rows
  const int64_t slot = blockIdx.y, n_routed = a.n_tok * a.k;
  const bool shared = slot >= n_routed;
  const int64_t t = shared ? slot - n_routed : slot / a.k;
  const int64_t rows = shared ? a.Is : a.I;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kUpTile;
  if (r0 >= rows) return;
  const uint8_t* g = a.sh_gate;
  const uint8_t* u = a.sh_up;
  if (!shared) {
    const int32_t e = a.ids[slot];
    if (e < 0) return;
    g = a.gate + static_cast<size_t>(e) * a.expert_stride;
    u = a.up + static_cast<size_t>(e) * a.expert_stride;
  }
  const int n = static_cast<int>(rows - r0 < kUpTile ? rows - r0 : kUpTile);
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  const int w0 = warp * kPerWarp;
  const int wn = n - w0 < 0 ? 0 : (n - w0 < kPerWarp ? n - w0 : kPerWarp);
  const ActDev act = token_act(a.x, a.xq, a.xds, a.H, a.H, t);
  // The warp's rows of gate (products 0..wn-1) and of up (wn..2wn-1).
  const size_t rs = a.row_stride;
  const auto prod = [&](int i) {
    const bool up = i >= wn;
    const int64_t r = r0 + w0 + (up ? i - wn : i);
    return Product{(up ? u : g) + static_cast<size_t>(r) * rs, act};
  };
  warp_dots<T, 2 * kPerWarp>(a.H, 2 * wn, lane, prod, [&](int i, float v) {
    sgu[i < wn ? w0 + i : kUpTile + w0 + i - wn] = v;
  });
  __syncthreads();
  if (warp != 0) return;
  const bool valid = lane < n;
  const float v = valid ? silu_f(sgu[lane]) * sgu[kUpTile + lane] : 0.0f;
  if (valid) a.h[slot * a.ldh + r0 + lane] = v;
  if (a.hq == nullptr) return;
  warp_q8_block(v, valid, a.hq + slot * a.ldh + r0 + lane,
                a.hds + 2 * (slot * (a.ldh / 32) + r0 / 32), lane);
}

// Grid (ceil(H / kDownRows), n_tok), kDownThreads: warp w computes output row
// blockIdx.x * kDownRows + w of token blockIdx.y: the down row of each of the token's slots,
// summed in slot order with the routing weights, then the shared slot times sigmoid(logit).
template <GgmlType T>
RS_KERNEL void RS_LAUNCH_BOUNDS(kDownThreads) moe_down_kernel(const DownArgs a) {
  RS_PDL_ENTRY();
  constexpr int kWarps = kDownThreads / 32, kNR = 6;
  __shared__ float part[kWarps][kMaxSlots];
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  const int64_t t = blockIdx.y;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kDownRows + warp;
  if (row >= a.H) return;  // warp-uniform; no block barrier follows
  float* res = part[warp];
  const int64_t base = t * a.k;
  const auto routed = [&](int i) {
    const int32_t e = a.ids[base + i];
    if (e < 0) return Product{nullptr, ActDev{}};
    return Product{a.down + static_cast<size_t>(e) * a.expert_stride +
                       static_cast<size_t>(row) * a.row_stride,
                   token_act(a.h, a.hq, a.hds, a.I, a.ldh, base + i)};
  };
  const int L = lanes_per_row(Fmt<T>::units(a.I));
  const int per_call = kNR * (32 / L);
  for (int i0 = 0; i0 < a.k; i0 += per_call) {
    const int n = static_cast<int>(a.k - i0 < per_call ? a.k - i0 : per_call);
    warp_dots<T, kNR>(a.I, n, lane, [&](int i) { return routed(i0 + i); },
                      [&](int i, float v) { res[i0 + i] = v; });
  }
  const bool shared = a.sh_down != nullptr;
  if (shared) {
    const auto sh = [&](int) {
      return Product{a.sh_down + static_cast<size_t>(row) * a.sh_row_stride,
                     token_act(a.h, a.hq, a.hds, a.Is, a.ldh, a.n_tok * a.k + t)};
    };
    warp_dots<T, 1>(a.Is, 1, lane, sh, [&](int, float v) { res[a.k] = v; });
  }
  __syncwarp();
  if (lane != 0) return;
  float acc = 0.0f;
  for (int64_t i = 0; i < a.k; ++i)
    if (a.ids[base + i] >= 0) acc += a.w[base + i] * res[i];
  if (shared) acc += 1.0f / (1.0f + expf(-a.sh_logit[t])) * res[a.k];
  float* o = a.out + t * a.H + row;
  *o = (a.accumulate ? *o : 0.0f) + acc;
}

}  // namespace rs::cuda::moed
