// The DeltaNet decode step of one layer as one kernel: for every sequence of the batch (one token
// each) the causal conv update, SiLU, the L2 norms of q and k, the gates, the gated delta rule's
// state update and readout, and the gated RMSNorm, from the projections' outputs (u, z, b, al)
// to the input of ssm_out. The CPU definitions it follows: conv1d_silu_ref, l2_norm_ref (eps
// 1e-6), q * 1/sqrt(dk), beta = sigmoid(b), g = ssm_a * softplus(al + dt_bias),
// delta_rule_recurrent_ref, rms_norm_gated_ref (kernels/ops.h; the order of worker/model.cc).
//
// One block per (key head j, sequence, value head r of the group: h = j + r * Hk, GGUF's tiled
// order, column group of the state: DecodeArgs::col_split of them), so a batch of one spreads
// over Hv * col_split blocks (a block per head left most of an H200 idle: 32 blocks on
// 35b-a3b). Each conv state channel has one writer: a block shifts its own v channels; the
// q_j / k_j channels, which all R * col_split blocks of key head j read, are shifted by the last
// of them to finish reading (an atomic count per (sequence, key head) in DecodeArgs::counters,
// which that block sets back to 0). With several column groups the head's gated RMSNorm is
// finished by the last of its blocks (DecodeArgs::norm_part / norm_cnt, likewise). Thread
// (part, c) keeps rows a = part, part + P, ... of the block's state column c in registers
// (P = threads / columns parts), so the state is read once and written once, with coalesced
// rows.
//
// Written against simt.h: tests/cuda/dn_decode_emu_test.cc runs this source on the host.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/dn_decode_types.h"
#include "kernels/cuda/q8_block.cuh"
#include "kernels/cuda/simt.h"

namespace rs::cuda::dn {

RS_DEVICE float dn_silu(float x) { return x / (1.0f + expf(-x)); }
RS_DEVICE float dn_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
RS_DEVICE float dn_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// Sum over the block (all threads call; `red` holds 32 floats).
RS_DEVICE float dn_block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int w = static_cast<int>(threadIdx.x) / 32, l = static_cast<int>(threadIdx.x) % 32;
  __syncthreads();
  if (l == 0) red[w] = v;
  __syncthreads();
  float r = 0.0f;
  for (int i = 0; i < static_cast<int>(blockDim.x) / 32; ++i) r += red[i];
  return r;
}

