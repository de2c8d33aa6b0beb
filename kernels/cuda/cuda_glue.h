// Small element-wise steps of the Qwen3.5 forward pass on the GPU that sit between the ops of
// cuda_ops.h (the CUDA model, worker/model_cuda.cc, strings them together): residual adds, the
// interleaved q/gate split, the sigmoid output gate, the DeltaNet gates, KV-cache stores,
// strided SwiGLU and the shared-expert gate. Plain C++ API like cuda_ops.h; every pointer is a
// device pointer; everything is enqueued on `s`. The CPU definitions they follow are in
// worker/model.cc and kernels/ops.h (silu, sigmoidf, softplusf) and kernels/quant_ref.cc (q8_0).
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/dn_decode_types.h"
#include "kernels/ops.h"
#include "kernels/formats.h"

namespace rs::cuda {

// y[i] += x[i], i < n.
absl::Status add_inplace(float* y, const float* x, int64_t n, Stream s = nullptr);
// o[i] *= sigmoid(gate[i]).
absl::Status mul_sigmoid(float* o, const float* gate, int64_t n, Stream s = nullptr);
// DeltaNet gates, per token t and value head h (b, al: [n_tok][Hv]):
//   beta[t][h] = sigmoid(b[t][h]),  g[t][h] = ssm_a[h] * softplus(al[t][h] + dt_bias[h]).
absl::Status dn_gates(const float* b, const float* al, const float* ssm_a, const float* dt_bias,
                      int64_t n_tok, int64_t Hv, float* g, float* beta, Stream s = nullptr);
// Stores n_tok rows of n floats into a KV cache of type F32, F16 (round to nearest even) or
// Q8_0 (blocks of 32, as quantize_row_ref): token t goes to row d_pos[t] of the cache at `base`
// (a device array of positions: the launch does not depend on the sequence's length).
absl::Status kv_store_at(const float* src, int64_t n_tok, int64_t n, GgmlType type, void* base,
                         size_t row_bytes, const int64_t* d_pos, Stream s = nullptr);
// kv_store_at for K and V (same shape, type and positions) in one launch.
absl::Status kv_store_kv_at(const float* k, const float* v, int64_t n_tok, int64_t n,
                            GgmlType type, void* K, void* V, size_t row_bytes,
                            const int64_t* d_pos, Stream s = nullptr);
// kv_store_kv_at for the tokens of a decode batch, each of its own sequence, in one launch:
// token t's K row goes to row pos[t] of the cache d_K[t], its V row likewise (d_K, d_V: device
// arrays of n_tok cache bases).
absl::Status kv_store_kv_seqs_at(const float* k, const float* v, int64_t n_tok, int64_t n,
                                 GgmlType type, void* const* d_K, void* const* d_V,
                                 size_t row_bytes, const int64_t* pos, Stream s = nullptr);
// rows x n logits: x[r][ids[i]] = -inf for the n_ids ids (the vocabulary's unused ids).
absl::Status mask_ids(float* x, int64_t rows, int64_t n, const int32_t* ids, int64_t n_ids,
                      Stream s = nullptr);
// out[r][i] = silu(gate[r * ldg + i]) * up[r * ldu + i], out is [rows][n].
absl::Status swiglu_rows(const float* gate, int64_t ldg, const float* up, int64_t ldu,
                         int64_t rows, int64_t n, float* out, Stream s = nullptr);
// out[t][h] += sigmoid(sg[t]) * d[t][h] (the shared expert's gate), t < n_tok, h < H.
absl::Status add_sigmoid_scaled(float* out, const float* d, const float* sg, int64_t n_tok,
                                int64_t H, Stream s = nullptr);
// Row dst_rows[i] of dst (dst_rows null: row i) = scale[i] * row rows[i] of src (scale null: a
// copy), width floats a row, i < n; the index and scale arrays are on the device
// (kernels/cuda/row_ops_kernel.cuh).
absl::Status gather_rows(float* dst, const int32_t* dst_rows, const float* src, const int32_t* rows, const float* scale,
                         int64_t n, int64_t width, Stream s = nullptr);
// The owner's end of a distributed MoE layer: hidden[t] += (sum over j < k, in slot order, of
// row slot_row[t*k+j] of rows) + ffn[t] (ffn may be null; k == 0: hidden[t] += ffn[t]); the host
// path's float operations in its order. slot_row is a device array [n_tok][k].
absl::Status combine_slots(float* hidden, const float* rows, const int32_t* slot_row,
                           const float* ffn, int64_t n_tok, int64_t k, int64_t H,
                           Stream s = nullptr);
// hidden[r] += m[r], then y[r] = rms_norm(hidden[r]) * w (as rms_norm in cuda_ops.h).
// Attention's q/k preparation in one kernel (attn_prep_kernel.cuh) for n_tok tokens: q and gate
// split out of qg ([n_tok][nh][2][hd]: per head q then gate), q = rope(rms_norm(q) * q_norm),
// k = rope(rms_norm(k) * k_norm) in place; NeoX RoPE on the first n_rot dims at d_pos[t].
absl::Status attn_prep(const float* qg, int64_t n_tok, int64_t nh, int64_t nkv, int64_t hd,
                       int64_t n_rot, const float* q_norm, const float* k_norm,
                       const int64_t* d_pos, float theta, float eps, float* q, float* gate,
                       float* k, Stream s = nullptr);
// o[i] *= sigmoid(gate[i]) for the n_tok x cols matrix o, and its q8 blocks in ws (quantize_act's
// layout and bits) in the same kernel: *out is then o's prepared activations. cols % 32 == 0.
absl::Status mul_sigmoid_q8(float* o, const float* gate, int64_t n_tok, int64_t cols, void* ws,
                            size_t ws_bytes, DeviceAct* out, Stream s = nullptr);
// g[i] = silu(g[i]) * up[i] (SwiGLU, in place) for the n_tok x cols matrix g, and its q8 blocks in
// ws as mul_sigmoid_q8 does: *out is then g's prepared activations. cols % 32 == 0.
absl::Status swiglu_q8(float* g, const float* up, int64_t n_tok, int64_t cols, void* ws,
                       size_t ws_bytes, DeviceAct* out, Stream s = nullptr);
// As add_rms_norm (m == nullptr: rms_norm alone), and the result's q8 blocks in ws (the layout
// and size of quantize_act's) in the same kernel: *out is then y's prepared activations, bit for
// bit what quantize_act(y) gives. n a multiple of 32.
absl::Status add_rms_norm_q8(float* hidden, const float* m, const float* w, int64_t rows,
                             int64_t n, float eps, float* y, void* ws, size_t ws_bytes,
                             DeviceAct* out, Stream s = nullptr);
absl::Status add_rms_norm(float* hidden, const float* m, const float* w, int64_t rows, int64_t n,
                          float eps, float* y, Stream s = nullptr);
// DeltaNet, per token: cv = [q (Hk*dk) | k (Hk*dk) | v (VD)] -> q = l2_norm(q_h) * q_scale and
// k = l2_norm(k_h) per key head (eps 1e-6, as l2_norm), v copied; q, k: [n_tok][Hk*dk], v:
// [n_tok][VD]. VD must be a multiple of Hk.
absl::Status dn_prep(const float* cv, int64_t n_tok, int64_t Hk, int64_t dk, int64_t VD,
                     float q_scale, float* q, float* k, float* v, Stream s = nullptr);
// The DeltaNet decode step of one layer for B sequences of one token each, in one kernel
// (kernels/cuda/dn_decode_kernel.cuh: conv update + SiLU, L2 norms, gates, state update and
// readout, gated RMSNorm; a.y gets the input of ssm_out). a.seq_base is a device array of B
// state buffers. Refuses head shapes the kernel does not cover, naming them.
absl::Status dn_decode(const dn::DecodeArgs& a, int64_t B, Stream s = nullptr);
// Routed experts of a prefill step, grouped by expert (kernels/cuda/moe_grouped_kernel.cuh):
// out[t] = sum_i w[t][i] * down_e(silu(gate_e x_t) * up_e x_t) over the token's k slots, e =
// ids[t][i], each selected expert's weights read once per 32 slots. gate: the experts' gate
// (I rows each) or gate|up fused (2I rows each, up == nullptr); up: the separate up tensor;
// down: H rows of I each. Scratch: gu [N*k][2I], h [N*k][I], d [N*k][H] floats and `ws` of
// moe_grouped_workspace_bytes. Nothing leaves the device.
// out == nullptr: no combine; d then holds each of the step's valid slots' down projection
// (unweighted) at the slot's bucket position, which moe_grouped_inv(ws, n_slots)[slot] gives
// (-1 for a slot with a negative id).
size_t moe_grouped_workspace_bytes(int64_t n_slots, int64_t E);
const int32_t* moe_grouped_inv(const void* ws, int64_t n_slots);
absl::Status moe_grouped(const WeightView& gate, const WeightView* up, const WeightView& down,
                         int64_t E, int64_t I, int64_t H, const float* x, int64_t n_tok,
                         const int32_t* d_ids, const float* d_w, int64_t k, float* gu, float* h,
                         float* d, void* ws, size_t ws_bytes, float* out, Stream s = nullptr);
// Prefill attention, flash style (kernels/cuda/flash_prefill_kernel.cuh): the contract of
// attention_ref (kernels/ops.h) for T tokens at positions n_past.. over an interleaved cache
// (head_stride_bytes 0) of F32, F16 or Q8_0; each block reads the cache once for all the query
// heads of a KV head. hd: a multiple of 32 up to 256; nh / nkv up to 32.
absl::Status attention_prefill(const float* q, int64_t T, int64_t nh, int64_t hd, const KvView& k,
                               const KvView& v, int64_t n_past, float scale, float* out,
                               Stream s = nullptr);
// The gated delta rule of one sequence's T tokens in chunks of 64 (kernels/cuda/
// dn_chunk_kernel.cuh; delta_rule_chunked_ref's algebra): same contract as delta_rule. dk even
// and at most 128. Needs ~97 KiB of shared memory per block (dk 128): FailedPrecondition, with
// the numbers, on a device that grants less (then use delta_rule).
absl::Status delta_rule_chunked(const DeltaNetDims& d, const float* q, const float* k,
                                const float* v, const float* g, const float* beta, float* S,
                                float* out, Stream s = nullptr);
// ids[i] = argmax of row i of x (rows of n floats; ties to the lower index; a row of -inf /
// NaN only gives 0). With a workspace of argmax_workspace_bytes(rows, n) a long row is split
// over up to 128 blocks and merged by a second launch; without one, one block per
// row (slow for a 248K vocabulary: its loads are one block's).
size_t argmax_workspace_bytes(int64_t rows, int64_t n);
absl::Status argmax_rows(const float* x, int64_t rows, int64_t n, int32_t* ids,
                         Stream s = nullptr, void* ws = nullptr, size_t ws_bytes = 0);

}  // namespace rs::cuda
