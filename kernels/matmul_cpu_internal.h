// Private to kernels/matmul_cpu.cc and its tests/bench: path selection and the activation
// quantisers of the fast CPU matmul.
#pragma once

#include <cstdint>

#include "kernels/formats.h"
#include "kernels/quant_blocks.h"

namespace rs::matmul_internal {

// What the activations of a weight type are converted to before the dot products.
enum class ActKind { kF32, kQ8x32, kQ8x256 };
ActKind act_kind(GgmlType t);

// True when the CPU has AVX2, FMA and F16C (checked once at run time).
bool cpu_has_avx2();
// Forces the scalar path (tests; also the environment variable RS_FORCE_SCALAR=1). The AVX2
// path is used only when the CPU has it and it is not forced off.
void set_force_scalar(bool on);
bool using_avx2();

// x[n] (n a multiple of 32 / 256) to q8 blocks: d = max|x| / 127, qs = round-to-even(x / d).
// Deterministic and identical on both paths; tests rebuild the activations the fast path sees.
void quantize_act_q8x32(const float* x, qblk::ActQ8x32* out, int64_t n);
void quantize_act_q8x256(const float* x, qblk::ActQ8x256* out, int64_t n);

}  // namespace rs::matmul_internal
