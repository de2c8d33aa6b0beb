// Device build of the fused MoE decode kernels (kernels/cuda/moe_decode_kernel.cuh).
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_launch.cuh"
#include "kernels/cuda/moe_decode_kernel.cuh"

namespace rs::cuda::moed {

cudaError_t launch_moe_up(GgmlType t, const UpArgs& a, cudaStream_t s) {
  const int64_t slots = up_slots(a), tiles = up_tiles(a);
  if (slots == 0 || tiles == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(slots));
  RS_CUDA_TYPE_SWITCH(t, detail::launch_kernel(moe_up_kernel<kT>, grid, kUpThreads, 0, s, a));
  return cudaGetLastError();
}

cudaError_t launch_moe_down(GgmlType t, const DownArgs& a, cudaStream_t s) {
  if (a.n_tok == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((a.H + kDownRows - 1) / kDownRows),
                  static_cast<unsigned>(a.n_tok));
  RS_CUDA_TYPE_SWITCH(t, detail::launch_kernel(moe_down_kernel<kT>, grid, kDownThreads, 0, s, a));
  return cudaGetLastError();
}

}  // namespace rs::cuda::moed