RS_KERNEL void RS_LAUNCH_BOUNDS(kDecodeThreads) dn_decode_kernel(DecodeArgs a) {
  RS_PDL_ENTRY();
  RS_DYN_SHARED(float, sm);
  __shared__ int last_reader, last_norm;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t S_ = a.col_split > 1 ? a.col_split : 1;  // column groups per value head
  const int64_t j = blockIdx.x, seq = blockIdx.y, r = blockIdx.z / S_, cs = blockIdx.z % S_;
  const int64_t Hk = a.Hk, Hv = a.Hv, dk = a.dk, dv = a.dv, K = a.K;
  const int64_t R = Hv / Hk, KD = Hk * dk, CD = 2 * KD + Hv * dv;
  const int64_t h = j + r * Hk;  // the block's value head (GGUF's tiled order)
  const int64_t Cb = dv / S_, c0 = cs * Cb;  // the block's state columns: c0 .. c0 + Cb - 1
  const int P = kDecodeThreads / static_cast<int>(Cb);
  float* sq = sm;                 // [dk]
  float* sk = sq + dk;            // [dk]
  float* sv = sk + dk;            // [Cb]
  float* sgate = sv + Cb;         // [2]: beta, decay
  float* red = sgate + 2;         // [P][Cb]
  float* red2 = red + P * Cb;     // [P][Cb]
  float* red32 = red2 + P * Cb;   // [32]
  uint8_t* base = a.seq_base[seq];
  float* cstate = reinterpret_cast<float*>(base + a.conv_off);
  float* S = reinterpret_cast<float*>(base + a.ssm_off);
  const float* u = a.u + seq * CD;
  const int64_t readers = R * S_;  // blocks that read key head j's q / k channels

  // 1. conv + SiLU on q_j, k_j (every block of key head j computes them) and on the block's own
  // v channels, whose state it shifts (one writer per channel).
  const int64_t n_ch = 2 * dk + Cb;
  for (int64_t i = tid; i < n_ch; i += kDecodeThreads) {
    int64_t c;
    float* dst;
    if (i < dk) {
      c = j * dk + i;
      dst = sq + i;
    } else if (i < 2 * dk) {
      c = KD + j * dk + (i - dk);
      dst = sk + (i - dk);
    } else {
      c = 2 * KD + h * dv + c0 + (i - 2 * dk);
      dst = sv + (i - 2 * dk);
    }
    const float* w = a.conv_w + c * K;
    float acc = 0.0f;
    for (int64_t t = 0; t < K - 1; ++t) acc = fmaf(w[t], cstate[t * CD + c], acc);
    const float x = u[c];
    acc = fmaf(w[K - 1], x, acc);
    if (i >= 2 * dk || readers == 1) {
      for (int64_t t = 0; t + 1 < K - 1; ++t) cstate[t * CD + c] = cstate[(t + 1) * CD + c];
      if (K > 1) cstate[(K - 2) * CD + c] = x;
    }
    *dst = dn_silu(acc);
  }
  if (tid == 0) {
    sgate[0] = dn_sigmoid(a.b[seq * Hv + h]);
    sgate[1] = expf(a.ssm_a[h] * dn_softplus(a.al[seq * Hv + h] + a.dt_bias[h]));
  }
  __syncthreads();
  // The q_j / k_j conv state is read by the R * S blocks of key head j: the last of them to have
  // read it shifts it (counted per (sequence, key head); the counter is left at 0 again).
  if (readers > 1) {
    if (tid == 0) {
      __threadfence();
      int* cnt = a.counters + seq * Hk + j;
      const int before = atomicAdd(cnt, 1);
      last_reader = before == static_cast<int>(readers) - 1;
      if (last_reader) *cnt = 0;
    }
    __syncthreads();
    if (last_reader) {
      for (int64_t i = tid; i < 2 * dk; i += kDecodeThreads) {
        const int64_t c = i < dk ? j * dk + i : KD + j * dk + (i - dk);
        for (int64_t t = 0; t + 1 < K - 1; ++t) cstate[t * CD + c] = cstate[(t + 1) * CD + c];
        if (K > 1) cstate[(K - 2) * CD + c] = u[c];
      }
    }
  }
  // 2. L2 norms of q and k (eps 1e-6), q also scaled.
  float pq = 0.0f, pk = 0.0f;
  for (int64_t i = tid; i < dk; i += kDecodeThreads) {
    pq += sq[i] * sq[i];
    pk += sk[i] * sk[i];
  }
  const float nq = dn_block_sum(pq, red32);
  const float nk = dn_block_sum(pk, red32);
  const float fq = a.q_scale / sqrtf(nq + 1e-6f), fk = 1.0f / sqrtf(nk + 1e-6f);
  __syncthreads();
  for (int64_t i = tid; i < dk; i += kDecodeThreads) {
    sq[i] *= fq;
    sk[i] *= fk;
  }
  __syncthreads();

  // 3. the value head's columns c0 .. c0 + Cb - 1: decay, kv readout, delta, update, output.
  const int part = tid / static_cast<int>(Cb), c = tid % static_cast<int>(Cb);
  const bool active = part < P;
  float* Sh = S + h * dk * dv + c0;
  const float decay = sgate[1], beta = sgate[0];
  float s[kDecodeMaxRows];
  float kv = 0.0f;
  if (active) {
#pragma unroll
    for (int i = 0; i < kDecodeMaxRows; ++i) {
      const int64_t row = part + static_cast<int64_t>(i) * P;
      if (row < dk) {
        s[i] = Sh[row * dv + c] * decay;
        kv = fmaf(s[i], sk[row], kv);
      }
    }
    red[part * Cb + c] = kv;
  }
  __syncthreads();
  float o = 0.0f;
  if (active) {
    float kv_all = 0.0f;
    for (int p = 0; p < P; ++p) kv_all += red[p * Cb + c];
    const float delta = beta * (sv[c] - kv_all);
#pragma unroll
    for (int i = 0; i < kDecodeMaxRows; ++i) {
      const int64_t row = part + static_cast<int64_t>(i) * P;
      if (row < dk) {
        s[i] = fmaf(sk[row], delta, s[i]);
        Sh[row * dv + c] = s[i];
        o = fmaf(s[i], sq[row], o);
      }
    }
    red2[part * Cb + c] = o;
  }
  __syncthreads();
  float out = 0.0f;
  const bool writer = active && part == 0;
  if (writer)
    for (int p = 0; p < P; ++p) out += red2[p * Cb + c];
  const float ss = dn_block_sum(writer ? out * out : 0.0f, red32);
  const int64_t e0 = seq * Hv * dv + h * dv;  // the head's outputs in y
  // 4. the gated RMSNorm over the head's dv outputs, and their q8 blocks.
  if (S_ == 1) {
    if (writer) {
      const float scale = 1.0f / sqrtf(ss / static_cast<float>(dv) + a.eps);
      const int64_t e = e0 + c;
      const float v = out * scale * a.norm_w[c] * dn_silu(a.z[e]);
      a.y[e] = v;
      // dv % 32 == 0: these threads are whole warps, each holding one q8 block of y.
      if (a.yq) warp_q8_block(v, true, a.yq + e, a.yds + 2 * (e / 32), static_cast<int>(c & 31));
    }
    return;
  }
  // Several blocks per head: each leaves its raw outputs in y and its sum of squares in
  // norm_part; the last of the head's blocks to finish (a count per (sequence, value head), set
  // back to 0) adds the S sums in column order and normalises the whole head.
  if (writer) a.y[e0 + c0 + c] = out;
  if (tid == 0) a.norm_part[(seq * Hv + h) * S_ + cs] = ss;
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    int* cnt = a.norm_cnt + seq * Hv + h;
    const int before = atomicAdd(cnt, 1);
    last_norm = before == static_cast<int>(S_) - 1;
    if (last_norm) *cnt = 0;
  }
  __syncthreads();
  if (!last_norm) return;
  __threadfence();
  float tot = 0.0f;
  for (int64_t i = 0; i < S_; ++i)
    tot += reinterpret_cast<volatile const float*>(a.norm_part)[(seq * Hv + h) * S_ + i];
  const float scale = 1.0f / sqrtf(tot / static_cast<float>(dv) + a.eps);
  for (int64_t i = tid; i < dv; i += kDecodeThreads) {  // dv % 32 == 0 with yq: whole warps
    const int64_t e = e0 + i;
    const float raw = reinterpret_cast<volatile const float*>(a.y)[e];
    const float v = raw * scale * a.norm_w[i] * dn_silu(a.z[e]);
    a.y[e] = v;
    if (a.yq) warp_q8_block(v, true, a.yq + e, a.yds + 2 * (e / 32), static_cast<int>(i & 31));
  }
}

}  // namespace rs::cuda::dn
