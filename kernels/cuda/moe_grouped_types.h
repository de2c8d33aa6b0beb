// Shapes and arguments of the grouped MoE prefill kernels (moe_grouped_kernel.cuh), in a plain
// header for the launchers, cuda_ops and the tests.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rs::cuda::moe {

constexpr int kSortThreads = 1024;
constexpr int kTileM = 32;   // slots per tile
constexpr int kTileN = 64;   // weight rows per tile
constexpr int kTileK = 32;   // columns per step (one dequant32 unit)
constexpr int kGemmThreads = 256;
constexpr int kCombineThreads = 256;

struct GemmArgs {
  const uint8_t* w = nullptr;  // expert 0's matrix; expert e at w + e * expert_stride
  size_t expert_stride = 0, row_stride = 0;
  int64_t cols = 0, rows = 0;  // per expert
  const float* a = nullptr;    // activations, row stride lda
  int64_t lda = 0;
  bool by_token = true;        // A row of position p: perm[p] / k (true) or p (false)
  const int32_t* perm = nullptr;
  int64_t k = 1;
  const int32_t* off = nullptr;       // [E + 1]
  const int32_t* tile_off = nullptr;  // [E + 1]
  int64_t E = 0;
  float* y = nullptr;  // [positions][ldy]
  int64_t ldy = 0;
};

// Upper bound of the tiles of n_slots slots over E experts (the gemm grid's y).
inline int64_t max_tiles(int64_t n_slots, int64_t E) { return n_slots / kTileM + E; }

}  // namespace rs::cuda::moe
