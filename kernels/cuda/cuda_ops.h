// The CUDA twins of kernels/ops.h and kernels/matmul.h, as a plain C++ API that g++ can include
// (no CUDA types: a stream is a `void*` holding a cudaStream_t, nullptr = the legacy default
// stream). Every pointer argument named `d_*` or documented as "device" lives in device memory;
// WeightView::data and KvView::data are device pointers here. All ops are enqueued on the given
// stream and return once launched; the Status reports bad arguments (naming the numbers) and
// launch errors. Semantics are exactly those of the `_ref` functions in kernels/ops.h and
// kernels/matmul.h, which the tests in tests/cuda/ compare against.
//
// Nothing here allocates during an op: ops that need scratch take a workspace and say how big
// it must be (`*_workspace_bytes`).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/formats.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace rs::cuda {

using Stream = void*;  // cudaStream_t

// ---- device probe and memory ----------------------------------------------------------------
// True when at least one CUDA device can be used; otherwise false and *why says why (the CUDA
// error, e.g. "cudaGetDeviceCount: error 35 (CUDA driver version is insufficient...)").
bool cuda_available(std::string* why = nullptr);
// The number of usable CUDA devices (0 where cuda_available is false).
int device_count();

struct DeviceInfo {
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  size_t total_mem = 0;
  size_t free_mem = 0;
  size_t l2_bytes = 0;
  int mem_bus_bits = 0;
};
absl::StatusOr<DeviceInfo> device_info(int device = 0);

// Owning device allocation (cudaMalloc / cudaFree). Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> alloc(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return p_; }
  template <class T> T* as() const { return static_cast<T*>(p_); }
  size_t size() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

absl::Status copy_to_device(void* d_dst, const void* src, size_t bytes, Stream s = nullptr);
absl::Status copy_to_host(void* dst, const void* d_src, size_t bytes, Stream s = nullptr);
absl::Status copy_device(void* d_dst, const void* d_src, size_t bytes, Stream s = nullptr);
absl::Status fill_bytes(void* d_dst, int value, size_t bytes, Stream s = nullptr);
absl::Status synchronize(Stream s = nullptr);
absl::StatusOr<Stream> create_stream();
void destroy_stream(Stream s);

// Device-event timer: start()/stop() enqueue events on the stream; elapsed_ms() waits for stop.
class EventTimer {
 public:
  EventTimer();
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  absl::Status start(Stream s = nullptr);
  absl::Status stop(Stream s = nullptr);
  absl::StatusOr<float> elapsed_ms();

 private:
  void* a_ = nullptr;
  void* b_ = nullptr;
};

// ---- programmatic dependent launch -------------------------------------------------------------
// Whether the current device can start a kernel's blocks before the previous kernel in the
// stream ends (sm_90 and later) and the loaded kernels were compiled for it (PTX 9.0 or later:
// their wait for the previous kernel, kernels/cuda/pdl.h).
bool programmatic_launch_supported();
// Every later launch of this library asks for it (on) or not (off, the default); on takes
// effect only where the current device supports it. Each kernel waits for the one before it
// first, so results are the same either way; what changes is the gap between kernels. A CUDA
// graph keeps the choice it was captured with.
void set_programmatic_launch(bool on);
bool programmatic_launch();

// ---- launch profile (benchmarks) --------------------------------------------------------------
// Where a step's device time goes. profile_begin(s) queues a kernel that holds stream s for
// hold_ms, then every checked entry point of this library (kernels, copies, fills) records an
// event on s after its launch, tagged with its name, until profile_end(): so the work the host
// queues meanwhile runs back to back once the hold ends, and the time between an entry point's
// event and the one before it is its kernels' own device time (plus the device's gap between
// launches), not the host's launch overhead. One profile at a time, for work queued on s by
// the calling thread; a CUDA graph replays without marks (run the profiled step without one).
struct LaunchTime {
  std::string name;
  int64_t calls = 0;
  double ms = 0;  // device time, all calls
};
struct LaunchProfile {
  std::vector<LaunchTime> rows;  // by descending time
  double total_ms = 0;           // hold end to the last mark
  int64_t marks = 0;
  double host_queue_ms = 0;      // the host's time to queue the work (up to its first wait)
  // The host took longer to queue the work than the hold lasted (or ran out of marks): the
  // times then include waits for the host.
  bool host_bound = false;
};
absl::Status profile_begin(Stream s, double hold_ms = 40.0, int64_t max_marks = 8192);
// Labels the marks that follow ("scope/entry point" in the rows) until the next call; nullptr
// clears it. `label` must outlive the profile (a string literal). Costs nothing without one.
void profile_scope(const char* label);
absl::StatusOr<LaunchProfile> profile_end();

