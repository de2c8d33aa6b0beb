// Portability for CUDA kernels that also run on the host, in tests, on machines without a GPU.
// A kernel written in a `.cuh` that includes this header (and uses only the CUDA features that
// kernels/cuda/simt_host.h provides: thread/block indices, __syncthreads, __syncwarp, the warp
// shuffles and votes, static __shared__ arrays, RS_DYN_SHARED, atomics, the float intrinsics)
// compiles twice: by nvcc into the device code that the CUDA ops launch, and by g++ into a host
// build that tests/cuda/*_emu_test.cc run through the SIMT emulator against the CPU reference.
// The emulator checks the kernel's logic (indexing, reductions, barriers, the block's
// cooperation); timing, occupancy and the hardware's rounding of intrinsics only the device shows.
#pragma once

#include "kernels/cuda/pdl.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#include <cuda_fp16.h>

// Dynamic shared memory as a typed pointer (16-byte aligned).
#define RS_DYN_SHARED(T, name)                                       \
  extern __shared__ __align__(16) unsigned char rs_dyn_smem_raw_[]; \
  T* name = reinterpret_cast<T*>(rs_dyn_smem_raw_)
#define RS_KERNEL __global__
#define RS_DEVICE __device__ __forceinline__
// The block size a kernel is always launched with (lets ptxas budget registers for it).
#define RS_LAUNCH_BOUNDS(n) __launch_bounds__(n)
#else
#include "kernels/cuda/simt_host.h"
#define RS_DYN_SHARED(T, name) T* name = reinterpret_cast<T*>(::rs::simt::dynamic_shared())
#define RS_KERNEL
#define RS_DEVICE inline
#define RS_LAUNCH_BOUNDS(n)
#endif
