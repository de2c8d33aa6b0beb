// The kernel launch every .cu file of kernels/cuda uses (instead of <<<...>>>): a plain launch,
// or, while programmatic dependent launch is on (cuda::set_programmatic_launch, sm_90+), one
// that lets the device start it before the previous kernel ends (pdl.h: each kernel waits for
// its predecessor first). Errors are left to cudaGetLastError(), as a <<<...>>> launch's are.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda/pdl.h"

namespace rs::cuda::detail {

// Whether launches ask for programmatic dependent launch (cuda_ops.cc; set_programmatic_launch).
bool pdl_enabled();

template <class... P, class... A>
void launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                   A&&... args) {
  if (!pdl_enabled()) {
    kernel<<<grid, block, smem, s>>>(std::forward<A>(args)...);
    return;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  (void)cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}

}  // namespace rs::cuda::detail
