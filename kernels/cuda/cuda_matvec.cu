// Quantised matvec for decode (1..8 tokens), its MoE forms, the q8 activation quantiser and the
// read-bandwidth sweep.
//
// Layout of the work: one warp per output row; the row is cut into "units" of 16..32 weights
// (a quarter of a k-quant sub-block pair, half a Q8_0 block, ...; matvec_fmt.cuh) and lane i
// takes units i, i+32, .... Weights are read once for all tokens of the call.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_launch.cuh"
#include "kernels/cuda/cuda_quant.cuh"
#include "kernels/cuda/matvec_kernel.cuh"
#include "kernels/cuda/q8_block.cuh"

namespace rs::cuda::detail {
namespace {

template <GgmlType T, int NT, int MODE>
cudaError_t launch_mv(const MvParams& p, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(mv_blocks(p)),
                  MODE == static_cast<int>(MvMode::kMoeUp) ? static_cast<unsigned>(p.n_sel) : 1u);
  detail::launch_kernel(matvec_kernel<T, NT, MODE>, grid, kMvWarps * 32, 0, s, p);
  return cudaGetLastError();
}

template <GgmlType T>
cudaError_t launch_mv_type(const MvParams& p, cudaStream_t s) {
  constexpr int kPlain = static_cast<int>(MvMode::kPlain);
  switch (p.mode) {
    case MvMode::kMoeUp: return launch_mv<T, 1, static_cast<int>(MvMode::kMoeUp)>(p, s);
    case MvMode::kMoeDown: return launch_mv<T, 1, static_cast<int>(MvMode::kMoeDown)>(p, s);
    case MvMode::kPlain: break;
  }
  switch (p.n_tok) {
    case 1: return launch_mv<T, 1, kPlain>(p, s);
    case 2: return launch_mv<T, 2, kPlain>(p, s);
    case 3: return launch_mv<T, 3, kPlain>(p, s);
    case 4: return launch_mv<T, 4, kPlain>(p, s);
    case 5: return launch_mv<T, 5, kPlain>(p, s);
    case 6: return launch_mv<T, 6, kPlain>(p, s);
    case 7: return launch_mv<T, 7, kPlain>(p, s);
    case 8: return launch_mv<T, 8, kPlain>(p, s);
    default: return cudaErrorInvalidValue;
  }
}

// One warp per block of 32 activations: q = rint(x / d), d = amax / 127, plus the exact sum.
__global__ void quantize_act_kernel(const float* __restrict__ x, int64_t ldx, int n_tok,
                                    int64_t cols, int8_t* __restrict__ q, float2* __restrict__ ds) {
  RS_PDL_ENTRY();
  const int64_t nb = cols / 32;
  const int64_t blk = static_cast<int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (blk >= nb * n_tok) return;
  const int64_t t = blk / nb, b = blk % nb;
  const int lane = static_cast<int>(threadIdx.x & 31);
  warp_q8_block(x[t * ldx + b * 32 + lane], true, q + t * cols + b * 32 + lane,
                reinterpret_cast<float*>(ds + t * nb + b), lane);
}

__global__ void read_sweep_kernel(const uint4* __restrict__ p, size_t n16, float* sink) {
  RS_PDL_ENTRY();
  uint32_t acc = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n16; i += 4 * stride) {
    const uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride), c = __ldcs(p + i + 2 * stride),
                d = __ldcs(p + i + 3 * stride);
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^
           d.z ^ d.w;
  }
  for (; i < n16; i += stride) {
    const uint4 a = __ldcs(p + i);
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  // Practically never true; keeps the loads alive.
  if (acc == 0x9E3779B9u) sink[blockIdx.x % 4096] = static_cast<float>(acc);
}

__global__ void fill_random_kernel(uint8_t* p, size_t bytes, uint64_t seed) {
  RS_PDL_ENTRY();
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i * 8 < bytes;
       i += stride) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;  // splitmix64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const size_t n = min(static_cast<size_t>(8), bytes - i * 8);
    for (size_t j = 0; j < n; ++j) p[i * 8 + j] = static_cast<uint8_t>(z >> (8 * j));
  }
}

}  // namespace

cudaError_t launch_fill_random(void* data, size_t bytes, uint64_t seed, cudaStream_t s) {
  if (bytes == 0) return cudaSuccess;
  detail::launch_kernel(fill_random_kernel, 1024, 256, 0, s, static_cast<uint8_t*>(data), bytes,
                        seed);
  return cudaGetLastError();
}

bool type_supported(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q8_0:
    case GgmlType::Q4_0: case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K:
    case GgmlType::IQ4_XS:
      return true;
    default:
      return false;
  }
}

bool type_uses_q8(GgmlType t) {
  return type_supported(t) && t != GgmlType::F32 && t != GgmlType::F16 && t != GgmlType::BF16;
}

cudaError_t launch_quantize_act(const float* x, int64_t ldx, int n_tok, int64_t cols, int8_t* q,
                                float* ds, cudaStream_t s) {
  const int64_t blocks = (cols / 32 * n_tok + 7) / 8;
  detail::launch_kernel(quantize_act_kernel, static_cast<unsigned>(blocks), 256, 0, s, x, ldx,
                        n_tok, cols, q, reinterpret_cast<float2*>(ds));
  return cudaGetLastError();
}

cudaError_t launch_matvec(const MvParams& p, cudaStream_t s) {
  RS_CUDA_TYPE_SWITCH(p.type, return launch_mv_type<kT>(p, s))
  return cudaErrorInvalidValue;
}

float emulate_row_dot(GgmlType t, const uint8_t* row, int64_t cols, const float* x,
                      const int8_t* q, const float* ds) {
  const ActDev act{x, cols, q, reinterpret_cast<const float2*>(ds), cols};
  float acc[1] = {0.0f};
  RS_CUDA_TYPE_SWITCH(t, {
    const int64_t n = Fmt<kT>::units(cols);
    for (int64_t u = 0; u < n; ++u) Fmt<kT>::template dot<1>(row, u, act, acc);
  })
  return acc[0];
}

void emulate_quantize_act(const float* x, int64_t cols, int8_t* q, float* ds) {
  for (int64_t b = 0; b < cols / 32; ++b) {
    float amax = 0.0f, sum = 0.0f;
    for (int i = 0; i < 32; ++i) {
      amax = std::max(amax, std::fabs(x[b * 32 + i]));
      sum += x[b * 32 + i];
    }
    const float d = amax / 127.0f;
    for (int i = 0; i < 32; ++i) {
      const int qi = amax == 0.0f ? 0 : static_cast<int>(std::nearbyint(x[b * 32 + i] / d));
      q[b * 32 + i] = static_cast<int8_t>(std::max(-127, std::min(127, qi)));
    }
    ds[2 * b] = d;
    ds[2 * b + 1] = sum;
  }
}

void emulate_dequant32(GgmlType t, const uint8_t* row, int64_t k0, float* v) {
  RS_CUDA_TYPE_SWITCH(t, dequant32<kT>(row, k0, v))
}

cudaError_t launch_read_sweep(const void* data, size_t bytes, float* sink, cudaStream_t s) {
  int dev = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) return e;
  detail::launch_kernel(read_sweep_kernel, static_cast<unsigned>(sms * 8), 512, 0, s,
                        static_cast<const uint4*>(data), bytes / 16, sink);
  return cudaGetLastError();
}

}  // namespace rs::cuda::detail