// Reads `bytes` (a multiple of 16) with 16-byte loads and writes one float per block to
// d_sink (at least 4096 floats), so that the reads cannot be optimised away. For measuring
// the read bandwidth.
absl::Status read_sweep(const void* d_data, size_t bytes, float* d_sink, Stream s = nullptr);

// Fills `bytes` of device memory with pseudo-random bytes (a hash of seed and offset): test and
// benchmark data that is neither zeros nor a repeating pattern.
absl::Status fill_random(void* d_data, size_t bytes, uint64_t seed, Stream s = nullptr);

// ---- quantised matvec (decode) and matmul (prefill) -------------------------------------------
// Y[t][r] = sum_c W[r][c] X[t][c], as matmul_ref.
constexpr int64_t kMaxMatvecTokens = 8;

// Types with a CUDA matvec and matmul: F32 F16 BF16 Q8_0 Q4_0 Q4_K Q5_K Q6_K IQ4_XS.
bool cuda_supports(GgmlType t);
// Whether the type's matvec reads q8-quantised activations (integer dot products, dp4a) rather
// than the f32 activations.
bool matvec_uses_q8(GgmlType t);

// Activations prepared for matvec: f32 rows plus, for the integer formats, the q8 copy (blocks
// of 32: int8 q[cols] per token and float {d, sum(x)} per block; x ~= d * q).
struct DeviceAct {
  const float* x = nullptr;  // [n_tok][ldx]
  int64_t ldx = 0;
  const int8_t* q = nullptr;  // [n_tok][cols] or nullptr when not quantised
  const float* ds = nullptr;  // [n_tok][cols / 32][2]
  int64_t cols = 0;
  int64_t n_tok = 0;
};
// Workspace for quantize_act: n_tok * (cols + cols / 32 * 8) bytes (rounded up to 256).
size_t act_q8_bytes(int64_t cols, int64_t n_tok);
// The q8 activations' place in such a workspace (quantize_act's, and the fused kernels' that
// write q8 for the next matvec): q [n_tok][cols] at ws, {d, sum} at the next 256-byte boundary.
// Checks cols (a multiple of 32), n_tok, the size and alignment (InvalidArgument naming `op`).
absl::StatusOr<DeviceAct> act_q8_layout(const char* op, const float* x, int64_t ldx,
                                        int64_t n_tok, int64_t cols, void* ws, size_t ws_bytes);
// Quantises X (cols a multiple of 32) into the workspace; fills *out (x/ldx included).
absl::Status quantize_act(const float* x, int64_t ldx, int64_t n_tok, int64_t cols, void* ws,
                          size_t ws_bytes, DeviceAct* out, Stream s = nullptr);

// Matvec for 1..kMaxMatvecTokens tokens with prepared activations (one activation set can feed
// several matrices: qkv, gate, alpha, beta). out rows: y[t * ldy + r].
absl::Status matvec(const WeightView& w, const DeviceAct& a, float* y, int64_t ldy,
                    Stream s = nullptr);
// Several matrices over the same activations (DeltaNet's qkv, gate, beta, alpha; attention's
// q, k, v; the router and the shared expert's gate) in as few launches as their types allow:
// each run of up to 4 consecutive matrices of one type is one launch.
struct MatvecOut {
  const WeightView* w = nullptr;
  float* y = nullptr;
  int64_t ldy = 0;
};
absl::Status matvec_multi(const MatvecOut* outs, size_t n, const DeviceAct& a,
                          Stream s = nullptr);

// Prefill matmul on tensor cores (f16 inputs, f32 accumulation): weight tiles dequantised into
// shared memory. Any n_tok >= 1.
absl::Status matmul_tc(const WeightView& w, const float* x, int64_t ldx, int64_t n_tok, float* y,
                       int64_t ldy, Stream s = nullptr);

// Convenience: n_tok <= kMaxMatvecTokens -> quantize_act + matvec; else matmul_tc. ws as
// matmul_workspace_bytes (0 when only matmul_tc is used).
size_t matmul_workspace_bytes(GgmlType t, int64_t cols, int64_t n_tok);
absl::Status matmul(const WeightView& w, const float* x, int64_t ldx, int64_t n_tok, float* y,
                    int64_t ldy, void* ws, size_t ws_bytes, Stream s = nullptr);

