// The q8 activation block of 32 values held by a warp (one per lane): d = amax / 127,
// q = rint(v / d) clamped to +-127, and the exact sum, the amax and sum by xor shuffles. Every
// kernel that writes q8 activations (quantize_act and the fused ones that save its launch) uses
// this one function, so they produce the same bits. Compiles for the device and the emulator.
#pragma once

#include <cstdint>

#include "kernels/cuda/simt.h"

namespace rs::cuda {

// All 32 lanes call it with their value (0 for a lane outside the data). Writes *q when store,
// and {d, sum} to ds[0..1] from lane 0.
RS_DEVICE void warp_q8_block(float v, bool store, int8_t* q, float* ds, int lane) {
  float amax = fabsf(v), sum = v;
  for (int o = 16; o > 0; o >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, o));
    sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
  }
  const float d = amax / 127.0f;
  int qi = amax == 0.0f ? 0 : __float2int_rn(v / d);
  qi = qi < -127 ? -127 : (qi > 127 ? 127 : qi);
  if (store) *q = static_cast<int8_t>(qi);
  if (lane == 0) {
    ds[0] = d;
    ds[1] = sum;
  }
}

}  // namespace rs::cuda
