// Checked entry points of cuda_glue.h.
#include "kernels/cuda/cuda_glue.h"

#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attn_prep_types.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_glue_launch.h"
#include "kernels/cuda/dn_chunk_types.h"
#include "kernels/cuda/flash_prefill_types.h"
#include "kernels/cuda/moe_grouped_types.h"

namespace rs::cuda {
namespace {

using detail::as_stream;

absl::Status st(const char* what, cudaError_t e) {
  if (e == cudaSuccess) {
    detail::profile_mark(what);
    return absl::OkStatus();
  }
  (void)cudaGetLastError();
  return absl::InternalError(detail::cuda_error_text(what, e));
}

absl::Status bad(const char* what, int64_t a, int64_t b) {
  return absl::InvalidArgumentError(absl::StrCat(what, ": bad sizes (", a, ", ", b, ")"));
}

}  // namespace

namespace dn {
cudaError_t launch_dn_decode(const DecodeArgs& a, int64_t B, cudaStream_t s);
}  // namespace dn

namespace moe {
cudaError_t launch_moe_sort(const int32_t* ids, int64_t n_slots, int64_t E, int32_t* perm,
                            int32_t* inv, int32_t* off, int32_t* tile_off, cudaStream_t s);
cudaError_t launch_moe_gemm(GgmlType t, const GemmArgs& g, int64_t n_slots, cudaStream_t s);
cudaError_t launch_moe_combine(const float* d, int64_t ldd, const int32_t* inv, const float* w,
                               int64_t k, int64_t H, int64_t n_tok, float* out, cudaStream_t s);
}  // namespace moe

size_t moe_grouped_workspace_bytes(int64_t n_slots, int64_t E) {
  return static_cast<size_t>(2 * n_slots + 2 * (E + 1)) * sizeof(int32_t) + 64;
}

const int32_t* moe_grouped_inv(const void* ws, int64_t n_slots) {
  return static_cast<const int32_t*>(ws) + n_slots;
}

absl::Status moe_grouped(const WeightView& gate, const WeightView* up, const WeightView& down,
                         int64_t E, int64_t I, int64_t H, const float* x, int64_t n_tok,
                         const int32_t* d_ids, const float* d_w, int64_t k, float* gu, float* h,
                         float* d, void* ws, size_t ws_bytes, float* out, Stream s) {
  const int64_t S = n_tok * k;
  const int64_t gate_rows = up ? I : 2 * I;
  if (n_tok < 0 || k < 1 || E < 1 || I < 1 || H < 1 || gate.rows != E * gate_rows ||
      gate.cols != H || (up && (up->rows != E * I || up->cols != H || up->type != gate.type)) ||
      down.rows != E * H || down.cols != I)
    return absl::InvalidArgumentError(absl::StrCat(
        "moe_grouped: shapes do not match: E ", E, ", I ", I, ", H ", H, ", gate ", gate.rows, "x",
        gate.cols, ", down ", down.rows, "x", down.cols));
  if (H % 32 != 0 || I % 32 != 0)
    return absl::InvalidArgumentError(
        absl::StrCat("moe_grouped: H = ", H, " and I = ", I, " must be multiples of 32"));
  if (ws_bytes < moe_grouped_workspace_bytes(S, E))
    return absl::InvalidArgumentError(absl::StrCat("moe_grouped: workspace of ", ws_bytes,
                                                   " bytes, needs ",
                                                   moe_grouped_workspace_bytes(S, E)));
  if (S == 0) return absl::OkStatus();
  int32_t* perm = static_cast<int32_t*>(ws);
  int32_t* inv = perm + S;
  int32_t* off = inv + S;
  int32_t* tile_off = off + E + 1;
  const cudaStream_t cs = as_stream(s);
  if (auto e = moe::launch_moe_sort(d_ids, S, E, perm, inv, off, tile_off, cs); e != cudaSuccess)
    return st("moe_sort", e);
  // One grouped gemm over every expert's tile: y[pos] = W_e . a[row(pos)], W_e the
  // rows_per_expert rows of expert e in w.
  auto gemm = [&](const char* what, const WeightView& w, int64_t rows_per_expert, int64_t cols,
                  const float* a, bool by_token, float* y, int64_t ldy) {
    moe::GemmArgs g;
    g.w = static_cast<const uint8_t*>(w.data);
    g.row_stride = w.row_stride;
    g.expert_stride = w.row_stride * static_cast<size_t>(rows_per_expert);
    g.cols = cols;
    g.rows = rows_per_expert;
    g.a = a;
    g.lda = cols;
    g.by_token = by_token;
    g.perm = perm;
    g.k = k;
    g.off = off;
    g.tile_off = tile_off;
    g.E = E;
    g.y = y;
    g.ldy = ldy;
    return st(what, moe::launch_moe_gemm(w.type, g, S, cs));
  };
  if (absl::Status r = gemm("moe_gemm gate", gate, gate_rows, H, x, true, gu, 2 * I); !r.ok())
    return r;
  if (up)
    if (absl::Status r = gemm("moe_gemm up", *up, I, H, x, true, gu + I, 2 * I); !r.ok()) return r;
  if (absl::Status r = swiglu_rows(gu, 2 * I, gu + I, 2 * I, S, I, h, s); !r.ok()) return r;
  if (absl::Status r = gemm("moe_gemm down", down, H, I, h, false, d, H); !r.ok()) return r;
  if (!out) return absl::OkStatus();  // the caller weights and places the slots itself
  return st("moe_combine", moe::launch_moe_combine(d, H, inv, d_w, k, H, n_tok, out, cs));
}

namespace flash {
cudaError_t launch_flash_prefill(GgmlType kv, const PrefillArgs& a, cudaStream_t s);
}  // namespace flash

absl::Status attention_prefill(const float* q, int64_t T, int64_t nh, int64_t hd, const KvView& k,
                               const KvView& v, int64_t n_past, float scale, float* out,
                               Stream s) {
  const int64_t nkv = k.n_kv_heads;
  if (T < 1 || n_past < 0 || nkv < 1 || nh % nkv != 0 || nh / nkv > flash::kFlashRows ||
      hd % 32 != 0 || hd > flash::kFlashMaxHd || k.head_dim != hd || v.head_dim != hd ||
      v.n_kv_heads != nkv)
    return absl::InvalidArgumentError(absl::StrCat(
        "attention_prefill: unsupported shape: T ", T, ", nh ", nh, ", nkv ", nkv, ", hd ", hd,
        " (hd a multiple of 32 up to ", flash::kFlashMaxHd, ", nh / nkv up to ", flash::kFlashRows,
        ")"));
  if (k.type != v.type || k.head_stride_bytes != 0 || v.head_stride_bytes != 0 ||
      (k.type != GgmlType::F32 && k.type != GgmlType::F16 && k.type != GgmlType::Q8_0))
    return absl::InvalidArgumentError(absl::StrCat("attention_prefill: cache ", type_name(k.type),
                                                   "/", type_name(v.type),
                                                   " (F32, F16 or Q8_0, interleaved heads)"));
  flash::PrefillArgs a;
  a.q = q;
  a.T = T;
  a.nh = nh;
  a.nkv = nkv;
  a.hd = hd;
  a.k = static_cast<const uint8_t*>(k.data);
  a.v = static_cast<const uint8_t*>(v.data);
  a.k_stride = k.pos_stride_bytes;
  a.v_stride = v.pos_stride_bytes;
  a.n_past = n_past;
  a.scale = scale;
  a.out = out;
  return st("attention_prefill", flash::launch_flash_prefill(k.type, a, as_stream(s)));
}

namespace dn {
cudaError_t prepare_dn_chunk(size_t need, size_t* granted);
cudaError_t launch_dn_chunk(const ChunkArgs& a, cudaStream_t s);
}  // namespace dn

absl::Status delta_rule_chunked(const DeltaNetDims& d, const float* q, const float* k,
                                const float* v, const float* g, const float* beta, float* S,
                                float* out, Stream s) {
  if (d.T < 0 || d.Hk < 1 || d.Hv < 1 || d.Hv % d.Hk != 0 || d.dk < 2 || d.dk % 2 != 0 ||
      d.dk > dn::kChunkMaxDk || d.dv < 1)
    return absl::InvalidArgumentError(absl::StrCat(
        "delta_rule_chunked: unsupported shape: Hk ", d.Hk, ", Hv ", d.Hv, ", dk ", d.dk, ", dv ",
        d.dv, " (dk even, at most ", dn::kChunkMaxDk, ")"));
  if (d.T == 0) return absl::OkStatus();
  const size_t need = dn::chunk_smem_bytes(d.dk);
  size_t granted = 0;
  if (auto e = dn::prepare_dn_chunk(need, &granted); e != cudaSuccess)
    return st("delta_rule_chunked", e);
  if (need > granted)
    return absl::FailedPreconditionError(absl::StrCat("delta_rule_chunked: needs ", need,
                                                      " bytes of shared memory per block, the "
                                                      "device grants ", granted));
  dn::ChunkArgs a;
  a.q = q;
  a.k = k;
  a.v = v;
  a.g = g;
  a.beta = beta;
  a.S = S;
  a.out = out;
  a.T = d.T;
  a.Hk = d.Hk;
  a.Hv = d.Hv;
  a.dk = d.dk;
  a.dv = d.dv;
  return st("delta_rule_chunked", dn::launch_dn_chunk(a, as_stream(s)));
}

absl::Status dn_decode(const dn::DecodeArgs& a, int64_t B, Stream s) {
  if (a.yq != nullptr && (a.yds == nullptr || a.dv % 32 != 0))
    return absl::InvalidArgumentError(absl::StrCat(
        "dn_decode: q8 output needs dv a multiple of 32 (dv ", a.dv, ") and yds"));
  if (B < 0 || a.Hk < 1 || a.Hv < a.Hk || a.Hv % a.Hk != 0 || a.K < 1)
    return absl::InvalidArgumentError(absl::StrCat("dn_decode: bad shape: B ", B, ", Hk ", a.Hk,
                                                   ", Hv ", a.Hv, ", K ", a.K));
  if (a.dv < 1 || a.dv > dn::kDecodeThreads || a.dk < 1 ||
      (a.dk + dn::kDecodeThreads / a.dv - 1) / (dn::kDecodeThreads / a.dv) > dn::kDecodeMaxRows)
    return absl::InvalidArgumentError(absl::StrCat(
        "dn_decode: head dims dk ", a.dk, ", dv ", a.dv, " exceed the kernel's tile (dv <= ",
        dn::kDecodeThreads, ", dk <= ", dn::kDecodeMaxRows, " * ", dn::kDecodeThreads,
        " / dv)"));
  if (a.col_split < 1 || a.dv % a.col_split != 0 ||
      (a.col_split > 1 && (a.norm_part == nullptr || a.norm_cnt == nullptr)))
    return absl::InvalidArgumentError(absl::StrCat(
        "dn_decode: col_split ", a.col_split, " must divide dv ", a.dv,
        " (and > 1 needs norm_part and norm_cnt)"));
  if (a.Hk >= 1 && (a.Hv > a.Hk || a.col_split > 1) && a.counters == nullptr)
    return absl::InvalidArgumentError(absl::StrCat(
        "dn_decode: ", a.Hv, " value heads over ", a.Hk, " key heads in ", a.col_split,
        " column groups need the counters"));
  return st("dn_decode", dn::launch_dn_decode(a, B, as_stream(s)));
}

absl::Status add_inplace(float* y, const float* x, int64_t n, Stream s) {
  if (n < 0) return bad("add_inplace", n, 0);
  return st("add_inplace", glue::launch_add(y, x, n, as_stream(s)));
}
absl::Status mul_sigmoid(float* o, const float* gate, int64_t n, Stream s) {
  if (n < 0) return bad("mul_sigmoid", n, 0);
  return st("mul_sigmoid", glue::launch_mul_sigmoid(o, gate, n, as_stream(s)));
}
absl::Status dn_gates(const float* b, const float* al, const float* ssm_a, const float* dt_bias,
                      int64_t n_tok, int64_t Hv, float* g, float* beta, Stream s) {
  if (n_tok < 0 || Hv < 1) return bad("dn_gates", n_tok, Hv);
  return st("dn_gates",
            glue::launch_dn_gates(b, al, ssm_a, dt_bias, n_tok, Hv, g, beta, as_stream(s)));
}
namespace {
// The kernel kind of a KV type (0 F32, 1 F16, 2 Q8_0), after checking n and the row size.
absl::StatusOr<int> KvKind(const char* op, int64_t n, GgmlType type, size_t row_bytes,
                           const int64_t* pos) {
  if (pos == nullptr) return absl::InvalidArgumentError(absl::StrCat(op, ": positions are null"));
  int kind = 0;
  size_t need = static_cast<size_t>(n) * 4;
  if (type == GgmlType::F16) {
    kind = 1;
    need = static_cast<size_t>(n) * 2;
  } else if (type == GgmlType::Q8_0) {
    kind = 2;
    if (n % 32 != 0)
      return absl::InvalidArgumentError(absl::StrCat(op, ": q8_0 needs n % 32 == 0, n = ", n));
    need = static_cast<size_t>(n / 32) * 34;
  } else if (type != GgmlType::F32) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": KV type ", type_name(type), " (F32, F16 or Q8_0)"));
  }
  if (row_bytes < need)
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": row_bytes ", row_bytes, " < ", need, " for ", n, " values"));
  return kind;
}
}  // namespace

