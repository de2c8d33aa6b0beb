// KV-cache stores: n_tok rows of n floats into a cache of type F32, F16 (round to nearest even)
// or Q8_0 (blocks of 32: d = fp16(amax / 127), q = clamp(rint(x / d)), as quantize_row_ref),
// token t to row pos[t] of its cache: dst[pair], or dst_tok[pair][t] for the tokens of a decode
// batch, each of its own sequence. Up to two (source, cache) pairs per launch (K and V), the
// pair chosen by blockIdx.y. Compiled by nvcc (cuda_glue.cu) and by g++ for the SIMT emulator
// (tests/cuda/kv_store_emu_test.cc).
#pragma once

#include <cstdint>

#include "kernels/cuda/simt.h"

namespace rs::cuda::glue {

constexpr int kKvStoreThreads = 256;

struct KvStoreArgs {
  const float* src[2] = {nullptr, nullptr};  // [n_tok][n] each
  uint8_t* dst[2] = {nullptr, nullptr};      // cache bases
  uint8_t* const* dst_tok[2] = {nullptr, nullptr};  // or per token (device arrays [n_tok])
  int64_t n_tok = 0, n = 0;
  size_t row_bytes = 0;
  const int64_t* pos = nullptr;  // [n_tok] device
};

// Row pos[r] of token r's cache for pair w.
RS_DEVICE uint8_t* kv_row_at(const KvStoreArgs& a, int w, int64_t r) {
  uint8_t* base = a.dst_tok[w] ? a.dst_tok[w][r] : a.dst[w];
  return base + a.pos[r] * a.row_bytes;
}

// F32 / F16: a thread per value; grid (ceil(n_tok * n / threads), pairs).
RS_KERNEL void RS_LAUNCH_BOUNDS(kKvStoreThreads) kv_store_f32_kernel(const KvStoreArgs a) {
  RS_PDL_ENTRY();
  const int w = static_cast<int>(blockIdx.y);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kKvStoreThreads + threadIdx.x;
  if (i >= a.n_tok * a.n) return;
  const int64_t r = i / a.n, c = i % a.n;
  reinterpret_cast<float*>(kv_row_at(a, w, r))[c] = a.src[w][i];
}

RS_KERNEL void RS_LAUNCH_BOUNDS(kKvStoreThreads) kv_store_f16_kernel(const KvStoreArgs a) {
  RS_PDL_ENTRY();
  const int w = static_cast<int>(blockIdx.y);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kKvStoreThreads + threadIdx.x;
  if (i >= a.n_tok * a.n) return;
  const int64_t r = i / a.n, c = i % a.n;
  reinterpret_cast<__half*>(kv_row_at(a, w, r))[c] = __float2half_rn(a.src[w][i]);
}

// Q8_0: a warp per block of 32 values; grid (ceil(n_tok * n / 32 / warps per block), pairs).
RS_KERNEL void RS_LAUNCH_BOUNDS(kKvStoreThreads) kv_store_q8_kernel(const KvStoreArgs a) {
  RS_PDL_ENTRY();
  const int w = static_cast<int>(blockIdx.y);
  const int64_t nb = a.n / 32;
  const int64_t blk =
      static_cast<int64_t>(blockIdx.x) * (kKvStoreThreads / 32) + static_cast<int64_t>(threadIdx.x / 32);
  const int lane = static_cast<int>(threadIdx.x & 31);
  if (blk >= a.n_tok * nb) return;  // whole warps leave together
  const int64_t r = blk / nb, b = blk % nb;
  const float x = a.src[w][r * a.n + b * 32 + lane];
  float amax = fabsf(x);
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, o));
  const __half dh = __float2half_rn(amax / 127.0f);
  const float d = __half2float(dh);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  int q = __float2int_rn(x * id);
  q = q < -127 ? -127 : (q > 127 ? 127 : q);
  uint8_t* block = kv_row_at(a, w, r) + b * 34;  // {fp16 d, int8 qs[32]}
  if (lane == 0) {
    const unsigned short bits = __half_as_ushort(dh);
    block[0] = static_cast<uint8_t>(bits & 0xFF);
    block[1] = static_cast<uint8_t>(bits >> 8);
  }
  block[2 + lane] = static_cast<uint8_t>(static_cast<int8_t>(q));
}

}  // namespace rs::cuda::glue
