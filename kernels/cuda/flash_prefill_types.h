// Shapes and arguments of the flash prefill attention kernel (flash_prefill_kernel.cuh), in a
// plain header for the launcher, cuda_ops and the tests.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rs::cuda::flash {

constexpr int kFlashThreads = 256;  // 8 warps
constexpr int kRowsPerWarp = 4;     // query rows (token, head) per warp
constexpr int kFlashRows = kFlashThreads / 32 * kRowsPerWarp;
constexpr int kFlashBK = 16;        // cache positions per tile
constexpr int kFlashMaxHd = 256;

// Query tokens per block: all R heads of a token stay in one block.
inline constexpr int64_t tokens_per_block(int64_t R) { return R >= kFlashRows ? 1 : kFlashRows / R; }

struct PrefillArgs {
  const float* q = nullptr;  // [T][nh][hd]
  int64_t T = 0, nh = 0, nkv = 0, hd = 0;
  const uint8_t* k = nullptr;  // cache rows: position p at k + p * k_stride, heads interleaved
  const uint8_t* v = nullptr;
  size_t k_stride = 0, v_stride = 0;
  int64_t n_past = 0;
  float scale = 1.0f;
  float* out = nullptr;  // [T][nh][hd]
};

}  // namespace rs::cuda::flash
