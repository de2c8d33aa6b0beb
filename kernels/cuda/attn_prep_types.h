// Arguments of attention's fused q/k preparation kernel (attn_prep_kernel.cuh), in a plain
// header that the launcher, cuda_glue.cc and the tests include without CUDA or the emulator.
#pragma once

#include <cstdint>

namespace rs::cuda::glue {

constexpr int kAttnPrepThreads = 128;
constexpr int kAttnPrepMaxDim = 1024;  // head_dim limit (shared memory)

struct AttnPrepArgs {
  const float* qg = nullptr;   // [n_tok][nh][2][hd]: per head q then gate
  float* q = nullptr;          // [n_tok][nh][hd] out
  float* gate = nullptr;       // [n_tok][nh][hd] out
  float* k = nullptr;          // [n_tok][nkv][hd] in place
  const float* q_norm = nullptr, *k_norm = nullptr;  // [hd]
  const int64_t* pos = nullptr;  // [n_tok]
  int64_t n_tok = 0, nh = 0, nkv = 0, hd = 0, n_rot = 0;
  float eps = 1e-6f, theta = 10000.0f;
};

}  // namespace rs::cuda::glue
