// Row moves of the distributed step's device path (worker/model_distributed.cc with the rows on
// the GPU, NCCL data plane): packing the rows a peer gets, and the owner's combine of the slot
// rows its peers returned. Compiled by nvcc (cuda_glue.cu) and by g++ for the SIMT emulator
// (tests/cuda/row_ops_emu_test.cc).
#pragma once

#include <cstdint>

#include "kernels/cuda/simt.h"

namespace rs::cuda::glue {

constexpr int kRowOpsThreads = 256;

// Row dst_rows[i] of dst (dst_rows == nullptr: row i) = scale[i] * row rows[i] of src (scale ==
// nullptr: 1, a plain copy), `width` floats a row. Grid (n, ceil(width / kRowOpsThreads)).
RS_KERNEL void RS_LAUNCH_BOUNDS(kRowOpsThreads)
    gather_rows_kernel(float* dst, const int32_t* dst_rows, const float* src, const int32_t* rows,
                       const float* scale, int64_t width) {
  RS_PDL_ENTRY();
  const int64_t i = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kRowOpsThreads + threadIdx.x;
  if (c >= width) return;
  const float v = src[static_cast<int64_t>(rows[i]) * width + c];
  const int64_t d = dst_rows ? static_cast<int64_t>(dst_rows[i]) : i;
  dst[d * width + c] = scale ? scale[i] * v : v;
}

// The owner's end of an MoE layer: for token t < n_tok and h < H,
//   acc = rows[slot_row[t*k] * H + h] + ... + rows[slot_row[t*k + k-1] * H + h]  (slot order)
//   acc += ffn[t*H + h]  (the shared expert, or a dense FFN when k == 0; ffn may be null)
//   hidden[t*H + h] += acc
// the float operations of the host path (SumExpertSlots, the shared add, the residual add), in
// the same order. Grid (n_tok, ceil(H / kRowOpsThreads)).
RS_KERNEL void RS_LAUNCH_BOUNDS(kRowOpsThreads)
    combine_slots_kernel(float* hidden, const float* rows, const int32_t* slot_row,
                         const float* ffn, int64_t k, int64_t H) {
  RS_PDL_ENTRY();
  const int64_t t = blockIdx.x;
  const int64_t h = static_cast<int64_t>(blockIdx.y) * kRowOpsThreads + threadIdx.x;
  if (h >= H) return;
  float acc = 0.0f;
  if (k > 0) {
    acc = rows[static_cast<int64_t>(slot_row[t * k]) * H + h];
    for (int64_t j = 1; j < k; ++j) acc += rows[static_cast<int64_t>(slot_row[t * k + j]) * H + h];
    if (ffn) acc += ffn[t * H + h];
  } else if (ffn) {
    acc = ffn[t * H + h];
  }
  hidden[t * H + h] += acc;
}

}  // namespace rs::cuda::glue
