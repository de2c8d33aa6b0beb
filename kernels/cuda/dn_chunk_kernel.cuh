// The gated delta rule of a prefill piece in chunks of C = 64 tokens (delta_rule_chunked_ref's
// algebra, kernels/ops_ref.cc), for the GPU. Per chunk, with G the cumulative log decay,
// Gamma_rs = exp(G_r - G_s), L_rs = beta_r Gamma_rs (k_r . k_s) for s < r and T = (I + L)^-1:
//   X_s   = v_s - e^{G_s} S0^T k_s                 (what the state does not yet predict)
//   Del   = T diag(beta) X                         (= U - W S0 of the reference)
//   o_r   = e^{G_r} S0^T q_r + sum_{s<=r} Gamma_rs (q_r . k_s) Del_s
//   S     = e^{G_last} S0 + sum_s e^{G_last - G_s} k_s Del_s^T
// One block per (value head, 64 value columns); thread pair (column, half) keeps its half of the
// column's dk state rows in registers; the two halves' partial dot products meet by a shuffle.
// Shared memory (dynamic, chunk_smem_bytes): K and Q of the chunk (Q's space later holds V, X
// and Del for the block's columns), T (L solved in place) and P = Gamma o QK.
// Written against simt.h: tests/cuda/dn_chunk_emu_test.cc runs this source on the host.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/dn_chunk_types.h"
#include "kernels/cuda/simt.h"

