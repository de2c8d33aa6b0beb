// Kernels of cuda_glue.h (launchers; argument checks are in cuda_glue.cc).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cuda/attn_prep_kernel.cuh"
#include "kernels/cuda/cuda_glue_launch.h"
#include "kernels/cuda/cuda_launch.cuh"
#include "kernels/cuda/kv_store_kernel.cuh"
#include "kernels/cuda/norm_q8_kernel.cuh"
#include "kernels/cuda/row_ops_kernel.cuh"

namespace rs::cuda::glue {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__device__ __forceinline__ float sigmoid_d(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float silu_d(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float softplus_d(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

__global__ void add_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t n) {
  RS_PDL_ENTRY();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] += x[i];
}

__global__ void mul_sigmoid_kernel(float* __restrict__ o, const float* __restrict__ g, int64_t n) {
  RS_PDL_ENTRY();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) o[i] *= sigmoid_d(g[i]);
}

__global__ void dn_gates_kernel(const float* __restrict__ b, const float* __restrict__ al,
                                const float* __restrict__ ssm_a, const float* __restrict__ dt_bias,
                                int64_t n, int64_t Hv, float* __restrict__ g,
                                float* __restrict__ beta) {
  RS_PDL_ENTRY();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t h = i % Hv;
  beta[i] = sigmoid_d(b[i]);
  g[i] = ssm_a[h] * softplus_d(al[i] + dt_bias[h]);
}

__global__ void swiglu_rows_kernel(const float* __restrict__ gate, int64_t ldg,
                                   const float* __restrict__ up, int64_t ldu, int64_t rows,
                                   int64_t n, float* __restrict__ out) {
  RS_PDL_ENTRY();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * n) return;
  const int64_t r = i / n, c = i % n;
  out[i] = silu_d(gate[r * ldg + c]) * up[r * ldu + c];
}

__global__ void add_sigmoid_scaled_kernel(float* __restrict__ out, const float* __restrict__ d,
                                          const float* __restrict__ sg, int64_t n_tok,
                                          int64_t H) {
  RS_PDL_ENTRY();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_tok * H) return;
  out[i] += sigmoid_d(sg[i / H]) * d[i];
}

// Argmax: (value, index) pairs, the larger value winning and ties going to the lower index;
// index n means "none yet" (only -inf / NaN seen: such a row's answer is 0).
__device__ __forceinline__ void argmax_take(float ov, int64_t oi, float* v, int64_t* i) {
  if (ov > *v || (ov == *v && oi < *i)) {
    *v = ov;
    *i = oi;
  }
}
__device__ __forceinline__ void argmax_warp(float* v, int64_t* i) {
  for (int o = 16; o > 0; o >>= 1)
    argmax_take(__shfl_xor_sync(0xFFFFFFFFu, *v, o), __shfl_xor_sync(0xFFFFFFFFu, *i, o), v, i);
}
// The block's pair (valid in every thread of warp 0).
__device__ __forceinline__ void argmax_block(float* v, int64_t* i) {
  __shared__ float sv[kThreads / 32];
  __shared__ int64_t si[kThreads / 32];
  argmax_warp(v, i);
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  if (lane == 0) {
    sv[warp] = *v;
    si[warp] = *i;
  }
  __syncthreads();
  if (warp == 0) {
    *v = lane < kThreads / 32 ? sv[lane] : -FLT_MAX;
    *i = lane < kThreads / 32 ? si[lane] : INT64_MAX;
    argmax_warp(v, i);
  }
}

