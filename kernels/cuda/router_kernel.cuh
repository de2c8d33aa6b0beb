// The MoE router's top-k for one token as a warp function (router_topk's kernel and the fused
// router below share it), and the fused router: the router matvec (F32 weights, and the shared
// expert's gate row) and the top-k in one launch, the top-k run by the last block to finish its
// rows (an atomic count, set back to 0 by that block). Compiled by nvcc (cuda_ops.cu) and by g++
// for the SIMT emulator (tests/cuda/router_emu_test.cc).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/matvec_fmt.cuh"
#include "kernels/cuda/router_types.h"
#include "kernels/cuda/simt.h"

namespace rs::cuda::detail {

// One warp: token logits lt[E] -> ids[k], weights[k]. Order: by logit (the softmax is
// monotone), ties to the lower index, the same order as the reference's stable sort of the
// probabilities; weights from the softmax in double, renormalised over the chosen k. l:
// kRouterMaxExperts floats and chosen: 32 ints of this warp's shared memory.
RS_DEVICE void warp_router_topk(const float* lt, int64_t E, int64_t k, float* l, int32_t* chosen,
                                int lane, int32_t* ids, float* weights) {
  float mx = -FLT_MAX;
  for (int64_t e = lane; e < E; e += 32) {
    l[e] = lt[e];
    mx = fmaxf(mx, l[e]);
  }
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, o));
  double sum = 0.0;
  for (int64_t e = lane; e < E; e += 32) sum += exp(static_cast<double>(l[e]) - mx);
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
  __syncwarp();
  double chosen_p = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    float best = -INFINITY;
    int best_e = 0x7FFFFFFF;
    for (int64_t e = lane; e < E; e += 32) {
      const float v = l[e];
      if (v > best || (v == best && e < best_e)) {
        best = v;
        best_e = static_cast<int>(e);
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xFFFFFFFFu, best, o);
      const int oe = __shfl_xor_sync(0xFFFFFFFFu, best_e, o);
      if (ob > best || (ob == best && oe < best_e)) {
        best = ob;
        best_e = oe;
      }
    }
    if (lane == 0) {
      chosen[i] = best_e;
      l[best_e] = -INFINITY;
    }
    chosen_p += exp(static_cast<double>(best) - mx) / sum;
    __syncwarp();
  }
  if (lane < k) {
    const int e = chosen[lane];
    const double p = exp(static_cast<double>(lt[e]) - mx) / sum;
    ids[lane] = e;
    weights[lane] = static_cast<float>(p / chosen_p);
  }
}

// Grid ceil((E + (sh ? 1 : 0)) / kRouterWarps), 32 * kRouterWarps threads. Row r < E is the
// router's row r, row E the shared gate; each row's dot is the decode matvec's (Fmt<F32>, lanes
// over units, the same warp sum), so the logits and hence the choice equal the separate path's.
RS_KERNEL void RS_LAUNCH_BOUNDS(32 * kRouterWarps) router_fused_kernel(const RouterArgs a) {
  RS_PDL_ENTRY();
  __shared__ float l[kRouterWarps][kRouterMaxExperts];
  __shared__ int32_t chosen[kRouterWarps][32];
  __shared__ int last;
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRouterWarps + warp;
  const int64_t rows = a.E + (a.sh ? 1 : 0);
  if (r < rows) {  // warp-uniform
    const uint8_t* row = r < a.E ? a.w + r * a.row_stride : a.sh;
    const int64_t U = Fmt<GgmlType::F32>::units(a.H);
    for (int64_t t = 0; t < a.n_tok; ++t) {
      const ActDev act{a.x + t * a.H, a.H, nullptr, nullptr, a.H};
      float acc[1] = {0.0f};
      for (int64_t u = lane; u < U; u += 32) Fmt<GgmlType::F32>::template dot<1>(row, u, act, acc);
      for (int o = 16; o > 0; o >>= 1) acc[0] += __shfl_xor_sync(0xFFFFFFFFu, acc[0], o);
      if (lane == 0) {
        if (r < a.E)
          a.logits[t * a.E + r] = acc[0];
        else
          a.sh_logit[t] = acc[0];
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // this block's logits before its count
    last = atomicAdd(a.counter, 1) == static_cast<int>(gridDim.x) - 1;
    if (last) *a.counter = 0;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int64_t t = warp; t < a.n_tok; t += kRouterWarps)
    warp_router_topk(a.logits + t * a.E, a.E, a.k, l[warp], chosen[warp], lane,
                     a.ids + t * a.k, a.weights + t * a.k);
}

}  // namespace rs::cuda::detail
