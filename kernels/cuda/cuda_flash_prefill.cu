// Device build of the flash prefill attention kernel (kernels/cuda/flash_prefill_kernel.cuh).
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_launch.cuh"
#include "kernels/cuda/flash_prefill_kernel.cuh"

namespace rs::cuda::flash {

cudaError_t launch_flash_prefill(GgmlType kv, const PrefillArgs& a, cudaStream_t s) {
  const int64_t tpb = tokens_per_block(a.nh / a.nkv);
  const dim3 grid(static_cast<unsigned>((a.T + tpb - 1) / tpb), static_cast<unsigned>(a.nkv));
  switch (kv) {
    case GgmlType::F32:
      detail::launch_kernel(flash_prefill_kernel<GgmlType::F32>, grid, kFlashThreads, 0, s, a);
      break;
    case GgmlType::F16:
      detail::launch_kernel(flash_prefill_kernel<GgmlType::F16>, grid, kFlashThreads, 0, s, a);
      break;
    case GgmlType::Q8_0:
      detail::launch_kernel(flash_prefill_kernel<GgmlType::Q8_0>, grid, kFlashThreads, 0, s, a);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace rs::cuda::flash