// ---- MoE (decode, one token) -------------------------------------------------------------------
// `experts` is a stacked 3-D expert tensor seen as rows = E * rows_per_expert (GGUF {cols, I, E}).
// d_ids: n_sel expert ids on the device (from router_topk); no host round trip.
// up:   y[i][r] = W[ids[i]][r] . x          (a: 1 token; y: [n_sel][rows_per_expert])
absl::Status moe_matvec_up(const WeightView& experts, int64_t rows_per_expert,
                           const int32_t* d_ids, int64_t n_sel, const DeviceAct& a, float* y,
                           Stream s = nullptr);
// down: y[r] (+)= sum_i weights[i] * (W[ids[i]][r] . x_i)   (a: n_sel tokens, token i = x_i).
// The sum over i runs in a fixed order (deterministic, no atomics).
absl::Status moe_matvec_down(const WeightView& experts, int64_t rows_per_expert,
                             const int32_t* d_ids, const float* d_weights, int64_t n_sel,
                             const DeviceAct& a, float* y, bool accumulate, Stream s = nullptr);

// Fused MoE decode (kernels/cuda/moe_decode_kernel.cuh): the routed experts of n_tok tokens and,
// with sh_gate set, the shared expert, in two launches and nothing in between:
//   out[t] (+)= sum_i w[t][i] * down_e(silu(gate_e x_t) * up_e x_t)   (e = ids[t][i], i < k;
//               a negative id is skipped)
//             + sigmoid(sh_logit[t]) * sh_down(silu(sh_gate x_t) * sh_up x_t).
// gate: E experts of I rows (up == nullptr: gate|up fused, 2I rows each), down: E experts of H
// rows of I; sh_gate, sh_up: Is rows of H and sh_down: H rows of Is, each of its routed
// counterpart's type (moe_decode_shared_fits). x: the tokens (ldx == cols; q8 when the gate type
// reads q8). Scratch: h of n_slots * moe_decode_ldh(I, Is) floats and ws of
// moe_decode_workspace_bytes(n_slots, ldh), n_slots = n_tok * (k + 1 with a shared expert, else
// k). The per-token sum runs in slot order (deterministic). Afterwards ws holds h's q8 blocks
// (integer down types) where act_q8_layout(h, ldh, n_slots, ldh, ws) puts them.
struct MoeDecodeWeights {
  const WeightView* gate = nullptr;
  const WeightView* up = nullptr;
  const WeightView* down = nullptr;
  const WeightView* sh_gate = nullptr;  // nullptr: no shared expert in the call
  const WeightView* sh_up = nullptr;
  const WeightView* sh_down = nullptr;
};
constexpr int64_t kMoeDecodeMaxSlots = 24;  // k (+ 1 with a shared expert) per token at most
int64_t moe_decode_ldh(int64_t I, int64_t Is);
size_t moe_decode_workspace_bytes(int64_t n_slots, int64_t ldh);
// Whether a shared expert can run inside moe_decode next to these routed experts (same types).
bool moe_decode_shared_fits(const WeightView& gate, const WeightView& down,
                            const WeightView& sh_gate, const WeightView& sh_up,
                            const WeightView& sh_down);
absl::Status moe_decode(const MoeDecodeWeights& w, int64_t E, int64_t I, int64_t Is,
                        const DeviceAct& x, const int32_t* d_ids, const float* d_w, int64_t k,
                        const float* d_sh_logit, float* h, void* ws, size_t ws_bytes, float* out,
                        bool accumulate, Stream s = nullptr);

// ---- dense FFN (decode) -----------------------------------------------------------------------
// h[t] = silu(gate . x_t) * (up . x_t) for 1..kMaxMatvecTokens tokens in one launch
// (kernels/cuda/ffn_up_kernel.cuh): each weight unit read once for all tokens, as matvec reads
// it. With q8_out, also h's q8 blocks (the bits quantize_act would give) in ws at
// act_q8_layout(h, ldh, n_tok, I, ws): *h_act then feeds the down projection's matvec directly.
// gate and up: I rows of H weights of one type and row stride (ffn_up_fits); x as for matvec.
bool ffn_up_fits(const WeightView& gate, const WeightView& up);
size_t ffn_up_workspace_bytes(int64_t I, int64_t n_tok);
absl::Status ffn_up(const WeightView& gate, const WeightView& up, const DeviceAct& x, float* h,
                    int64_t ldh, bool q8_out, void* ws, size_t ws_bytes, DeviceAct* h_act,
                    Stream s = nullptr);

// ---- ops (same semantics as kernels/ops.h) ---------------------------------------------------
absl::Status rms_norm(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* y,
                      Stream s = nullptr);
