// Device build of the grouped MoE prefill kernels (kernels/cuda/moe_grouped_kernel.cuh).
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_launch.cuh"
#include "kernels/cuda/moe_grouped_kernel.cuh"

namespace rs::cuda::moe {

cudaError_t launch_moe_sort(const int32_t* ids, int64_t n_slots, int64_t E, int32_t* perm,
                            int32_t* inv, int32_t* off, int32_t* tile_off, cudaStream_t s) {
  detail::launch_kernel(moe_sort_kernel, 1, kSortThreads, 2 * E * sizeof(int), s, ids, n_slots, E,
                        perm, inv, off, tile_off);
  return cudaGetLastError();
}

cudaError_t launch_moe_gemm(GgmlType t, const GemmArgs& g, int64_t n_slots, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((g.rows + kTileN - 1) / kTileN),
                  static_cast<unsigned>(max_tiles(n_slots, g.E)));
  RS_CUDA_TYPE_SWITCH(t, detail::launch_kernel(moe_gemm_kernel<kT>, grid, kGemmThreads, 0, s, g));
  return cudaGetLastError();
}

cudaError_t launch_moe_combine(const float* d, int64_t ldd, const int32_t* inv, const float* w,
                               int64_t k, int64_t H, int64_t n_tok, float* out, cudaStream_t s) {
  if (n_tok > 0)
    detail::launch_kernel(moe_combine_kernel,
                          dim3(static_cast<unsigned>((H + kCombineThreads - 1) / kCombineThreads),
                               static_cast<unsigned>(n_tok)),
                          kCombineThreads, 0, s, d, ldd, inv, w, k, H, out);
  return cudaGetLastError();
}

}  // namespace rs::cuda::moe