absl::Status kv_store_at(const float* src, int64_t n_tok, int64_t n, GgmlType type, void* dst,
                         size_t row_bytes, const int64_t* pos, Stream s) {
  absl::StatusOr<int> kind = KvKind("kv_store_at", n, type, row_bytes, pos);
  if (!kind.ok()) return kind.status();
  return st("kv_store_at", glue::launch_kv_store(&src, &dst, 1, n_tok, n, *kind, row_bytes, pos,
                                                 as_stream(s)));
}

absl::Status kv_store_kv_at(const float* k, const float* v, int64_t n_tok, int64_t n,
                            GgmlType type, void* K, void* V, size_t row_bytes, const int64_t* pos,
                            Stream s) {
  absl::StatusOr<int> kind = KvKind("kv_store_kv_at", n, type, row_bytes, pos);
  if (!kind.ok()) return kind.status();
  const float* src[2] = {k, v};
  void* dst[2] = {K, V};
  return st("kv_store_kv_at", glue::launch_kv_store(src, dst, 2, n_tok, n, *kind, row_bytes, pos,
                                                    as_stream(s)));
}
absl::Status kv_store_kv_seqs_at(const float* k, const float* v, int64_t n_tok, int64_t n,
                                 GgmlType type, void* const* d_K, void* const* d_V,
                                 size_t row_bytes, const int64_t* pos, Stream s) {
  absl::StatusOr<int> kind = KvKind("kv_store_kv_seqs_at", n, type, row_bytes, pos);
  if (!kind.ok()) return kind.status();
  if (d_K == nullptr || d_V == nullptr)
    return absl::InvalidArgumentError("kv_store_kv_seqs_at: the caches' arrays are null");
  const float* src[2] = {k, v};
  void* const* const tok[2] = {d_K, d_V};
  return st("kv_store_kv_seqs_at", glue::launch_kv_store(src, nullptr, 2, n_tok, n, *kind,
                                                         row_bytes, pos, as_stream(s), tok));
}
absl::Status mask_ids(float* x, int64_t rows, int64_t n, const int32_t* ids, int64_t n_ids,
                      Stream s) {
  if (rows < 0 || n < 1 || n_ids < 0) return bad("mask_ids", rows, n_ids);
  return st("mask_ids", glue::launch_mask_ids(x, rows, n, ids, n_ids, as_stream(s)));
}
absl::Status swiglu_rows(const float* gate, int64_t ldg, const float* up, int64_t ldu,
                         int64_t rows, int64_t n, float* out, Stream s) {
  if (rows < 0 || n < 0 || ldg < n || ldu < n) return bad("swiglu_rows", rows, n);
  return st("swiglu_rows",
            glue::launch_swiglu_rows(gate, ldg, up, ldu, rows, n, out, as_stream(s)));
}
absl::Status add_sigmoid_scaled(float* out, const float* d, const float* sg, int64_t n_tok,
                                int64_t H, Stream s) {
  if (n_tok < 0 || H < 1) return bad("add_sigmoid_scaled", n_tok, H);
  return st("add_sigmoid_scaled",
            glue::launch_add_sigmoid_scaled(out, d, sg, n_tok, H, as_stream(s)));
}
absl::Status add_rms_norm(float* hidden, const float* m, const float* w, int64_t rows, int64_t n,
                          float eps, float* y, Stream s) {
  if (rows < 0 || n < 1) return bad("add_rms_norm", rows, n);
  return st("add_rms_norm",
            glue::launch_add_rms_norm(hidden, m, w, rows, n, eps, y, nullptr, nullptr,
                                      as_stream(s)));
}
absl::Status attn_prep(const float* qg, int64_t n_tok, int64_t nh, int64_t nkv, int64_t hd,
                       int64_t n_rot, const float* q_norm, const float* k_norm,
                       const int64_t* d_pos, float theta, float eps, float* q, float* gate,
                       float* k, Stream s) {
  if (n_tok < 0 || nh < 1 || nkv < 1 || hd < 2 || hd > glue::kAttnPrepMaxDim || n_rot < 0 ||
      n_rot > hd || n_rot % 2 != 0)
    return absl::InvalidArgumentError(absl::StrCat(
        "attn_prep: n_tok ", n_tok, ", heads ", nh, "/", nkv, ", head_dim ", hd, " (at most ",
        glue::kAttnPrepMaxDim, "), n_rot ", n_rot, " (even, at most head_dim)"));
  glue::AttnPrepArgs a;
  a.qg = qg;
  a.q = q;
  a.gate = gate;
  a.k = k;
  a.q_norm = q_norm;
  a.k_norm = k_norm;
  a.pos = d_pos;
  a.n_tok = n_tok;
  a.nh = nh;
  a.nkv = nkv;
  a.hd = hd;
  a.n_rot = n_rot;
  a.eps = eps;
  a.theta = theta;
  return st("attn_prep", glue::launch_attn_prep(a, as_stream(s)));
}