// Grid (chunks, rows): block (c, r) takes elements [c * chunk, (c + 1) * chunk) of row r, every
// thread with several loads in flight (a 248K vocabulary in one block per row was ~200 us of
// load latency). chunks == 1: writes ids[r]; else its pair into part[r][c] for the merge.
__global__ void __launch_bounds__(kThreads)
    argmax_chunk_kernel(const float* __restrict__ x, int64_t n, int64_t chunk,
                        int32_t* __restrict__ ids, float2* __restrict__ part) {
  RS_PDL_ENTRY();
  const int64_t r = blockIdx.y, c = blockIdx.x, chunks = gridDim.x;
  const float* row = x + r * n;
  const int64_t e1 = min(n, (c + 1) * chunk);
  float best = -FLT_MAX;
  int64_t best_i = n;
#pragma unroll 8
  for (int64_t i = c * chunk + threadIdx.x; i < e1; i += kThreads)
    argmax_take(row[i], i, &best, &best_i);
  argmax_block(&best, &best_i);
  if (threadIdx.x != 0) return;
  if (chunks == 1) {
    ids[r] = static_cast<int32_t>(best_i < n ? best_i : 0);
  } else {
    float2 p;
    p.x = best;
    p.y = __int_as_float(static_cast<int32_t>(best_i < n ? best_i : -1));
    part[r * chunks + c] = p;
  }
}
// One warp per row: merges its chunks' pairs.
__global__ void __launch_bounds__(32)
    argmax_merge_kernel(const float2* __restrict__ part, int64_t chunks, int64_t n,
                        int32_t* __restrict__ ids) {
  RS_PDL_ENTRY();
  const int64_t r = blockIdx.x;
  float best = -FLT_MAX;
  int64_t best_i = n;
  for (int64_t c = threadIdx.x; c < chunks; c += 32) {
    const float2 p = part[r * chunks + c];
    const int32_t pi = __float_as_int(p.y);
    if (pi >= 0) argmax_take(p.x, pi, &best, &best_i);
  }
  argmax_warp(&best, &best_i);
  if (threadIdx.x == 0) ids[r] = static_cast<int32_t>(best_i < n ? best_i : 0);
}

// DeltaNet: from the conv output cv [N][2*KD + VD] (q | k | v) to q, k (L2-normed per key head,
// q also scaled) and v. One warp per (token, key head); it also copies its share of v.
__global__ void __launch_bounds__(32)
    dn_prep_kernel(const float* __restrict__ cv, int64_t Hk, int64_t dk, int64_t VD,
                   float q_scale, float* __restrict__ q, float* __restrict__ k,
                   float* __restrict__ v) {
  RS_PDL_ENTRY();
  const int64_t t = blockIdx.x / Hk, h = blockIdx.x % Hk;
  const int lane = static_cast<int>(threadIdx.x);
  const int64_t KD = Hk * dk, CD = 2 * KD + VD;
  const float* src = cv + t * CD;
  float sq = 0.0f, sk = 0.0f;
  for (int64_t i = lane; i < dk; i += 32) {
    const float a = src[h * dk + i], b = src[KD + h * dk + i];
    sq += a * a;
    sk += b * b;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    sq += __shfl_xor_sync(0xFFFFFFFFu, sq, o);
    sk += __shfl_xor_sync(0xFFFFFFFFu, sk, o);
  }
  const float fq = 1.0f / sqrtf(sq + 1e-6f), fk = 1.0f / sqrtf(sk + 1e-6f);
  for (int64_t i = lane; i < dk; i += 32) {
    q[t * KD + h * dk + i] = src[h * dk + i] * fq * q_scale;
    k[t * KD + h * dk + i] = src[KD + h * dk + i] * fk;
  }
  const int64_t share = VD / Hk;
  for (int64_t i = lane; i < share; i += 32) v[t * VD + h * share + i] = src[2 * KD + h * share + i];
}

__global__ void mask_ids_kernel(float* __restrict__ x, int64_t rows, int64_t n,
                                const int32_t* __restrict__ ids, int64_t n_ids) {
  RS_PDL_ENTRY();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * n_ids) return;
  x[(i / n_ids) * n + ids[i % n_ids]] = -INFINITY;
}

}  // namespace

cudaError_t launch_mask_ids(float* x, int64_t rows, int64_t n, const int32_t* ids, int64_t n_ids,
                            cudaStream_t s) {
  if (rows * n_ids > 0)
    detail::launch_kernel(mask_ids_kernel, grid_for(rows * n_ids), kThreads, 0, s, x, rows, n, ids,
                          n_ids);
  return cudaGetLastError();
}

