// Programmatic dependent launch (sm_90 and later): a kernel launched with it may have its blocks
// scheduled while the kernel before it in the stream is still running, which hides the gap
// between the two (the launch and the block dispatch). Every kernel of kernels/cuda calls
// RS_PDL_ENTRY() first: it waits until the kernels before it have finished and their memory is
// visible (so nothing is read or written early), then lets the next kernel launch. Without PDL
// (the default; other devices; the host emulator) it does nothing. Launches go through
// detail::launch_kernel (cuda_launch.cuh), which asks for PDL while it is on
// (cuda::set_programmatic_launch).
#pragma once

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define RS_PDL_ENTRY()                                          \
  do {                                                          \
    asm volatile("griddepcontrol.wait;" ::: "memory");          \
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); \
  } while (0)
#else
#define RS_PDL_ENTRY() \
  do {                 \
  } while (0)
#endif
