// The GPU sampler's per-row inputs (plain structs shared by the kernel, its launcher, the host
// packing in sample_pack.h and the tests), kept free of CUDA and of the emulator.
#pragma once

#include <cstdint>

namespace rs::cuda::sampling {

constexpr int kThreads = 512;  // one block of kThreads per logits row

// One row's parameters (from SamplerParams; u = philox_uniform(seed, step)).
struct RowParams {
  float temperature;
  int32_t top_k;
  float top_p;
  float min_p;
  float presence, frequency, repetition;
  int32_t pen_begin, pen_end;    // range in the penalty entries
  int32_t bias_begin, bias_end;  // range in the bias entries
  double u;
};
// A distinct token of the sequence so far (TokenCounts::Entry).
struct PenEntry {
  int32_t token;
  int32_t in_prompt;
  int32_t out_count;
};
struct BiasEntry {
  int32_t token;
  float bias;
};

}  // namespace rs::cuda::sampling