cudaError_t launch_attn_prep(const AttnPrepArgs& a, cudaStream_t s) {
  const int64_t blocks = a.n_tok * (a.nh + a.nkv);
  if (blocks > 0)
    detail::launch_kernel(attn_prep_kernel, static_cast<unsigned>(blocks), kAttnPrepThreads, 0, s,
                          a);
  return cudaGetLastError();
}

cudaError_t launch_gate_q8(float* y, const float* gate, int64_t n, int8_t* q, float* ds,
                          cudaStream_t s) {
  if (n > 0)
    detail::launch_kernel(gate_q8_kernel,
                          static_cast<unsigned>((n + kNormQ8Threads - 1) / kNormQ8Threads),
                          kNormQ8Threads, 0, s, y, gate, n, q, ds);
  return cudaGetLastError();
}

cudaError_t launch_swiglu_q8(float* y, const float* up, int64_t n, int8_t* q, float* ds,
                             cudaStream_t s) {
  if (n > 0)
    detail::launch_kernel(swiglu_q8_kernel,
                          static_cast<unsigned>((n + kNormQ8Threads - 1) / kNormQ8Threads),
                          kNormQ8Threads, 0, s, y, up, n, q, ds);
  return cudaGetLastError();
}

cudaError_t launch_add_rms_norm(float* hidden, const float* m, const float* w, int64_t rows,
                                int64_t n, float eps, float* y, int8_t* q, float* ds,
                                cudaStream_t s) {
  NormQ8Args a;
  a.hidden = hidden;
  a.m = m;
  a.w = w;
  a.n = n;
  a.eps = eps;
  a.y = y;
  a.q = q;
  a.ds = ds;
  if (rows > 0)
    detail::launch_kernel(add_rms_norm_q8_kernel, static_cast<unsigned>(rows), kNormRowThreads, 0,
                          s, a);
  return cudaGetLastError();
}
cudaError_t launch_gather_rows(float* dst, const int32_t* dst_rows, const float* src, const int32_t* rows,
                               const float* scale, int64_t n, int64_t width, cudaStream_t s) {
  if (n > 0 && width > 0)
    detail::launch_kernel(
        gather_rows_kernel,
        dim3(static_cast<unsigned>(n),
             static_cast<unsigned>((width + kRowOpsThreads - 1) / kRowOpsThreads)),
        kRowOpsThreads, 0, s, dst, dst_rows, src, rows, scale, width);
  return cudaGetLastError();
}

cudaError_t launch_combine_slots(float* hidden, const float* rows, const int32_t* slot_row,
                                 const float* ffn, int64_t n_tok, int64_t k, int64_t H,
                                 cudaStream_t s) {
  if (n_tok > 0 && H > 0)
    detail::launch_kernel(combine_slots_kernel,
                          dim3(static_cast<unsigned>(n_tok),
                               static_cast<unsigned>((H + kRowOpsThreads - 1) / kRowOpsThreads)),
                          kRowOpsThreads, 0, s, hidden, rows, slot_row, ffn, k, H);
  return cudaGetLastError();
}

cudaError_t launch_dn_prep(const float* cv, int64_t n_tok, int64_t Hk, int64_t dk, int64_t VD,
                           float q_scale, float* q, float* k, float* v, cudaStream_t s) {
  if (n_tok > 0)
    detail::launch_kernel(dn_prep_kernel, static_cast<unsigned>(n_tok * Hk), 32, 0, s, cv, Hk, dk,
                          VD, q_scale, q, k, v);
  return cudaGetLastError();
}

