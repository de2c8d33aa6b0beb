// Device build of the sampler kernel (kernels/cuda/sample_kernel.cuh) and its raw launcher.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_launch.cuh"
#include "kernels/cuda/sample_kernel.cuh"

namespace rs::cuda::sampling {

cudaError_t launch_sample_rows(float* x, int64_t ldx, int64_t V, int n_rows, const RowParams* rows,
                               const PenEntry* pens, const BiasEntry* biases, int32_t* ids,
                               cudaStream_t s) {
  if (n_rows > 0)
    detail::launch_kernel(sample_rows_kernel, static_cast<unsigned>(n_rows), kThreads, 0, s, x, ldx,
                          V, rows, pens, biases, ids);
  return cudaGetLastError();
}

}  // namespace rs::cuda::sampling
