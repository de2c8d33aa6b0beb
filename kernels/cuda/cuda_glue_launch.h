// Private to kernels/cuda: the raw launchers of cuda_glue.cu (checked wrappers: cuda_glue.cc).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace rs::cuda::glue {

cudaError_t launch_add(float* y, const float* x, int64_t n, cudaStream_t s);
cudaError_t launch_mul_sigmoid(float* o, const float* g, int64_t n, cudaStream_t s);
cudaError_t launch_dn_gates(const float* b, const float* al, const float* ssm_a,
                            const float* dt_bias, int64_t n_tok, int64_t Hv, float* g,
                            float* beta, cudaStream_t s);
// kind: 0 = F32, 1 = F16, 2 = Q8_0.
// pos: destination row of each token.
// pairs (1 or 2) of (src, dst) in one launch; dst_tok (or null): per pair, a device array of
// each token's cache (dst unused then).
cudaError_t launch_kv_store(const float* const* src, void* const* dst, int pairs, int64_t n_tok,
                            int64_t n, int kind, size_t row_bytes, const int64_t* pos,
                            cudaStream_t s, void* const* const* dst_tok = nullptr);
cudaError_t launch_swiglu_rows(const float* gate, int64_t ldg, const float* up, int64_t ldu,
                               int64_t rows, int64_t n, float* out, cudaStream_t s);
cudaError_t launch_add_sigmoid_scaled(float* out, const float* d, const float* sg, int64_t n_tok,
                                      int64_t H, cudaStream_t s);
cudaError_t launch_gate_q8(float* y, const float* gate, int64_t n, int8_t* q, float* ds,
                          cudaStream_t s);
cudaError_t launch_swiglu_q8(float* y, const float* up, int64_t n, int8_t* q, float* ds,
                             cudaStream_t s);
struct AttnPrepArgs;
cudaError_t launch_attn_prep(const AttnPrepArgs& a, cudaStream_t s);
// m == nullptr: no add; q == nullptr: no q8 blocks (norm_q8_kernel.cuh).
cudaError_t launch_add_rms_norm(float* hidden, const float* m, const float* w, int64_t rows,
                                int64_t n, float eps, float* y, int8_t* q, float* ds,
                                cudaStream_t s);
cudaError_t launch_dn_prep(const float* cv, int64_t n_tok, int64_t Hk, int64_t dk, int64_t VD,
                           float q_scale, float* q, float* k, float* v, cudaStream_t s);
cudaError_t launch_mask_ids(float* x, int64_t rows, int64_t n, const int32_t* ids, int64_t n_ids,
                            cudaStream_t s);
cudaError_t launch_gather_rows(float* dst, const int32_t* dst_rows, const float* src, const int32_t* rows,
                               const float* scale, int64_t n, int64_t width, cudaStream_t s);
cudaError_t launch_combine_slots(float* hidden, const float* rows, const int32_t* slot_row,
                                 const float* ffn, int64_t n_tok, int64_t k, int64_t H,
                                 cudaStream_t s);
// Argmax's split of a row of n: chunks of >= 4096, at most kArgmaxMaxChunks; the workspace holds
// a {value, index} pair per chunk and row. Without one that large: one block per row.
constexpr int64_t kArgmaxMaxChunks = 128;
inline int64_t argmax_chunks(int64_t n) {
  const int64_t c = (n + 4095) / 4096;
  return c < 1 ? 1 : (c > kArgmaxMaxChunks ? kArgmaxMaxChunks : c);
}
inline size_t argmax_workspace_bytes(int64_t rows, int64_t n) {
  return static_cast<size_t>(rows > 0 ? rows : 0) * static_cast<size_t>(argmax_chunks(n)) * 8;
}
cudaError_t launch_argmax_rows(const float* x, int64_t rows, int64_t n, int32_t* ids, void* ws,
                               size_t ws_bytes, cudaStream_t s);

}  // namespace rs::cuda::glue
