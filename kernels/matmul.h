// Matrix-vector / matrix-matrix products of a quantised weight with f32 activations.
//
// Weights follow GGUF: a matrix with ne0 = cols (contiguous, the input dimension) and
// ne1 = rows (the output dimension); row r starts at data + r * row_stride.
//   Y[t][r] = sum_c W[r][c] * X[t][c]     for t < n_tok, r < rows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kernels/formats.h"

namespace rs {

struct WeightView {
  GgmlType type = GgmlType::F32;
  const void* data = nullptr;
  int64_t cols = 0;         // ne0: input features
  int64_t rows = 0;         // ne1: output features
  size_t row_stride = 0;    // bytes between rows (row_bytes(type, cols) for a dense matrix)

  const uint8_t* row(int64_t r) const { return static_cast<const uint8_t*>(data) + r * row_stride; }
  // Rows [r0, r0 + n) as a view (an expert's slice of a stacked 3-D tensor, a shard).
  WeightView slice_rows(int64_t r0, int64_t n) const {
    WeightView v = *this; v.data = row(r0); v.rows = n; return v;
  }
};

// Reference: each row dequantised exactly to f32 (dequantize_row_ref), f32 dot in plain order.
// X is [n_tok][ldx], Y is [n_tok][ldy].
void matmul_ref(const WeightView& w, const float* x, int64_t ldx, int64_t n_tok, float* y,
                int64_t ldy);

// Fast CPU path: activations converted once per call into the format's partner (q8 blocks for
// the integer formats, f32/f16 for the float ones) and reused by every row; rows split over
// n_threads threads of the kernels' pool; AVX2/FMA/F16C with a runtime check and a scalar
// fallback.
void matmul_cpu(const WeightView& w, const float* x, int64_t ldx, int64_t n_tok, float* y,
                int64_t ldy, int n_threads);

// One product of a batch: Y[t][r] = sum_c W[r][c] X[row(t)][c] for t < n_tok, r < w.rows,
// where row(t) = x_rows ? x_rows[t] : t (a gather of token rows, e.g. the tokens routed to one
// expert). X has x_n rows of stride ldx; Y rows have stride ldy.
struct MatmulTask {
  WeightView w;
  const float* x = nullptr;
  int64_t ldx = 0;
  int64_t x_n = 0;                  // rows of X that exist (converted once each)
  const int32_t* x_rows = nullptr;  // optional gather, n_tok entries in [0, x_n)
  int64_t n_tok = 0;
  float* y = nullptr;
  int64_t ldy = 0;
};

// Runs a batch of independent products in one parallel region: activations are converted once
// per distinct (x, ldx, cols, format kind) and token row, however many tasks read them (q, k, v
// and gate of one layer; the gate and up of every selected expert), then every task's rows are
// split over the threads. Each (row, token) value is bit-identical to what matmul_cpu gives for
// the same row and activation row, whatever the batch, thread count or gather.
void matmul_cpu_batch(const MatmulTask* tasks, int64_t n_tasks, int n_threads);

// The CPU kernels' thread pool (matmul_cpu, matmul_cpu_batch and the ops in ops_cpu.cc run on
// it). cpu_parallel_for calls f(i) once for every i < n, on the caller and up to n_threads - 1
// pool workers, and returns when all are done. Work items are claimed one at a time from a
// shared counter, so a worker that the OS has not scheduled yet costs nothing: the caller takes
// the items itself and only waits for items already in progress. Idle workers spin for a few
// microseconds, then yield the core, then sleep. Nested calls (and a second caller while the
// pool is busy) run inline.
void cpu_parallel_for_raw(int n_threads, int64_t n, void (*fn)(void*, int64_t), void* ctx);
template <typename F>
void cpu_parallel_for(int n_threads, int64_t n, F&& f) {
  using Fn = std::remove_reference_t<F>;
  cpu_parallel_for_raw(n_threads, n, [](void* c, int64_t i) { (*static_cast<Fn*>(c))(i); },
                       const_cast<void*>(static_cast<const void*>(&f)));
}

// Dot product of one quantised row (n elements) with an f32 vector, fast path (for tests).
float vec_dot_cpu(GgmlType t, const void* row, const float* x, int64_t n);

}  // namespace rs
