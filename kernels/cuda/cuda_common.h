// Private to kernels/cuda: CUDA runtime includes, error helpers, and the raw launchers that the
// .cu files define and cuda_ops.cc wraps (argument checks, absl::Status). Compiled by both nvcc
// and g++; keep it free of device code and of heavy headers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/formats.h"
#include "kernels/ops.h"

namespace rs::cuda {

// Device probe (also declared in cuda_ops.h): any failure of cudaGetDeviceCount, or zero devices,
// means "no GPU"; *why then names the CUDA error (35 = no driver on this machine).
bool cuda_available(std::string* why);

namespace detail {

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// "what: error N (message)"
std::string cuda_error_text(const char* what, cudaError_t e);

// ---- matvec -------------------------------------------------------------------------------------
enum class MvMode : int { kPlain = 0, kMoeUp = 1, kMoeDown = 2 };

// One more matrix of a kPlain launch (same type, cols and activations as the first).
struct MvMat {
  const uint8_t* w = nullptr;
  size_t row_stride = 0;
  int64_t rows = 0;
  float* y = nullptr;
  int64_t ldy = 0;
};
constexpr int kMvMaxMore = 3;

struct MvParams {
  GgmlType type = GgmlType::F32;
  const uint8_t* w = nullptr;
  size_t row_stride = 0;     // bytes
  size_t expert_stride = 0;  // bytes between experts (MoE)
  int64_t cols = 0;
  int64_t rows = 0;          // output rows per matrix (per expert for MoE)
  // activations
  const float* x = nullptr;
  int64_t ldx = 0;
  const int8_t* q = nullptr;
  const float* ds = nullptr;
  int n_tok = 1;
  // output
  float* y = nullptr;
  int64_t ldy = 0;
  // MoE
  MvMode mode = MvMode::kPlain;
  const int32_t* ids = nullptr;
  const float* sel_w = nullptr;
  int n_sel = 0;
  bool accumulate = false;
  // kPlain: n_more further matrices in the same launch; the blocks of matrix m follow those of
  // the matrices before it.
  MvMat more[kMvMaxMore];
  int n_more = 0;
};

bool type_uses_q8(GgmlType t);
bool type_supported(GgmlType t);
cudaError_t launch_quantize_act(const float* x, int64_t ldx, int n_tok, int64_t cols, int8_t* q,
                                float* ds, cudaStream_t s);
cudaError_t launch_matvec(const MvParams& p, cudaStream_t s);
cudaError_t launch_matmul_tc(GgmlType t, const uint8_t* w, size_t row_stride, int64_t cols,
                             int64_t rows, const float* x, int64_t ldx, int64_t n_tok, float* y,
                             int64_t ldy, cudaStream_t s);
cudaError_t launch_embedding(GgmlType t, const uint8_t* w, size_t row_stride, int64_t cols,
                             const int32_t* ids, int64_t n_tok, int64_t n_rows, float* out,
                             cudaStream_t s);
// Host builds of the device code (tests/cuda/cuda_emulation_test.cc, no GPU needed): one row's
// matvec dot product summed unit by unit as the lanes do it (q/ds: the q8 activations for
// integer formats, x: f32 for float formats), the activation quantiser, the 32-element
// dequantiser of the tensor-core matmul and the embedding lookup.
float emulate_row_dot(GgmlType t, const uint8_t* row, int64_t cols, const float* x,
                      const int8_t* q, const float* ds);
void emulate_quantize_act(const float* x, int64_t cols, int8_t* q, float* ds);
void emulate_dequant32(GgmlType t, const uint8_t* row, int64_t k0, float* v);
cudaError_t launch_fill_random(void* data, size_t bytes, uint64_t seed, cudaStream_t s);
// Whether launches ask for programmatic dependent launch (cuda_launch.cuh).
bool pdl_enabled();
// The PTX version (major * 10 + minor) the loaded kernels were compiled from: below 90 they carry
// no griddepcontrol (pdl.h), whatever the device (e.g. a build for sm_86 JIT-compiled on an H100).
int kernels_ptx_version();
// One thread that spins for `ns` nanoseconds of the device's global timer (the launch
// profile's hold).
cudaError_t launch_hold(uint64_t ns, cudaStream_t s);
// The launch profile's mark (cuda_ops.h profile_begin): called by every checked entry point
// after a successful launch or copy; records an event tagged `what` while a profile runs.
void profile_mark(const char* what);
cudaError_t launch_read_sweep(const void* data, size_t bytes, float* sink, cudaStream_t s);

// ---- ops ----------------------------------------------------------------------------------------
cudaError_t launch_rms_norm(const float* x, const float* w, const float* z, int64_t rows,
                            int64_t n, float eps, float* y, cudaStream_t s);
cudaError_t launch_l2_norm(float* x, int64_t rows, int64_t n, float eps, cudaStream_t s);
cudaError_t launch_rope_neox(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim,
                             int64_t n_rot, const int64_t* pos, float theta, cudaStream_t s);
cudaError_t launch_conv1d_silu(const float* u, int64_t T, int64_t C, const float* w, int64_t K,
                               float* state, float* out, cudaStream_t s);
cudaError_t launch_delta_rule(const DeltaNetDims& d, const float* q, const float* k,
                              const float* v, const float* g, const float* beta, float* S,
                              float* out, cudaStream_t s);
cudaError_t launch_swiglu(const float* gate, const float* up, int64_t n, float* out,
                          cudaStream_t s);
struct RouterArgs;
cudaError_t launch_router_fused(const RouterArgs& a, cudaStream_t s);
cudaError_t launch_router_topk(const float* logits, int64_t n_tok, int64_t E, int64_t k,
                               int32_t* ids, float* weights, cudaStream_t s);

// ---- attention ----------------------------------------------------------------------------------
constexpr int64_t kAttnChunk = 256;  // kv positions per split-K chunk, at most
// Chunk length for T query tokens of nh heads over n_ctx cache positions: the longest chunk (up
// to kAttnChunk) that still gives ~2048 warps, halving down to 32 for decode (T = 1), where few
// (token, head) pairs would otherwise leave each warp a long serial walk over the cache.
inline int64_t attn_chunk(int64_t T, int64_t nh, int64_t n_ctx) {
  int64_t chunk = kAttnChunk;
  while (chunk > 32 && T * nh * ((n_ctx + chunk - 1) / chunk) < 2048) chunk /= 2;
  return chunk;
}
struct AttnKv {
  GgmlType type;
  const uint8_t* data;
  int64_t n_kv_heads;
  size_t pos_stride;
  // Tokens of different sequences (a decode batch): token t's cache is tok[t] (a device array
  // of n_tok pointers) and `data` is unused.
  const uint8_t* const* tok = nullptr;
};
// gqa: the first pass reads each K/V row once per KV head (attn_gqa_kernel.cuh) when the group
// size allows, else once per query head.
cudaError_t launch_attention(const float* q, int64_t T, int64_t nh, int64_t hd, const AttnKv& k,
                             const AttnKv& v, int64_t n_past, const int64_t* pos, float scale,
                             float* out, float* ws, int64_t n_chunks, int64_t chunk, bool gqa,
                             cudaStream_t s);

}  // namespace detail
}  // namespace rs::cuda
