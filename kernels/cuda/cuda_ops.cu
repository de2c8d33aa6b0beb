// Element-wise and per-row ops of kernels/ops.h on the GPU: RMSNorm (plain and gated), L2 norm,
// NeoX RoPE, causal conv1d + SiLU with state, the gated delta rule, SwiGLU, router top-k.
#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_launch.cuh"
#include "kernels/cuda/router_kernel.cuh"

namespace rs::cuda::detail {
namespace {

__device__ __forceinline__ float silu_d(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

// Sum over a block of kNormThreads threads; every thread gets the result.
constexpr int kNormThreads = 256;
__device__ float block_sum(float v) {
  __shared__ float part[kNormThreads / 32];
  __shared__ float total;
  v = warp_sum(v);
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < kNormThreads / 32 ? part[lane] : 0.0f;
    s = warp_sum(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

// y = x * rsqrt(mean(x^2) + eps) * w [* silu(z)]; one block per row.
__global__ void __launch_bounds__(kNormThreads)
    rms_norm_kernel(const float* __restrict__ x, const float* __restrict__ w,
                    const float* __restrict__ z, int64_t n, float eps, float* y) {
  RS_PDL_ENTRY();
  const int64_t r = blockIdx.x;
  const float* xr = x + r * n;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += kNormThreads) ss += xr[i] * xr[i];
  ss = block_sum(ss);
  const float scale = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
  float* yr = y + r * n;
  for (int64_t i = threadIdx.x; i < n; i += kNormThreads) {
    float v = xr[i] * scale * w[i];
    if (z) v *= silu_d(z[r * n + i]);
    yr[i] = v;
  }
}

__global__ void __launch_bounds__(kNormThreads) l2_norm_kernel(float* x, int64_t n, float eps) {
  RS_PDL_ENTRY();
  float* xr = x + static_cast<int64_t>(blockIdx.x) * n;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += kNormThreads) ss += xr[i] * xr[i];
  ss = block_sum(ss);
  const float scale = 1.0f / sqrtf(ss + eps);
  for (int64_t i = threadIdx.x; i < n; i += kNormThreads) xr[i] *= scale;
}

// One thread per (token, head, pair d < n_rot/2). The inverse frequency is computed in double
// and rounded, which gives the correctly rounded powf the CPU reference gets from libm.
__global__ void rope_neox_kernel(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim,
                                 int64_t n_rot, const int64_t* __restrict__ pos, float theta) {
  RS_PDL_ENTRY();
  const int64_t half = n_rot / 2;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_tok * n_heads * half) return;
  const int64_t d = i % half, th = i / half, t = th / n_heads;
  const float e = -2.0f * static_cast<float>(d) / static_cast<float>(n_rot);
  const float inv_freq = static_cast<float>(pow(static_cast<double>(theta), static_cast<double>(e)));
  const float angle = static_cast<float>(pos[t]) * inv_freq;
  float s, c;
  sincosf(angle, &s, &c);
  float* xh = x + th * head_dim;
  const float a = xh[d], b = xh[d + half];
  xh[d] = a * c - b * s;
  xh[d + half] = a * s + b * c;
}

// One thread per channel; the K-1 previous inputs travel in registers (K <= kMaxConvK).
constexpr int kMaxConvK = 8;
__global__ void conv1d_silu_kernel(const float* __restrict__ u, int64_t T, int64_t C,
                                   const float* __restrict__ w, int K, float* state, float* out) {
  RS_PDL_ENTRY();
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float win[kMaxConvK], wc[kMaxConvK];
#pragma unroll
  for (int j = 0; j < kMaxConvK; ++j) {
    win[j] = j < K - 1 ? state[j * C + c] : 0.0f;
    wc[j] = j < K - 1 ? w[c * K + j] : 0.0f;
  }
  const float wlast = w[c * K + K - 1];  // tap K-1 multiplies the current input
  for (int64_t t = 0; t < T; ++t) {
    const float cur = u[t * C + c];
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxConvK; ++j) {
      if (j < K - 1) acc += wc[j] * win[j];
    }
    acc += wlast * cur;
    out[t * C + c] = silu_d(acc);
#pragma unroll
    for (int j = 0; j < kMaxConvK - 1; ++j) {
      if (j < K - 2) win[j] = win[j + 1];
    }
    if (K >= 2) {
#pragma unroll
      for (int j = 0; j < kMaxConvK; ++j)
        if (j == K - 2) win[j] = cur;
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxConvK; ++j)
    if (j < K - 1) state[j * C + c] = win[j];
}

// Gated delta rule, token by token. Block = one warp = kCols = 32 / PARTS value columns of one
// value head; lane (part, col) keeps its slice S[part*DK/PARTS .. +DK/PARTS, col] in registers
// for the whole call, so the decay and the rank-1 update are local and S^T k, S^T q need
// log2(PARTS) shuffles between the parts. PARTS = 4: 8 adjacent columns per part (32-byte
// segments), DK/4 registers per lane, and twice the warps of a 2-part split (decode is
// latency-bound: more warps in flight, shorter serial walks). q_t and k_t go through shared
// memory.
template <int DK, int PARTS>
__global__ void __launch_bounds__(32)
    delta_rule_kernel(int64_t T, int64_t Hk, int64_t Hv, int64_t dv,
                      const float* __restrict__ q, const float* __restrict__ k,
                      const float* __restrict__ v, const float* __restrict__ g,
                      const float* __restrict__ beta, float* S, float* out) {
  RS_PDL_ENTRY();
  constexpr int kPart = DK / PARTS;
  constexpr int kCols = 32 / PARTS;
  __shared__ float sq[DK], sk[DK];
  const int64_t h = blockIdx.x, j = h % Hk;
  const int lane = static_cast<int>(threadIdx.x), part = lane / kCols;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kCols + (lane % kCols);
  const int a0 = part * kPart;
  float* Sh = S + h * DK * dv;
  float s[kPart];
#pragma unroll
  for (int a = 0; a < kPart; ++a) s[a] = Sh[(a0 + a) * dv + c];
  for (int64_t t = 0; t < T; ++t) {
    const float* kt = k + (t * Hk + j) * DK;
    const float* qt = q + (t * Hk + j) * DK;
#pragma unroll
    for (int a = lane; a < DK; a += 32) {
      sk[a] = kt[a];
      sq[a] = qt[a];
    }
    __syncwarp();
    const float decay = expf(g[t * Hv + h]);
    const float b = beta[t * Hv + h];
    float kv = 0.0f;
#pragma unroll
    for (int a = 0; a < kPart; ++a) {
      s[a] *= decay;
      kv += s[a] * sk[a0 + a];
    }
#pragma unroll
    for (int o = kCols; o < 32; o <<= 1) kv += __shfl_xor_sync(0xFFFFFFFFu, kv, o);
    const float delta = b * (v[(t * Hv + h) * dv + c] - kv);
    float o = 0.0f;
#pragma unroll
    for (int a = 0; a < kPart; ++a) {
      s[a] += sk[a0 + a] * delta;
      o += s[a] * sq[a0 + a];
    }
#pragma unroll
    for (int m = kCols; m < 32; m <<= 1) o += __shfl_xor_sync(0xFFFFFFFFu, o, m);
    if (part == 0) out[(t * Hv + h) * dv + c] = o;
    __syncwarp();
  }
#pragma unroll
  for (int a = 0; a < kPart; ++a) Sh[(a0 + a) * dv + c] = s[a];
}

__global__ void swiglu_kernel(const float* __restrict__ gate, const float* __restrict__ up,
                              int64_t n, float* out) {
  RS_PDL_ENTRY();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = silu_d(gate[i]) * up[i];
}

// One warp per token (warp_router_topk, router_kernel.cuh).
__global__ void __launch_bounds__(32)
    router_topk_kernel(const float* __restrict__ logits, int64_t E, int64_t k, int32_t* ids,
                       float* weights) {
  RS_PDL_ENTRY();
  __shared__ float l[kRouterMaxExperts];
  __shared__ int32_t chosen_ids[32];
  const int64_t t = blockIdx.x;
  warp_router_topk(logits + t * E, E, k, l, chosen_ids, static_cast<int>(threadIdx.x),
                   ids + t * k, weights + t * k);
}

}  // namespace

cudaError_t launch_rms_norm(const float* x, const float* w, const float* z, int64_t rows,
                            int64_t n, float eps, float* y, cudaStream_t s) {
  detail::launch_kernel(rms_norm_kernel, static_cast<unsigned>(rows), kNormThreads, 0, s, x, w, z,
                        n, eps, y);
  return cudaGetLastError();
}

cudaError_t launch_l2_norm(float* x, int64_t rows, int64_t n, float eps, cudaStream_t s) {
  detail::launch_kernel(l2_norm_kernel, static_cast<unsigned>(rows), kNormThreads, 0, s, x, n, eps);
  return cudaGetLastError();
}

cudaError_t launch_rope_neox(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim,
                             int64_t n_rot, const int64_t* pos, float theta, cudaStream_t s) {
  const int64_t n = n_tok * n_heads * (n_rot / 2);
  if (n == 0) return cudaSuccess;
  detail::launch_kernel(rope_neox_kernel, static_cast<unsigned>((n + 255) / 256), 256, 0, s, x,
                        n_tok, n_heads, head_dim, n_rot, pos, theta);
  return cudaGetLastError();
}

cudaError_t launch_conv1d_silu(const float* u, int64_t T, int64_t C, const float* w, int64_t K,
                               float* state, float* out, cudaStream_t s) {
  if (K < 1 || K > kMaxConvK) return cudaErrorInvalidValue;
  detail::launch_kernel(conv1d_silu_kernel, static_cast<unsigned>((C + 127) / 128), 128, 0, s, u, T,
                        C, w, static_cast<int>(K), state, out);
  return cudaGetLastError();
}

cudaError_t launch_delta_rule(const DeltaNetDims& d, const float* q, const float* k,
                              const float* v, const float* g, const float* beta, float* S,
                              float* out, cudaStream_t s) {
  constexpr int kParts = 4;
  const dim3 grid(static_cast<unsigned>(d.Hv), static_cast<unsigned>(d.dv / (32 / kParts)));
  switch (d.dk) {
    case 32:
      detail::launch_kernel(delta_rule_kernel<32, kParts>, grid, 32, 0, s, d.T, d.Hk, d.Hv, d.dv, q,
                            k, v, g, beta, S, out);
      break;
    case 64:
      detail::launch_kernel(delta_rule_kernel<64, kParts>, grid, 32, 0, s, d.T, d.Hk, d.Hv, d.dv, q,
                            k, v, g, beta, S, out);
      break;
    case 128:
      detail::launch_kernel(delta_rule_kernel<128, kParts>, grid, 32, 0, s, d.T, d.Hk, d.Hv, d.dv,
                            q, k, v, g, beta, S, out);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_swiglu(const float* gate, const float* up, int64_t n, float* out,
                          cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  detail::launch_kernel(swiglu_kernel, static_cast<unsigned>((n + 255) / 256), 256, 0, s, gate, up,
                        n, out);
  return cudaGetLastError();
}

cudaError_t launch_router_fused(const RouterArgs& a, cudaStream_t s) {
  const int64_t rows = a.E + (a.sh ? 1 : 0);
  if (a.n_tok > 0)
    detail::launch_kernel(router_fused_kernel,
                          static_cast<unsigned>((rows + kRouterWarps - 1) / kRouterWarps),
                          32 * kRouterWarps, 0, s, a);
  return cudaGetLastError();
}

__global__ void hold_kernel(uint64_t ns) {
  RS_PDL_ENTRY();
  uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    __nanosleep(1000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

int kernels_ptx_version() {
  cudaFuncAttributes a{};
  if (cudaFuncGetAttributes(&a, hold_kernel) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return a.ptxVersion;
}

cudaError_t launch_hold(uint64_t ns, cudaStream_t s) {
  detail::launch_kernel(hold_kernel, 1, 1, 0, s, ns);
  return cudaGetLastError();
}

cudaError_t launch_router_topk(const float* logits, int64_t n_tok, int64_t E, int64_t k,
                               int32_t* ids, float* weights, cudaStream_t s) {
  if (E > kRouterMaxExperts || k > 32 || k > E) return cudaErrorInvalidValue;
  detail::launch_kernel(router_topk_kernel, static_cast<unsigned>(n_tok), 32, 0, s, logits, E, k,
                        ids, weights);
  return cudaGetLastError();
}

}  // namespace rs::cuda::detail
