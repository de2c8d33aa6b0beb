// Arguments of the dense FFN's fused up kernel (ffn_up_kernel.cuh), in a plain header that the
// launcher, cuda_ops.cc and the tests include without CUDA or the emulator.
//
// A decode step's FFN was four launches (the gate/up matvec pair, SwiGLU, the quantiser of the
// down projection's activations, the down matvec); with this kernel it is two: h = silu(gate x)
// * (up x) and h's q8 blocks in one launch, then the down matvec reading them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rs::cuda::ffnup {

// 16 warps of 2 gate + 2 up rows (8 warps of 4 + 4 ran at half the plain matvec's bandwidth on
// the H200; this is better but still slower than the matvec pair: 27b 85.6 against 97.8 tok/s).
constexpr int kThreads = 512;
constexpr int kTile = 32;  // rows of gate (and up) per block: one q8 block of h
constexpr int kRowsPerWarp = kTile / (kThreads / 32);
constexpr int kMaxTokens = 8;

struct Args {
  const uint8_t* gate = nullptr;  // I rows of H weights, row_stride bytes apart
  const uint8_t* up = nullptr;    // the same shape and type
  size_t row_stride = 0;
  int64_t I = 0, H = 0;
  int n_tok = 0;                  // 1..kMaxTokens
  // Activations: f32 [n_tok][ldx] and, for integer formats, q8 [n_tok][H] + {d, sum} blocks.
  const float* x = nullptr;
  int64_t ldx = 0;
  const int8_t* xq = nullptr;
  const float* xds = nullptr;
  // Output h [n_tok][ldh] and, when hq != nullptr (I a multiple of 32), its q8 blocks
  // hq [n_tok][I], hds [n_tok][I / 32][2] (quantize_act's layout).
  float* h = nullptr;
  int64_t ldh = 0;
  int8_t* hq = nullptr;
  float* hds = nullptr;
};

inline int64_t blocks(const Args& a) { return (a.I + kTile - 1) / kTile; }

}  // namespace rs::cuda::ffnup
