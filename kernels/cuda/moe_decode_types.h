// Arguments of the fused MoE decode kernels (moe_decode_kernel.cuh), in a plain header that the
// launcher, cuda_glue.h and the tests include without CUDA or the emulator.
//
// A decode step's experts in two launches. "Slots": token t's k routed selections are slots
// t*k .. t*k+k-1 (expert ids[slot]); with a shared expert, token t's shared expert is slot
// n_tok*k + t. The up kernel computes each slot's gate and up rows, SwiGLU, and the q8 blocks of
// the result (the down kernel's activations); the down kernel computes every slot's down rows
// and sums them per token in slot order, weighted by the routing weight (routed) or by
// sigmoid(shared gate logit) (shared), so nothing of the experts leaves the device and no
// separate SwiGLU, quantisation, shared-expert or add kernel runs.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rs::cuda::moed {

constexpr int kUpThreads = 512;    // 16 warps (2 gate + 2 up rows each): kUpTile rows of a slot
constexpr int kUpTile = 32;        // one q8 block of the output
constexpr int kDownThreads = 256;  // 8 warps: slots spread over them
constexpr int kDownRows = 8;       // output rows per block
constexpr int kMaxSlots = 24;      // routed + shared slots per token in the down kernel

struct UpArgs {
  // Routed experts: expert e's gate rows at gate + e * expert_stride, its up rows at up + the
  // same (gate|up fused: up = gate + I * row_stride). Rows of H weights, row_stride bytes.
  const uint8_t* gate = nullptr;
  const uint8_t* up = nullptr;
  size_t expert_stride = 0;
  int64_t I = 0;
  // Shared expert (same type): sh_gate == nullptr when there is none (or it runs elsewhere).
  const uint8_t* sh_gate = nullptr;
  const uint8_t* sh_up = nullptr;
  int64_t Is = 0;
  size_t row_stride = 0;
  int64_t H = 0;
  const int32_t* ids = nullptr;  // [n_tok * k]; a negative id: the slot is skipped
  int64_t k = 0, n_tok = 0;
  // Token activations: f32 [n_tok][H] and, for integer formats, q8 [n_tok][H] + {d, sum}.
  const float* x = nullptr;
  const int8_t* xq = nullptr;
  const float* xds = nullptr;
  // Output per slot: h [slot][ldh] (f32) and, when hq != nullptr, its q8 blocks hq [slot][ldh],
  // hds [slot][ldh / 32][2]. ldh >= max(I, Is), a multiple of 32.
  float* h = nullptr;
  int8_t* hq = nullptr;
  float* hds = nullptr;
  int64_t ldh = 0;
};

struct DownArgs {
  const uint8_t* down = nullptr;  // expert e: H rows of I weights at down + e * expert_stride
  size_t expert_stride = 0, row_stride = 0;
  int64_t I = 0;
  const uint8_t* sh_down = nullptr;  // H rows of Is weights; nullptr: no shared slot
  size_t sh_row_stride = 0;
  int64_t Is = 0;
  int64_t H = 0;
  const int32_t* ids = nullptr;   // [n_tok * k]
  const float* w = nullptr;       // [n_tok * k] routing weights
  const float* sh_logit = nullptr;  // [n_tok]: the shared expert's weight is sigmoid of it
  int64_t k = 0, n_tok = 0;
  const float* h = nullptr;       // the up kernel's output
  const int8_t* hq = nullptr;
  const float* hds = nullptr;
  int64_t ldh = 0;
  float* out = nullptr;           // [n_tok][H]
  bool accumulate = false;        // out += instead of out =
};

inline int64_t up_slots(const UpArgs& a) { return a.n_tok * a.k + (a.sh_gate ? a.n_tok : 0); }
inline int64_t up_tiles(const UpArgs& a) {
  const int64_t r = a.sh_gate && a.Is > a.I ? a.Is : a.I;
  return (r + kUpTile - 1) / kUpTile;
}

}  // namespace rs::cuda::moed