namespace rs::cuda::dn {

RS_KERNEL void RS_LAUNCH_BOUNDS(kChunkThreads) dn_chunk_kernel(ChunkArgs a) {
  RS_PDL_ENTRY();
  RS_DYN_SHARED(float, sm);
  const int64_t dk = a.dk, dv = a.dv, Hk = a.Hk, Hv = a.Hv, T = a.T;
  const int64_t h = blockIdx.x, j = h % Hk;  // GGUF tiled order
  const int tid = static_cast<int>(threadIdx.x);
  const int col = tid / 2, half = tid % 2;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kChunkCols + col;
  const bool has_col = c < dv;
  const int64_t rows_half = dk / 2, a0 = half * rows_half;
  const int64_t ld = dk + 1;          // padded rows: step b reads K rows across threads
  float* Ks = sm;                     // [C][ld]
  float* Qs = Ks + kChunk * ld;       // [C][ld]; later V / X / Del as [C][kChunkCols]
  float* Tm = Qs + kChunk * (ld > kChunkCols ? ld : kChunkCols);  // [C][C]
  float* Pm = Tm + kChunk * kChunk;   // [C][C]
  float* G = Pm + kChunk * kChunk;    // [C]
  float* B = G + kChunk;              // [C]
  float* eG = B + kChunk;             // [C]  e^{G_r}
  float* Ec = eG + kChunk;            // [C]  e^{G_last - G_s}
  float* Vx = Qs;

  float s[kChunkMaxDk / 2];
  float* Sh = a.S + h * dk * dv;
#pragma unroll
  for (int i = 0; i < kChunkMaxDk / 2; ++i)
    s[i] = (i < rows_half && has_col) ? Sh[(a0 + i) * dv + c] : 0.0f;

  for (int64_t c0 = 0; c0 < T; c0 += kChunk) {
    const int n = static_cast<int>(T - c0 < kChunk ? T - c0 : kChunk);
    // a. the chunk's K and Q rows; cumulative decay, beta.
    for (int64_t i = tid; i < n * dk; i += kChunkThreads) {
      const int64_t r = i / dk, e = i % dk;
      Ks[r * ld + e] = a.k[((c0 + r) * Hk + j) * dk + e];
      Qs[r * ld + e] = a.q[((c0 + r) * Hk + j) * dk + e];
    }
    if (tid == 0) {
      double acc = 0.0;
      for (int r = 0; r < n; ++r) {
        acc += a.g[(c0 + r) * Hv + h];
        G[r] = static_cast<float>(acc);
        B[r] = a.beta[(c0 + r) * Hv + h];
      }
    }
    __syncthreads();
    for (int r = tid; r < n; r += kChunkThreads) {
      eG[r] = expf(G[r]);
      Ec[r] = expf(G[n - 1] - G[r]);
    }
    // b. L (strictly lower, into Tm) and P (lower with the diagonal), from K K^T and Q K^T.
    for (int i = tid; i < n * n; i += kChunkThreads) {
      const int r = i / n, q = i % n;
      float lv = 0.0f, pv = 0.0f;
      if (q <= r) {
        float kk = 0.0f, qk = 0.0f;
        for (int64_t e = 0; e < dk; ++e) {
          kk = fmaf(Ks[r * ld + e], Ks[q * ld + e], kk);
          qk = fmaf(Qs[r * ld + e], Ks[q * ld + e], qk);
        }
        const float gam = expf(G[r] - G[q]);
        if (q < r) lv = B[r] * gam * kk;
        pv = gam * qk;
      }
      Tm[r * kChunk + q] = lv;
      Pm[r * kChunk + q] = pv;
    }
    __syncthreads();
    // c. the part of o that the incoming state gives: e^{G_r} S0^T q_r.
    for (int r = 0; r < n; ++r) {
      float part = 0.0f;
#pragma unroll
      for (int i = 0; i < kChunkMaxDk / 2; ++i)
        if (i < rows_half) part = fmaf(Qs[r * ld + a0 + i], s[i], part);
      const float full = part + __shfl_xor_sync(0xffffffffu, part, 1);
      if (half == 0 && has_col) a.out[((c0 + r) * Hv + h) * dv + c] = eG[r] * full;
    }
    // d. T = (I + L)^-1 in place, row by row (forward substitution); T is unit lower triangular.
    for (int r = 1; r < n; ++r) {
      float x = 0.0f;
      const int cc = tid;  // column of row r this thread computes (cc < r)
      if (cc < r) {
        for (int q = cc; q < r; ++q) {
          const float tqc = q == cc ? 1.0f : Tm[q * kChunk + cc];
          x = fmaf(-Tm[r * kChunk + q], tqc, x);
        }
      }
      __syncthreads();  // every thread has read row r of L
      if (cc < r) Tm[r * kChunk + cc] = x;
      __syncthreads();
    }
    for (int r = tid; r < n; r += kChunkThreads) Tm[r * kChunk + r] = 1.0f;
    __syncthreads();  // also: Q is consumed (steps b, c), its space takes V
    // e. V of the block's columns.
    for (int i = tid; i < n * kChunkCols; i += kChunkThreads) {
      const int r = i / kChunkCols, cl = i % kChunkCols;
      const int64_t cv = static_cast<int64_t>(blockIdx.y) * kChunkCols + cl;
      Vx[r * kChunkCols + cl] = cv < dv ? a.v[((c0 + r) * Hv + h) * dv + cv] : 0.0f;
    }
    __syncthreads();
    // f. X_s = v_s - e^{G_s} S0^T k_s (this column), in place.
    for (int r = 0; r < n; ++r) {
      float part = 0.0f;
#pragma unroll
      for (int i = 0; i < kChunkMaxDk / 2; ++i)
        if (i < rows_half) part = fmaf(Ks[r * ld + a0 + i], s[i], part);
      const float full = part + __shfl_xor_sync(0xffffffffu, part, 1);
      if (half == 0) Vx[r * kChunkCols + col] -= eG[r] * full;
    }
    __syncthreads();
    // g. Del = T diag(beta) X, rows from the last down so that X rows still needed stay intact.
    if (half == 0) {
      for (int r = n - 1; r >= 0; --r) {
        float d = 0.0f;
        for (int q = 0; q <= r; ++q) d = fmaf(Tm[r * kChunk + q] * B[q], Vx[q * kChunkCols + col], d);
        Vx[r * kChunkCols + col] = d;
      }
      // h. o_r += sum_{s<=r} P_rs Del_s.
      if (has_col)
        for (int r = 0; r < n; ++r) {
          float o = 0.0f;
          for (int q = 0; q <= r; ++q) o = fmaf(Pm[r * kChunk + q], Vx[q * kChunkCols + col], o);
          a.out[((c0 + r) * Hv + h) * dv + c] += o;
        }
    }
    __syncthreads();
    // i. S = e^{G_last} S0 + sum_s e^{G_last - G_s} k_s Del_s^T (this column, this half's rows).
    {
      const float egl = eG[n - 1];
#pragma unroll
      for (int i = 0; i < kChunkMaxDk / 2; ++i) {
        if (i >= rows_half) continue;
        float x = egl * s[i];
        for (int r = 0; r < n; ++r)
          x = fmaf(Ec[r] * Ks[r * ld + a0 + i], Vx[r * kChunkCols + col], x);
        s[i] = x;
      }
    }
    __syncthreads();  // the next chunk overwrites K, Q / V
  }
#pragma unroll
  for (int i = 0; i < kChunkMaxDk / 2; ++i)
    if (i < rows_half && has_col) Sh[(a0 + i) * dv + c] = s[i];
}

}  // namespace rs::cuda::dn
