// The model's ops, CPU side. Every op has a reference version (`*_ref`: plain loops, fp32, the
// definition of right) and a fast CPU version (`*_cpu`: SIMD and/or threads) with the same
// signature; tests compare them on random inputs at awkward sizes. The CUDA twins live in
// kernels/cuda/ and are checked against the `_ref` functions. Shapes are row-major; names
// follow ../shared/spec/qwen35.md (H hidden, hd head dim, Hk/Hv DeltaNet key/value heads,
// dk/dv DeltaNet head dims).
#pragma once

#include <cstdint>

#include "kernels/formats.h"

namespace rs {

// ---- norms ---------------------------------------------------------------------------------
// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w        for r < rows, each row of length n.
// (GGUF norms already hold 1+w; y may alias x.)
void rms_norm_ref(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* y);
void rms_norm_cpu(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* y);

// DeltaNet output norm: y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w * silu(z[r]).
void rms_norm_gated_ref(const float* x, const float* w, const float* z, int64_t rows, int64_t n,
                        float eps, float* y);
void rms_norm_gated_cpu(const float* x, const float* w, const float* z, int64_t rows, int64_t n,
                        float eps, float* y, int n_threads = 1);

// x[r] *= 1 / sqrt(sum(x[r]^2) + eps), in place (HF/FLA form of the L2 norm).
void l2_norm_ref(float* x, int64_t rows, int64_t n, float eps);

// ---- attention pieces ------------------------------------------------------------------------
// NeoX RoPE on the first n_rot dims of each head, in place. x is [n_tok][n_heads][head_dim];
// token t has position pos[t]. Pair (d, d + n_rot/2); angle = pos * theta^(-2d/n_rot) in fp32.
void rope_neox_ref(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                   const int64_t* pos, float theta);

// KV cache of one attention layer of one sequence: positions [0, n) of n_kv_heads x head_dim.
// Interleaved (head_stride_bytes == 0): element (p, h, d) at base + p * pos_stride + (h *
// head_dim + d) in units of the type (F32 / F16), or for Q8_0 in blocks of 32 along the row.
// Head-major (head_stride_bytes > 0): at base + h * head_stride + p * pos_stride + d (Q8_0:
// blocks of 32 along d). The CPU model keeps each head's positions contiguous, so a decode step
// streams each head's cache in order (1.7-2.2x faster from memory than the interleaved rows,
// which a head reads as 256 of every 512 bytes); the GPU cache is interleaved.
struct KvView {
  GgmlType type = GgmlType::F16;   // F32, F16 or Q8_0
  const void* data = nullptr;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  size_t pos_stride_bytes = 0;     // bytes from position p to p+1
  size_t head_stride_bytes = 0;    // bytes from KV head h to h+1 (0: interleaved)
};

// Causal GQA attention for the T newest tokens of one sequence. q is [T][nh][hd]; the token t
// sits at position n_past + t and attends to cache positions [0, n_past + t]. Query head h
// reads KV head h / (nh / nkv). out is [T][nh][hd]. Softmax in fp32.
void attention_ref(const float* q, int64_t T, int64_t nh, int64_t hd, const KvView& k,
                   const KvView& v, int64_t n_past, float scale, float* out);
void attention_cpu(const float* q, int64_t T, int64_t nh, int64_t hd, const KvView& k,
                   const KvView& v, int64_t n_past, float scale, float* out, int n_threads);

// ---- Gated DeltaNet -----------------------------------------------------------------------
// Causal depthwise conv1d over time + SiLU. u is [T][C] (pre-conv inputs), w is [C][K] (tap K-1
// multiplies the current token), state is [K-1][C] (the K-1 previous inputs, oldest first; zeros
// for a new sequence) and is updated to the last K-1 inputs. out is [T][C].
void conv1d_silu_ref(const float* u, int64_t T, int64_t C, const float* w, int64_t K,
                     float* state, float* out);
// Fast CPU: channels in pieces over the pool (n_threads), no allocation once warm.
void conv1d_silu_cpu(const float* u, int64_t T, int64_t C, const float* w, int64_t K,
                     float* state, float* out, int n_threads = 1);

// Gated delta rule over T tokens of one sequence (spec §3.4 / §4).
//   q, k: [T][Hk][dk] (already L2-normed; q also scaled by dk^-0.5)
//   v:    [T][Hv][dv];   g, beta: [T][Hv]  (g <= 0 is the log decay, beta in (0,1))
//   S:    [Hv][dk][dv] fp32 recurrent state, updated in place
//   out:  [T][Hv][dv]
// Value head h reads key head h % Hk (GGUF tiled order).
struct DeltaNetDims {
  int64_t T, Hk, Hv, dk, dv;
};
// Token-by-token recurrence: the definition.
void delta_rule_recurrent_ref(const DeltaNetDims& d, const float* q, const float* k,
                              const float* v, const float* g, const float* beta, float* S,
                              float* out);
// Chunked form (chunk C = 64), plain loops; must equal the recurrence up to rounding.
void delta_rule_chunked_ref(const DeltaNetDims& d, const float* q, const float* k, const float* v,
                            const float* g, const float* beta, float* S, float* out);
// Fast CPU: recurrence for small T, chunked for long T; heads over threads.
void delta_rule_cpu(const DeltaNetDims& d, const float* q, const float* k, const float* v,
                    const float* g, const float* beta, float* S, float* out, int n_threads);
// The fast chunked form alone, at any T (tests; delta_rule_cpu picks it for long inputs).
void delta_rule_chunked_cpu(const DeltaNetDims& d, const float* q, const float* k,
                            const float* v, const float* g, const float* beta, float* S,
                            float* out, int n_threads);

// ---- FFN / MoE pieces --------------------------------------------------------------------------
// out[i] = silu(gate[i]) * up[i]
void swiglu_ref(const float* gate, const float* up, int64_t n, float* out);
// Fast CPU: vectorised exp (relative error < 2e-7 against expf), pieces over the pool; out may
// alias gate.
void swiglu_cpu(const float* gate, const float* up, int64_t n, float* out, int n_threads);
// The attention output gate: out[i] *= sigmoid(gate[i]). Reference and fast CPU.
void sigmoid_mul_ref(const float* gate, int64_t n, float* out);
void sigmoid_mul_cpu(const float* gate, int64_t n, float* out, int n_threads);
// Router: softmax over E logits (fp32), the k largest (ties: lower index first), weights
// renormalised over the chosen k. ids/weights are [k], sorted by descending probability.
void router_topk_ref(const float* logits, int64_t E, int64_t k, int32_t* ids, float* weights);

inline float silu(float x) { return x / (1.0f + __builtin_expf(-x)); }
inline float sigmoidf(float x) { return 1.0f / (1.0f + __builtin_expf(-x)); }
inline float softplusf(float x) { return x > 20.0f ? x : __builtin_log1pf(__builtin_expf(x)); }

}  // namespace rs
