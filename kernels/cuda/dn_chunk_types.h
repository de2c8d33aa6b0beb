// Shapes and arguments of the chunked delta rule kernel (dn_chunk_kernel.cuh), in a plain header
// for the launcher, cuda_ops and the tests.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rs::cuda::dn {

constexpr int kChunk = 64;         // tokens per chunk (the CPU's C)
constexpr int kChunkCols = 64;     // value columns per block
constexpr int kChunkThreads = 128; // a thread pair per column
constexpr int kChunkMaxDk = 128;   // even dk up to this

struct ChunkArgs {
  const float* q = nullptr;     // [T][Hk][dk] (L2-normalised, scaled)
  const float* k = nullptr;     // [T][Hk][dk]
  const float* v = nullptr;     // [T][Hv][dv]
  const float* g = nullptr;     // [T][Hv] log decay
  const float* beta = nullptr;  // [T][Hv]
  float* S = nullptr;           // [Hv][dk][dv], updated
  float* out = nullptr;         // [T][Hv][dv]
  int64_t T = 0, Hk = 0, Hv = 0, dk = 0, dv = 0;
};

// Dynamic shared memory of one block: K and Q rows padded to dk + 1 floats (dk = 128: 97.5 KiB,
// within the 99 KiB that sm_86 and later grant on request).
inline size_t chunk_smem_bytes(int64_t dk) {
  const int64_t ld = dk + 1, qv = ld > kChunkCols ? ld : kChunkCols;
  return sizeof(float) * static_cast<size_t>(kChunk * ld + kChunk * qv + 2 * kChunk * kChunk + 4 * kChunk);
}

}  // namespace rs::cuda::dn
