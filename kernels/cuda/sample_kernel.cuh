// Sampling on the GPU: one block per logits row runs the whole pipeline of kernels/sampler.h
// (logit bias, repetition / frequency / presence penalties, greedy, temperature, min-p, top-k,
// top-p, the seeded draw) on the row in place, and writes only the chosen id. Written against
// simt.h so the same source runs in the host emulator (tests/cuda/sample_emu_test.cc) where no
// GPU exists.
//
// How the block finds the cut-offs without sorting the vocabulary: every token's scaled logit s
// maps to an order-preserving 32-bit key (0 = dropped by min-p). top-k is the k-th largest key,
// found by a 4-pass radix select (8 bits per pass, a 256-bin count histogram in shared memory).
// top-p is the smallest key tau whose "mass of the tokens with a larger key" is still below
// top_p * W: the same radix walk with the bins holding weight sums (double). Of the tokens equal
// to tau, the first ones in id order are kept while the mass before them stays below the limit,
// as the reference's walk (s descending, ties lower id first) keeps them. The draw splits the
// vocabulary into one contiguous id range per thread, scans the ranges' kept weights in id order
// and lets the thread whose range holds the target walk it.
//
// Same decisions as sample_ref except where a sum's rounding decides: the weight sums here are
// added in another association (per-thread partial sums, histogram bins) than the reference's
// one pass in id order, so a cut or a draw within ~1e-15 relative of a boundary may fall the
// other way. Logprobs are not computed here (the caller samples on the host when asked).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/sample_types.h"
#include "kernels/cuda/simt.h"

namespace rs::cuda::sampling {

constexpr int kWarps = kThreads / 32;

RS_DEVICE uint32_t order_key(float s) {
  const uint32_t b = __float_as_uint(s);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
RS_DEVICE float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

// Block-wide sum / exclusive scan helpers (all threads call them; kThreads threads).
template <class T>
RS_DEVICE T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <class T>
RS_DEVICE T block_sum(T v, T* sh) {
  v = warp_sum(v);
  const int w = static_cast<int>(threadIdx.x) / 32, l = static_cast<int>(threadIdx.x) % 32;
  __syncthreads();  // sh may still be read by a previous call
  if (l == 0) sh[w] = v;
  __syncthreads();
  T r = 0;
  for (int i = 0; i < kWarps; ++i) r += sh[i];
  return r;
}
// Exclusive prefix sum over threads in thread order (thread i gets the sum of threads < i).
template <class T>
RS_DEVICE T block_exclusive_scan(T v, T* sh) {
  const int w = static_cast<int>(threadIdx.x) / 32, l = static_cast<int>(threadIdx.x) % 32;
  T incl = v;
  for (int o = 1; o < 32; o <<= 1) {
    const T n = __shfl_up_sync(0xffffffffu, incl, o);
    if (l >= o) incl += n;
  }
  __syncthreads();
  if (l == 31) sh[w] = incl;
  __syncthreads();
  T base = 0;
  for (int i = 0; i < w; ++i) base += sh[i];
  return base + incl - v;
}
RS_DEVICE float block_max(float v, float* sh) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int w = static_cast<int>(threadIdx.x) / 32, l = static_cast<int>(threadIdx.x) % 32;
  __syncthreads();
  if (l == 0) sh[w] = v;
  __syncthreads();
  float r = sh[0];
  for (int i = 1; i < kWarps; ++i) r = fmaxf(r, sh[i]);
  return r;
}

// Finds, over the tokens with key(t) >= lo_key, the k-th largest key (1-based k <= their
// count), by 8-bit digits from the top. `key` is a callable t -> key.
template <class KeyFn>
RS_DEVICE uint32_t radix_kth(KeyFn key, int64_t V, uint32_t lo_key, int64_t k, int* hist) {
  uint32_t prefix = 0, mask = 0;
  int64_t need = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    for (int64_t t = threadIdx.x; t < V; t += kThreads) {
      const uint32_t kk = key(t);
      if (kk >= lo_key && kk != 0 && (kk & mask) == prefix) atomicAdd(&hist[(kk >> shift) & 255], 1);
    }
    __syncthreads();
    // Every thread walks the 256 bins (cheap) and gets the same answer.
    int b = 255;
    for (; b > 0; --b) {
      if (hist[b] >= need) break;
      need -= hist[b];
    }
    prefix |= static_cast<uint32_t>(b) << shift;
    mask |= 255u << shift;
  }
  return prefix;
}

