// Arguments of the fused router kernel (router_kernel.cuh), in a plain header that the launcher,
// cuda_ops.cc and the tests include without CUDA or the emulator.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rs::cuda::detail {

constexpr int kRouterMaxExperts = 1024;
constexpr int kRouterWarps = 8;  // rows per block of the fused router

struct RouterArgs {
  const uint8_t* w = nullptr;     // E rows of H F32 weights
  size_t row_stride = 0;
  const uint8_t* sh = nullptr;    // the shared expert's gate row (F32), or nullptr
  int64_t E = 0, H = 0, k = 0, n_tok = 0;
  const float* x = nullptr;       // [n_tok][H]
  float* logits = nullptr;        // [n_tok][E]
  float* sh_logit = nullptr;      // [n_tok]
  int32_t* ids = nullptr;         // [n_tok][k]
  float* weights = nullptr;       // [n_tok][k]
  int* counter = nullptr;         // 0 before and after
};

}  // namespace rs::cuda::detail