cudaError_t launch_add(float* y, const float* x, int64_t n, cudaStream_t s) {
  if (n > 0) detail::launch_kernel(add_kernel, grid_for(n), kThreads, 0, s, y, x, n);
  return cudaGetLastError();
}
cudaError_t launch_mul_sigmoid(float* o, const float* g, int64_t n, cudaStream_t s) {
  if (n > 0) detail::launch_kernel(mul_sigmoid_kernel, grid_for(n), kThreads, 0, s, o, g, n);
  return cudaGetLastError();
}
cudaError_t launch_dn_gates(const float* b, const float* al, const float* ssm_a,
                            const float* dt_bias, int64_t n_tok, int64_t Hv, float* g,
                            float* beta, cudaStream_t s) {
  const int64_t n = n_tok * Hv;
  if (n > 0)
    detail::launch_kernel(dn_gates_kernel, grid_for(n), kThreads, 0, s, b, al, ssm_a, dt_bias, n,
                          Hv, g, beta);
  return cudaGetLastError();
}
cudaError_t launch_kv_store(const float* const* src, void* const* dst, int pairs, int64_t n_tok,
                            int64_t n, int kind, size_t row_bytes, const int64_t* pos,
                            cudaStream_t s, void* const* const* dst_tok) {
  KvStoreArgs a;
  for (int i = 0; i < pairs; ++i) {
    a.src[i] = src[i];
    if (dst_tok)
      a.dst_tok[i] = reinterpret_cast<uint8_t* const*>(dst_tok[i]);
    else
      a.dst[i] = static_cast<uint8_t*>(dst[i]);
  }
  a.n_tok = n_tok;
  a.n = n;
  a.row_bytes = row_bytes;
  a.pos = pos;
  const int64_t total = n_tok * n;
  if (total <= 0 || pairs <= 0) return cudaGetLastError();
  const unsigned y = static_cast<unsigned>(pairs);
  if (kind == 0)
    detail::launch_kernel(kv_store_f32_kernel, dim3(grid_for(total), y), kKvStoreThreads, 0, s, a);
  else if (kind == 1)
    detail::launch_kernel(kv_store_f16_kernel, dim3(grid_for(total), y), kKvStoreThreads, 0, s, a);
  else
    detail::launch_kernel(kv_store_q8_kernel, dim3(grid_for(total), y), kKvStoreThreads, 0, s,
                          a);  // a warp per 32
  return cudaGetLastError();
}
cudaError_t launch_swiglu_rows(const float* gate, int64_t ldg, const float* up, int64_t ldu,
                               int64_t rows, int64_t n, float* out, cudaStream_t s) {
  const int64_t total = rows * n;
  if (total > 0)
    detail::launch_kernel(swiglu_rows_kernel, grid_for(total), kThreads, 0, s, gate, ldg, up, ldu,
                          rows, n, out);
  return cudaGetLastError();
}
cudaError_t launch_add_sigmoid_scaled(float* out, const float* d, const float* sg, int64_t n_tok,
                                      int64_t H, cudaStream_t s) {
  const int64_t total = n_tok * H;
  if (total > 0)
    detail::launch_kernel(add_sigmoid_scaled_kernel, grid_for(total), kThreads, 0, s, out, d, sg,
                          n_tok, H);
  return cudaGetLastError();
}
cudaError_t launch_argmax_rows(const float* x, int64_t rows, int64_t n, int32_t* ids, void* ws,
                               size_t ws_bytes, cudaStream_t s) {
  if (rows <= 0) return cudaGetLastError();
  int64_t chunks = argmax_chunks(n);
  if (ws == nullptr || ws_bytes < argmax_workspace_bytes(rows, n)) chunks = 1;
  const int64_t chunk = (n + chunks - 1) / chunks;
  float2* part = static_cast<float2*>(ws);
  detail::launch_kernel(argmax_chunk_kernel,
                        dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(rows)), kThreads,
                        0, s, x, n, chunk, ids, part);
  if (chunks > 1)
    detail::launch_kernel(argmax_merge_kernel, static_cast<unsigned>(rows), 32, 0, s,
                          static_cast<const float2*>(part), chunks, n, ids);
  return cudaGetLastError();
}

}  // namespace rs::cuda::glue