absl::Status gather_rows(float* dst, const int32_t* dst_rows, const float* src, const int32_t* rows, const float* scale,
                         int64_t n, int64_t width, Stream s) {
  if (n < 0 || width < 0 || n > 0x7fffffff || width > (int64_t{1} << 30) ||
      (n > 0 && width > 0 && (dst == nullptr || src == nullptr || rows == nullptr)))
    return absl::InvalidArgumentError(
        absl::StrCat("gather_rows: ", n, " rows of ", width, " floats (null pointer or out of range)"));
  return st("gather_rows", glue::launch_gather_rows(dst, dst_rows, src, rows, scale, n, width, as_stream(s)));
}

absl::Status combine_slots(float* hidden, const float* rows, const int32_t* slot_row,
                           const float* ffn, int64_t n_tok, int64_t k, int64_t H, Stream s) {
  if (n_tok < 0 || k < 0 || H < 0 || n_tok > 0x7fffffff || H > (int64_t{1} << 30) ||
      (n_tok > 0 && H > 0 && (hidden == nullptr || (k > 0 && (rows == nullptr || slot_row == nullptr)))))
    return absl::InvalidArgumentError(absl::StrCat("combine_slots: ", n_tok, " tokens, k ", k,
                                                   ", H ", H, " (null pointer or out of range)"));
  return st("combine_slots",
            glue::launch_combine_slots(hidden, rows, slot_row, ffn, n_tok, k, H, as_stream(s)));
}

