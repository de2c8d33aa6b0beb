// Device build of the dense FFN's fused up kernel (kernels/cuda/ffn_up_kernel.cuh).
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_launch.cuh"
#include "kernels/cuda/ffn_up_kernel.cuh"

namespace rs::cuda::ffnup {
namespace {

template <GgmlType T>
cudaError_t launch_type(const Args& a, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(blocks(a)));
  switch (a.n_tok) {
    case 1:
      detail::launch_kernel(ffn_up_kernel<T, 1>, grid, kThreads, 0, s, a);
      break;
    case 2:
      detail::launch_kernel(ffn_up_kernel<T, 2>, grid, kThreads, 0, s, a);
      break;
    case 3:
      detail::launch_kernel(ffn_up_kernel<T, 3>, grid, kThreads, 0, s, a);
      break;
    case 4:
      detail::launch_kernel(ffn_up_kernel<T, 4>, grid, kThreads, 0, s, a);
      break;
    case 5:
      detail::launch_kernel(ffn_up_kernel<T, 5>, grid, kThreads, 0, s, a);
      break;
    case 6:
      detail::launch_kernel(ffn_up_kernel<T, 6>, grid, kThreads, 0, s, a);
      break;
    case 7:
      detail::launch_kernel(ffn_up_kernel<T, 7>, grid, kThreads, 0, s, a);
      break;
    case 8:
      detail::launch_kernel(ffn_up_kernel<T, 8>, grid, kThreads, 0, s, a);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_ffn_up(GgmlType t, const Args& a, cudaStream_t s) {
  if (a.I == 0) return cudaSuccess;
  RS_CUDA_TYPE_SWITCH(t, return launch_type<kT>(a, s))
  return cudaErrorInvalidValue;
}

}  // namespace rs::cuda::ffnup
