// Device build of the fused DeltaNet decode kernel (kernels/cuda/dn_decode_kernel.cuh).
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/cuda_launch.cuh"
#include "kernels/cuda/dn_decode_kernel.cuh"

namespace rs::cuda::dn {

cudaError_t launch_dn_decode(const DecodeArgs& a, int64_t B, cudaStream_t s) {
  if (B > 0)
    detail::launch_kernel(dn_decode_kernel,
                          dim3(static_cast<unsigned>(a.Hk), static_cast<unsigned>(B),
                               static_cast<unsigned>(a.Hv / a.Hk * std::max<int64_t>(
                                                                     a.col_split, 1))),
                          kDecodeThreads, decode_smem_bytes(a.Hk, a.Hv, a.dk, a.dv), s, a);
  return cudaGetLastError();
}

}  // namespace rs::cuda::dn
