// Prefill matmul on tensor cores and the embedding row lookup.
//
// matmul_tc: Y[t][r] = sum_c W[r][c] X[t][c]. A thread block (4 warps) computes a 64 tokens x
// 64 rows tile of Y. Per step of 64 columns it dequantises the 64x64 weight tile (each thread
// 32 consecutive weights of one row) and converts the 64x64 activation tile into f16 shared
// memory, then each warp runs 2x2 16x16x16 wmma products (f16 in, f32 accumulate) on its 32x32
// quarter. Single-stage (no cp.async pipeline yet): correctness first.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_launch.cuh"
#include "kernels/cuda/cuda_quant.cuh"

namespace rs::cuda::detail {
namespace {

constexpr int kBM = 64, kBN = 64, kBK = 64, kPad = 8, kLd = kBK + kPad;
constexpr int kThreads = 128;

struct __align__(128) TileSmem {
  union {
    struct {
      __half a[kBM][kLd];  // activations: [token][k]
      __half b[kBN][kLd];  // weights:     [row][k]
    } in;
    float c[kBM][kBN + 4];  // result staging
  };
};

template <GgmlType T>
__global__ void __launch_bounds__(kThreads)
    matmul_tc_kernel(const uint8_t* __restrict__ w, size_t row_stride, int64_t cols, int64_t rows,
                     const float* __restrict__ x, int64_t ldx, int64_t n_tok, float* __restrict__ y,
                     int64_t ldy) {
  RS_PDL_ENTRY();
  using namespace nvcuda;
  __shared__ TileSmem sm;
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBN;  // weight rows
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM;  // tokens
  const int wm = warp >> 1, wn = warp & 1;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  const int lr = tid >> 1, lh = tid & 1;  // this thread's tile row and 32-wide half
  for (int64_t k0 = 0; k0 < cols; k0 += kBK) {
    const int64_t kk = k0 + 32 * lh;
    // Activations.
    {
      const int64_t t = m0 + lr;
      __half* dst = &sm.in.a[lr][32 * lh];
      if (t < n_tok && kk < cols) {
        const float* src = x + t * ldx + kk;
#pragma unroll
        for (int i = 0; i < 32; ++i) dst[i] = __float2half_rn(src[i]);
      } else {
#pragma unroll
        for (int i = 0; i < 32; ++i) dst[i] = __float2half_rn(0.0f);
      }
    }
    // Weights.
    {
      const int64_t r = n0 + lr;
      __half* dst = &sm.in.b[lr][32 * lh];
      if (r < rows && kk < cols) {
        float v[32];
        dequant32<T>(w + r * row_stride, kk, v);
#pragma unroll
        for (int i = 0; i < 32; ++i) dst[i] = __float2half_rn(v[i]);
      } else {
#pragma unroll
        for (int i = 0; i < 32; ++i) dst[i] = __float2half_rn(0.0f);
      }
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kBK; ks += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &sm.in.a[wm * 32 + i * 16][ks], kLd);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &sm.in.b[wn * 32 + j * 16][ks], kLd);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&sm.c[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], kBN + 4,
                              wmma::mem_row_major);
  __syncthreads();
  for (int i = tid; i < kBM * kBN; i += kThreads) {
    const int m = i / kBN, n = i % kBN;
    if (m0 + m < n_tok && n0 + n < rows) y[(m0 + m) * ldy + n0 + n] = sm.c[m][n];
  }
}

// One thread per 32 elements of one token's row.
template <GgmlType T>
__global__ void embedding_kernel(const uint8_t* __restrict__ w, size_t row_stride, int64_t cols,
                                 const int32_t* __restrict__ ids, int64_t n_tok, int64_t n_rows,
                                 float* __restrict__ out) {
  RS_PDL_ENTRY();
  const int64_t pieces = cols / 32;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= pieces * n_tok) return;
  const int64_t t = i / pieces, k0 = (i % pieces) * 32;
  const int32_t id = ids[t];
  float* o = out + t * cols + k0;
  if (id < 0 || id >= n_rows) {  // out of range: NaN marks it (the host checks ids first)
#pragma unroll
    for (int j = 0; j < 32; ++j) o[j] = __int_as_float(0x7FC00000);
    return;
  }
  float v[32];
  dequant32<T>(w + static_cast<int64_t>(id) * row_stride, k0, v);
#pragma unroll
  for (int j = 0; j < 32; ++j) o[j] = v[j];
}

template <GgmlType T>
cudaError_t launch_tc(const uint8_t* w, size_t row_stride, int64_t cols, int64_t rows,
                      const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy,
                      cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((rows + kBN - 1) / kBN),
                  static_cast<unsigned>((n_tok + kBM - 1) / kBM));
  detail::launch_kernel(matmul_tc_kernel<T>, grid, kThreads, 0, s, w, row_stride, cols, rows, x,
                        ldx, n_tok, y, ldy);
  return cudaGetLastError();
}

template <GgmlType T>
cudaError_t launch_emb(const uint8_t* w, size_t row_stride, int64_t cols, const int32_t* ids,
                       int64_t n_tok, int64_t n_rows, float* out, cudaStream_t s) {
  const int64_t n = cols / 32 * n_tok;
  detail::launch_kernel(embedding_kernel<T>, static_cast<unsigned>((n + 127) / 128), 128, 0, s, w,
                        row_stride, cols, ids, n_tok, n_rows, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_matmul_tc(GgmlType t, const uint8_t* w, size_t row_stride, int64_t cols,
                             int64_t rows, const float* x, int64_t ldx, int64_t n_tok, float* y,
                             int64_t ldy, cudaStream_t s) {
  RS_CUDA_TYPE_SWITCH(t, return launch_tc<kT>(w, row_stride, cols, rows, x, ldx, n_tok, y, ldy, s))
  return cudaErrorInvalidValue;
}

cudaError_t launch_embedding(GgmlType t, const uint8_t* w, size_t row_stride, int64_t cols,
                             const int32_t* ids, int64_t n_tok, int64_t n_rows, float* out,
                             cudaStream_t s) {
  RS_CUDA_TYPE_SWITCH(t, return launch_emb<kT>(w, row_stride, cols, ids, n_tok, n_rows, out, s))
  return cudaErrorInvalidValue;
}

}  // namespace rs::cuda::detail