// The whole pipeline on row blockIdx.x of x (V floats, row stride ldx), in place.
RS_KERNEL void RS_LAUNCH_BOUNDS(kThreads) sample_rows_kernel(float* x_all, int64_t ldx, int64_t V, const RowParams* rows,
                                  const PenEntry* pens, const BiasEntry* biases,
                                  int32_t* out_ids) {
  RS_PDL_ENTRY();
  __shared__ double sh_d[kWarps];
  __shared__ float sh_f[kWarps];
  __shared__ int sh_i[kWarps];
  __shared__ int64_t sh_l[kWarps];
  __shared__ int hist[256];
  __shared__ double hmass[256];
  __shared__ int32_t found;
  const int tid = static_cast<int>(threadIdx.x);
  const RowParams p = rows[blockIdx.x];
  float* x = x_all + static_cast<int64_t>(blockIdx.x) * ldx;

  // 1. logit bias (distinct ids), then 2-4. penalties (distinct ids).
  for (int i = p.bias_begin + tid; i < p.bias_end; i += kThreads) {
    const BiasEntry b = biases[i];
    if (b.token >= 0 && b.token < V) x[b.token] += b.bias;
  }
  __syncthreads();
  for (int i = p.pen_begin + tid; i < p.pen_end; i += kThreads) {
    const PenEntry e = pens[i];
    if (e.token < 0 || e.token >= V) continue;
    float v = x[e.token];
    if (e.in_prompt || e.out_count > 0) v = v > 0.0f ? v / p.repetition : v * p.repetition;
    v = fmaf(-p.frequency, static_cast<float>(e.out_count), v);
    if (e.out_count > 0) v -= p.presence;
    x[e.token] = v;
  }
  __syncthreads();

  // 5. greedy: argmax, ties to the lower id.
  if (p.temperature < 1e-5f) {
    float best = -INFINITY;
    int64_t best_i = V;
    for (int64_t t = tid; t < V; t += kThreads) {
      const float v = x[t];
      if (v > best || (best_i == V && v == best)) {
        best = v;
        best_i = t;
      }
    }
    const float m = block_max(best, sh_f);
    int64_t cand = best == m ? best_i : V;
    for (int o = 16; o > 0; o >>= 1) {
      const int64_t c = __shfl_xor_sync(0xffffffffu, cand, o);
      cand = c < cand ? c : cand;
    }
    __syncthreads();
    if (tid % 32 == 0) sh_l[tid / 32] = cand;
    __syncthreads();
    if (tid == 0) {
      int64_t r = V;
      for (int i = 0; i < kWarps; ++i) r = sh_l[i] < r ? sh_l[i] : r;
      out_ids[blockIdx.x] = static_cast<int32_t>(r < V ? r : 0);
    }
    return;
  }

  // 6. temperature, in place: x becomes s.
  float local_max = -INFINITY;
  for (int64_t t = tid; t < V; t += kThreads) {
    const float s = x[t] / p.temperature;
    x[t] = s;
    local_max = fmaxf(local_max, s);
  }
  const float s_max = block_max(local_max, sh_f);
  const double dmax = static_cast<double>(s_max);
  // 7. min-p folds into the key: 0 = dropped.
  const bool use_min_p = p.min_p > 0.0f;
  const double log_min_p = use_min_p ? log(static_cast<double>(p.min_p)) : 0.0;
  auto key = [&](int64_t t) -> uint32_t {
    const float s = x[t];
    if (use_min_p && static_cast<double>(s) - dmax < log_min_p) return 0u;
    return order_key(s);
  };
  auto weight = [&](uint32_t k) { return exp(static_cast<double>(key_value(k)) - dmax); };

  // 8. top-k: keep key >= the k-th largest surviving key (ties kept).
  uint32_t lo = 1;
  if (p.top_k > 0) {
    int n_surv = 0;
    for (int64_t t = tid; t < V; t += kThreads) n_surv += key(t) != 0;
    const int total = block_sum(n_surv, sh_i);
    if (p.top_k < total) lo = radix_kth(key, V, 1u, p.top_k, hist);
  }

  // 9. top-p: tau and how many of the tokens equal to tau are kept.
  uint32_t tau = 0;  // 0: no top-p cut (every candidate >= lo kept)
  int64_t tau_keep = 0;
  if (p.top_p < 1.0f) {
    double wsum = 0.0;
    for (int64_t t = tid; t < V; t += kThreads) {
      const uint32_t k = key(t);
      if (k >= lo) wsum += weight(k);
    }
    const double limit = static_cast<double>(p.top_p) * block_sum(wsum, sh_d);
    uint32_t prefix = 0, mask = 0;
    double above = 0.0;  // mass of the candidates whose key is above the current prefix range
    for (int shift = 24; shift >= 0; shift -= 8) {
      __syncthreads();
      for (int i = tid; i < 256; i += kThreads) {
        hist[i] = 0;
        hmass[i] = 0.0;
      }
      __syncthreads();
      for (int64_t t = tid; t < V; t += kThreads) {
        const uint32_t k = key(t);
        if (k >= lo && (k & mask) == prefix) {
          const int b = static_cast<int>((k >> shift) & 255);
          atomicAdd(&hist[b], 1);
          atomicAdd(&hmass[b], weight(k));
        }
      }
      __syncthreads();
      // The lowest non-empty bin whose higher bins hold less than the limit.
      int pick = -1;
      double acc = above, acc_at_pick = above;
      for (int b = 255; b >= 0; --b) {
        if (hist[b] == 0) continue;
        if (acc < limit) {
          pick = b;
          acc_at_pick = acc;
        } else {
          break;
        }
        acc += hmass[b];
      }
      // pick >= 0 always: the highest non-empty bin starts at `above` < limit.
      prefix |= static_cast<uint32_t>(pick < 0 ? 0 : pick) << shift;
      mask |= 255u << shift;
      above = acc_at_pick;
    }
    tau = prefix;
    // Tokens equal to tau: the m-th (id order) has mass before it above + m * w_tau.
    int cnt = 0;
    for (int64_t t = tid; t < V; t += kThreads) cnt += key(t) == tau;
    const int64_t n_tau = block_sum(cnt, sh_i);
    const double w_tau = weight(tau);
    if (w_tau > 0.0) {
      const double q = ceil((limit - above) / w_tau);
      tau_keep = q < 1.0 ? 1 : (q >= static_cast<double>(n_tau) ? n_tau : static_cast<int64_t>(q));
    } else {
      tau_keep = n_tau;
    }
  }

  // 10. the draw over the kept tokens in id order.
  const int64_t chunk = (V + kThreads - 1) / kThreads;
  const int64_t t0 = chunk * tid < V ? chunk * tid : V;
  const int64_t t1 = t0 + chunk < V ? t0 + chunk : V;
  int64_t my_tau = 0;
  if (tau != 0)
    for (int64_t t = t0; t < t1; ++t) my_tau += key(t) == tau;
  const int64_t tau_rank0 = tau != 0 ? block_exclusive_scan(my_tau, sh_l) : 0;
  auto kept = [&](uint32_t k, int64_t* tau_rank) {
    if (k < lo) return false;
    if (tau == 0 || k > tau) return true;
    if (k < tau) return false;
    return (*tau_rank)++ < tau_keep;
  };
  double mine = 0.0;
  int64_t last_kept = -1;
  {
    int64_t r = tau_rank0;
    for (int64_t t = t0; t < t1; ++t) {
      const uint32_t k = key(t);
      if (kept(k, &r)) {
        mine += weight(k);
        last_kept = t;
      }
    }
  }
  const double before = block_exclusive_scan(mine, sh_d);
  const double total = block_sum(mine, sh_d);
  const double target = p.u * total;
  if (tid == 0) found = -1;
  __syncthreads();
  if (before <= target && target < before + mine) {
    double cum = before;
    int64_t r = tau_rank0;
    for (int64_t t = t0; t < t1; ++t) {
      const uint32_t k = key(t);
      if (kept(k, &r)) {
        cum += weight(k);
        if (cum > target) {
          atomicMax(&found, static_cast<int32_t>(t));  // one thread gets here, normally
          break;
        }
      }
    }
  }
  __syncthreads();
  // Rounding fallback, as the reference: the last kept id.
  int64_t lk = last_kept;
  for (int o = 16; o > 0; o >>= 1) {
    const int64_t c = __shfl_xor_sync(0xffffffffu, lk, o);
    lk = c > lk ? c : lk;
  }
  __syncthreads();
  if (tid % 32 == 0) sh_l[tid / 32] = lk;
  __syncthreads();
  if (tid == 0) {
    int64_t r = found;
    if (r < 0)
      for (int i = 0; i < kWarps; ++i) r = sh_l[i] > r ? sh_l[i] : r;
    out_ids[blockIdx.x] = static_cast<int32_t>(r < 0 ? 0 : r);
  }
}

}  // namespace rs::cuda::sampling