absl::Status mul_sigmoid_q8(float* o, const float* gate, int64_t n_tok, int64_t cols, void* ws,
                            size_t ws_bytes, DeviceAct* out, Stream s) {
  absl::StatusOr<DeviceAct> a = act_q8_layout("mul_sigmoid_q8", o, cols, n_tok, cols, ws, ws_bytes);
  if (!a.ok()) return a.status();
  if (absl::Status e = st("mul_sigmoid_q8",
                          glue::launch_gate_q8(o, gate, n_tok * cols, const_cast<int8_t*>(a->q),
                                               const_cast<float*>(a->ds), as_stream(s)));
      !e.ok())
    return e;
  *out = *a;
  return absl::OkStatus();
}

absl::Status swiglu_q8(float* g, const float* up, int64_t n_tok, int64_t cols, void* ws,
                       size_t ws_bytes, DeviceAct* out, Stream s) {
  absl::StatusOr<DeviceAct> a = act_q8_layout("swiglu_q8", g, cols, n_tok, cols, ws, ws_bytes);
  if (!a.ok()) return a.status();
  if (absl::Status e = st("swiglu_q8",
                          glue::launch_swiglu_q8(g, up, n_tok * cols, const_cast<int8_t*>(a->q),
                                                 const_cast<float*>(a->ds), as_stream(s)));
      !e.ok())
    return e;
  *out = *a;
  return absl::OkStatus();
}

