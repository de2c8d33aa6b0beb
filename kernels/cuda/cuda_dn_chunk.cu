// Device build of the chunked delta rule kernel (kernels/cuda/dn_chunk_kernel.cuh).
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_launch.cuh"
#include "kernels/cuda/dn_chunk_kernel.cuh"

namespace rs::cuda::dn {

// The dynamic shared memory dn_chunk_kernel may use on the current device (bytes), after asking
// for the most it needs.
cudaError_t prepare_dn_chunk(size_t need, size_t* granted) {
  int dev = 0, optin = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e != cudaSuccess) return e;
  *granted = static_cast<size_t>(optin);
  if (need > *granted) return cudaSuccess;
  return cudaFuncSetAttribute(dn_chunk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(need));
}

cudaError_t launch_dn_chunk(const ChunkArgs& a, cudaStream_t s) {
  if (a.T > 0)
    detail::launch_kernel(dn_chunk_kernel,
                          dim3(static_cast<unsigned>(a.Hv),
                               static_cast<unsigned>((a.dv + kChunkCols - 1) / kChunkCols)),
                          kChunkThreads, chunk_smem_bytes(a.dk), s, a);
  return cudaGetLastError();
}

}  // namespace rs::cuda::dn