absl::Status rms_norm_gated(const float* x, const float* w, const float* z, int64_t rows,
                            int64_t n, float eps, float* y, Stream s = nullptr);
absl::Status l2_norm(float* x, int64_t rows, int64_t n, float eps, Stream s = nullptr);
// d_pos: n_tok positions on the device.
absl::Status rope_neox(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                       const int64_t* d_pos, float theta, Stream s = nullptr);

// Attention (split-K over the cache: each (token, head) is cut into chunks of kv positions whose
// partial softmax states are merged by a second kernel). KV types: F32, F16, Q8_0.
size_t attention_workspace_bytes(int64_t T, int64_t nh, int64_t hd, int64_t n_past);
// gqa: the first pass reads each K/V row once per KV head for all its query heads (a block per
// (token, KV head, chunk), attn_gqa_kernel.cuh; groups of 2..16 query heads) instead of once
// per query head; the same records and merge.
absl::Status attention(const float* q, int64_t T, int64_t nh, int64_t hd, const KvView& k,
                       const KvView& v, int64_t n_past, float scale, float* out, void* ws,
                       size_t ws_bytes, Stream s = nullptr, bool gqa = false);
// As attention, but token t's causal end comes from the device: it attends to positions
// [0, d_pos[t]] (d_pos[t] < max_ctx), and the split is sized for max_ctx positions, so the
// launch does not depend on the sequence's length (the CUDA graph of a decode step replays it).
// Workspace: attention_workspace_bytes(T, nh, hd, max_ctx - T).
absl::Status attention_at(const float* q, int64_t T, int64_t nh, int64_t hd, const KvView& k,
                          const KvView& v, const int64_t* d_pos, int64_t max_ctx, float scale,
                          float* out, void* ws, size_t ws_bytes, Stream s = nullptr,
                          bool gqa = false);

// As attention_at for T tokens of T different sequences (a decode batch), in one launch pair
// instead of one per sequence: token t's cache is d_k[t] / d_v[t] (device arrays of T cache
// bases; k and v give the type, heads and strides, their data unused), and it attends to its
// positions [0, d_pos[t]] (d_pos[t] < max_ctx, the largest capacity among them). Workspace:
// attention_seqs_workspace_bytes(T, nh, hd, max_ctx).
size_t attention_seqs_workspace_bytes(int64_t T, int64_t nh, int64_t hd, int64_t max_ctx);
absl::Status attention_seqs_at(const float* q, int64_t T, int64_t nh, int64_t hd,
                               const KvView& k, const KvView& v, const void* const* d_k,
                               const void* const* d_v, const int64_t* d_pos, int64_t max_ctx,
                               float scale, float* out, void* ws, size_t ws_bytes,
                               Stream s = nullptr, bool gqa = false);

absl::Status conv1d_silu(const float* u, int64_t T, int64_t C, const float* w, int64_t K,
                         float* state, float* out, Stream s = nullptr);
// Gated delta rule, any T (token by token per head; equal to delta_rule_recurrent_ref and to the
// chunked form up to rounding). dk, dv <= 128 and multiples of 32... see cuda_ops.cc for limits.
absl::Status delta_rule(const DeltaNetDims& d, const float* q, const float* k, const float* v,
                        const float* g, const float* beta, float* S, float* out,
                        Stream s = nullptr);

absl::Status swiglu(const float* gate, const float* up, int64_t n, float* out, Stream s = nullptr);
// n_tok rows of E logits -> ids/weights [n_tok][k], as router_topk_ref per row. E <= 1024, k <= 32.
// router_topk fused with the router's matvec for decode (n_tok <= kMaxMatvecTokens): logits =
// router . x (F32 weights, E <= 1024 rows) and, with sh_gate (one F32 row), sh_logit = sh_gate . x,
// then the top-k, in one launch: the block that finishes its rows last runs the top-k. The
// logits equal matvec's (the same dot order), so the choice equals matvec + router_topk's.
// counter: one device int, 0 before and after.
absl::Status router_fused(const WeightView& router, const WeightView* sh_gate, const float* x,
                          int64_t n_tok, int64_t k, float* logits, float* sh_logit, int32_t* ids,
                          float* weights, int* counter, Stream s = nullptr);
absl::Status router_topk(const float* logits, int64_t n_tok, int64_t E, int64_t k, int32_t* ids,
                         float* weights, Stream s = nullptr);
// out[t][:] = dequantised row d_ids[t] of `table` (token_embd), cols floats per token.
absl::Status embedding_lookup(const WeightView& table, const int32_t* d_ids, int64_t n_tok,
                              float* out, Stream s = nullptr);

}  // namespace rs::cuda