absl::Status add_rms_norm_q8(float* hidden, const float* m, const float* w, int64_t rows,
                             int64_t n, float eps, float* y, void* ws, size_t ws_bytes,
                             DeviceAct* out, Stream s) {
  absl::StatusOr<DeviceAct> a = act_q8_layout("add_rms_norm_q8", y, n, rows, n, ws, ws_bytes);
  if (!a.ok()) return a.status();
  if (absl::Status e = st("add_rms_norm_q8",
                          glue::launch_add_rms_norm(hidden, m, w, rows, n, eps, y,
                                                    const_cast<int8_t*>(a->q),
                                                    const_cast<float*>(a->ds), as_stream(s)));
      !e.ok())
    return e;
  *out = *a;
  return absl::OkStatus();
}
absl::Status dn_prep(const float* cv, int64_t n_tok, int64_t Hk, int64_t dk, int64_t VD,
                     float q_scale, float* q, float* k, float* v, Stream s) {
  if (n_tok < 0 || Hk < 1 || dk < 1 || VD < 0 || VD % Hk != 0)
    return absl::InvalidArgumentError(absl::StrCat("dn_prep: n_tok ", n_tok, ", Hk ", Hk, ", dk ",
                                                   dk, ", VD ", VD, " (a multiple of Hk)"));
  return st("dn_prep",
            glue::launch_dn_prep(cv, n_tok, Hk, dk, VD, q_scale, q, k, v, as_stream(s)));
}
size_t argmax_workspace_bytes(int64_t rows, int64_t n) {
  return glue::argmax_workspace_bytes(rows, n);
}
absl::Status argmax_rows(const float* x, int64_t rows, int64_t n, int32_t* ids, Stream s,
                         void* ws, size_t ws_bytes) {
  if (rows < 0 || n < 1 || n > INT32_MAX) return bad("argmax_rows", rows, n);
  return st("argmax_rows",
            glue::launch_argmax_rows(x, rows, n, ids, ws, ws_bytes, as_stream(s)));
}

}  // namespace rs::cuda
