// The CUDA backend of the Qwen3.5 model (--backend cuda): the weights bound by Model::Bind are
// uploaded once at load (one cudaMalloc per tensor, refused up front with the numbers when they
// do not fit), each sequence keeps its KV cache and DeltaNet state on the device, and Forward
// runs the same steps as the CPU forward pass in model.cc with the ops of kernels/cuda (every
// one tested against its CPU reference). Steps of more than kMaxStepTokens tokens run as
// several sub-steps; no allocation happens inside a step unless a sequence outgrows the
// context it was sized for (then its cache doubles, and the log says so).
//
// Built only with CUDA (RIGSERVE_HAVE_CUDA); without it CreateCudaBackend says so.
#include "worker/model_internal.h"

#ifndef RIGSERVE_HAVE_CUDA
namespace rs {
absl::StatusOr<std::unique_ptr<CudaBackend>> CreateCudaBackend(const Model&) {
  return absl::UnimplementedError(
      "this rigserve was built without CUDA (nvcc was not found at configure time); use "
      "--backend cpu");
}
}  // namespace rs
#else

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cuda/cuda_glue.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_sampler.h"
#include "kernels/cuda/dn_chunk_types.h"
#include "kernels/cuda/flash_prefill_types.h"
#include "worker/buffer_pool.h"

namespace rs {

#define RS_CU(expr)                               \
  do {                                            \
    if (absl::Status st_ = (expr); !st_.ok()) return st_; \
  } while (0)

namespace {

constexpr int64_t kMaxStepTokens = 512;  // tokens per device sub-step
constexpr int64_t kMaxLogitRows = 64;    // LM-head rows per launch
constexpr int64_t kGroupedMoeTokens = 16;  // prefill steps from this size group the experts
constexpr int64_t kMoeDecodeChunk = 16;    // tokens per fused MoE decode call
constexpr int64_t kFlashPrefillTokens = 2;  // pieces from this size use the flash prefill kernel
constexpr int64_t kChunkedDeltaTokens = 32;  // pieces from this size run the chunked delta rule
// A decode batch's attention runs in one launch pair while its split-K workspace (every token's
// chunk records over the largest capacity) stays below this; beyond (hundreds of sequences at
// long contexts) it runs per sequence, reusing one sequence's workspace.
constexpr size_t kBatchedAttnWorkspace = size_t{128} << 20;

size_t Align256(size_t n) { return (n + 255) / 256 * 256; }

// Device weights of one layer (same fields as Model::Layer, device pointers).
struct DevLayer {
  LayerKind kind = LayerKind::kDeltaNet;
  const float* attn_norm = nullptr;
  const float* post_norm = nullptr;
  WeightView wq, wk, wv, wo;
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
  WeightView qkv, gate, beta, alpha, ssm_out;
  const float* conv1d = nullptr;
  const float* dt_bias = nullptr;
  const float* ssm_a = nullptr;
  const float* ssm_norm = nullptr;
  WeightView ffn_gate, ffn_up, ffn_down;
  WeightView router, gate_exps, up_exps, down_exps;
  bool fused_gate_up = false;
  WeightView shexp_gate_inp, shexp_gate, shexp_up, shexp_down;
};

}  // namespace

class CudaModel;

// One sequence's device state: [conv states][ssm states][K and V caches of `cap` positions].
using StatePool = BufferPool<cuda::DeviceBuffer>;

class CudaSeqState : public SeqState::DeviceState {
 public:
  CudaSeqState(CudaModel* m, std::shared_ptr<StatePool> pool) : m_(m), pool_(std::move(pool)) {}
  ~CudaSeqState() override {
    if (pool_ && buf.get()) pool_->Give(std::move(buf));  // recycled, not freed
  }
  void reset() override;
  std::unique_ptr<DeviceState> clone() const override;

  CudaModel* m_;
  std::shared_ptr<StatePool> pool_;
  cuda::DeviceBuffer buf;
  int64_t cap = 0;
};

// The RowMemory of a CUDA backend: device scratch buffers, copies and gathers on its stream,
// each waited for (the data communicator runs on its own stream and must see the result).
class CudaRowMemory : public par::RowMemory {
 public:
  CudaRowMemory(int device, cuda::Stream s)
      : device_(device), stream_(s), name_(absl::StrCat("cuda:", device)) {}
  absl::StatusOr<void*> Scratch(int slot, size_t bytes) override {
    if (slot < 0 || slot >= 8)
      return absl::InvalidArgumentError(absl::StrCat("row memory: scratch slot ", slot, " (0..7)"));
    cuda::DeviceBuffer& b = bufs_[slot];
    if (b.size() < bytes) {
      cudaSetDevice(device_);
      b = cuda::DeviceBuffer();  // the old one goes first
      auto nb = cuda::DeviceBuffer::alloc(std::max(bytes, size_t{1} << 20));
      if (!nb.ok())
        return absl::Status(nb.status().code(),
                            absl::StrCat("the distributed step's ", bytes, "-byte row buffer on ",
                                         name_, ": ", nb.status().message()));
      b = std::move(*nb);
    }
    return b.get();
  }
  absl::Status Upload(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return absl::OkStatus();
    cudaSetDevice(device_);
    RS_CU(cuda::copy_to_device(dst, src, bytes, stream_));
    return cuda::synchronize(stream_);
  }
  absl::Status Download(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return absl::OkStatus();
    cudaSetDevice(device_);
    RS_CU(cuda::copy_to_host(dst, src, bytes, stream_));
    return cuda::synchronize(stream_);
  }
  absl::Status GatherRows(float* dst, const float* src, const int32_t* rows, size_t n,
                          size_t width) override {
    if (n == 0) return absl::OkStatus();
    cudaSetDevice(device_);
    if (idx_.size() < n * 4) {
      idx_ = cuda::DeviceBuffer();
      auto nb = cuda::DeviceBuffer::alloc(std::max(n * 4, size_t{64} << 10));
      if (!nb.ok()) return nb.status();
      idx_ = std::move(*nb);
    }
    RS_CU(cuda::copy_to_device(idx_.get(), rows, n * 4, stream_));
    RS_CU(cuda::gather_rows(dst, nullptr, src, idx_.as<int32_t>(), nullptr,
                            static_cast<int64_t>(n), static_cast<int64_t>(width), stream_));
    return cuda::synchronize(stream_);
  }
  const char* name() const override { return name_.c_str(); }

 private:
  int device_;
  cuda::Stream stream_;
  std::string name_;
  cuda::DeviceBuffer bufs_[8], idx_;
};

class CudaModel : public CudaBackend {
 public:
  explicit CudaModel(const Model& m) : m_(m), c_(m.cfg_) {}
  ~CudaModel() override {
    DropGraphs();
    if (stream_) cuda::destroy_stream(stream_);
  }

  absl::Status Init();
  std::unique_ptr<SeqState::DeviceState> NewState(int64_t reserve_ctx) override;
  absl::Status Forward(absl::Span<const StepItem> batch, std::vector<float>* logits) override {
    return Run(batch, logits, nullptr);
  }
  absl::Status ForwardGreedy(absl::Span<const StepItem> batch, std::vector<int32_t>* ids) override {
    return Run(batch, nullptr, ids);
  }
  absl::Status ForwardSample(absl::Span<const StepItem> batch,
                             absl::Span<const SampleRequest> reqs,
                             std::vector<int32_t>* ids) override {
    sample_reqs_ = reqs;
    sample_next_ = 0;
    absl::Status st = Run(batch, nullptr, ids);
    sample_reqs_ = {};
    return st;
  }
  void SetGraphs(bool on) override { use_graphs_ = on; }
  absl::Status Mixer(absl::Span<const StepItem> batch, int64_t l, float* hidden, float* f,
                     int32_t* ids, float* weights, float* ffn) override;
  bool HoldsExpert(int64_t l, int32_t e) const override {
    return l >= 0 && l < static_cast<int64_t>(expert_local_.size()) && e >= 0 &&
           e < static_cast<int32_t>(expert_local_[l].size()) && expert_local_[l][e] >= 0;
  }
  absl::Status ExpertSlots(int64_t l, const float* x, int64_t n_tok, const int32_t* ids,
                           const float* weights, float* slots) override;
  // Shared by ExpertSlots and ExpertRows: the slots whose expert this device holds (local[s]: its
  // local id, else -1) run through moe_grouped on the device rows dx (uploaded from x_host first
  // when that is not null); bucket row inv[s] of o_moe_d_ then holds slot s's unweighted result.
  // Returns the number of such slots (0: nothing copied or launched). Waits for the stream.
  absl::StatusOr<int64_t> GroupedLocalExperts(int64_t l, int64_t n_tok, const float* x_host,
                                              const float* dx,
                                              const int32_t* ids, const float* weights,
                                              std::vector<int32_t>* local,
                                              std::vector<int32_t>* inv);
  par::RowMemory* Rows() override;
  absl::Status ReserveRows(int world) override;
  float* DeviceHidden() override { return F(o_hidden_); }
  absl::Status MixerOnDevice(absl::Span<const StepItem> batch, int64_t l, int32_t* ids,
                             float* weights) override;
  const float* DeviceF() override { return F(o_a_); }
  absl::Status ExpertRows(int64_t l, const float* x, int64_t n_tok, const int32_t* ids,
                          const float* weights, float* out) override;
  // The shared expert / FFN output is already in o_m_ (MixerOnDevice).
  absl::Status CombineOnDevice(int64_t l, const float* rows, const int32_t* slot_row,
                               int64_t n_tok, int64_t k) override;
  // Uploads the rows of `experts` of the stacked tensor w as one compact device matrix.
  absl::Status UploadExperts(const WeightView& w, int64_t rows_per_expert,
                             const std::vector<int32_t>& experts, WeightView* out);
  void SetGroupedMoeDecode(bool on) override {
    if (on == grouped_decode_) return;
    grouped_decode_ = on;
    DropGraphs();  // captured with the other path
  }
  void SetFusedDeltaNet(bool on) override {
    if (on == fused_dn_on_) return;
    fused_dn_on_ = on;
    DropGraphs();  // captured with the other path
  }
  void SetGqaAttention(bool on) override {
    if (on == gqa_attn_) return;
    gqa_attn_ = on;
    DropGraphs();  // captured with the other path
  }
  absl::StatusOr<Model::CudaProfile> Profile(const std::function<absl::Status()>& step) override {
    cudaSetDevice(device_);
    RS_CU(cuda::profile_begin(stream_));
    const bool graphs = use_graphs_;
    use_graphs_ = false;  // a replayed graph records no marks
    const absl::Status st = step();
    cuda::profile_scope(nullptr);
    absl::StatusOr<cuda::LaunchProfile> p = cuda::profile_end();
    use_graphs_ = graphs;
    if (!st.ok()) return st;
    if (!p.ok()) return p.status();
    Model::CudaProfile out;
    for (const cuda::LaunchTime& r : p->rows) out.rows.push_back({r.name, r.calls, r.ms});
    out.total_ms = p->total_ms;
    out.host_queue_ms = p->host_queue_ms;
    out.launches = p->marks;
    out.host_bound = p->host_bound;
    return out;
  }
  void SetProgrammaticLaunch(bool on) override {
    cudaSetDevice(device_);
    const bool was = cuda::programmatic_launch();
    cuda::set_programmatic_launch(on);
    if (cuda::programmatic_launch() != was) DropGraphs();  // captured with the other kind
  }
  void SetFusedMoeDecode(bool on) override {
    if (on == fused_moe_on_) return;
    fused_moe_on_ = on;
    fused_norm_q8_ = on;
    DropGraphs();  // captured with the other path
  }
  void SetFusedFfnUp(bool on) override {
    if (on == fused_ffn_up_) return;
    fused_ffn_up_ = on;
    DropGraphs();  // captured with the other path
  }

  // Layout of a sequence's device buffer.
  size_t state_bytes() const { return state_bytes_; }
  size_t kv_row() const { return kv_row_; }
  size_t seq_bytes(int64_t cap) const {
    return state_bytes_ + 2 * n_attn_ * Align256(kv_row_ * static_cast<size_t>(cap));
  }
  float* conv(CudaSeqState* s, int64_t i) const {
    return reinterpret_cast<float*>(static_cast<uint8_t*>(s->buf.get()) + i * conv_bytes_);
  }
  float* ssm(CudaSeqState* s, int64_t i) const {
    return reinterpret_cast<float*>(static_cast<uint8_t*>(s->buf.get()) + n_dn_ * conv_bytes_ +
                                    i * ssm_bytes_);
  }
  uint8_t* kv(void* base, int64_t cap, int64_t i, int which) const {
    return static_cast<uint8_t*>(base) + state_bytes_ +
           (2 * i + which) * Align256(kv_row_ * static_cast<size_t>(cap));
  }
  cuda::Stream stream() const { return stream_; }
  absl::Status Grow(CudaSeqState* s, int64_t n_past, int64_t need);
  // A sequence-state buffer of at least `bytes`: a recycled one, else a new allocation.
  absl::StatusOr<cuda::DeviceBuffer> StateBuffer(size_t bytes);

 private:
  struct Piece {
    SeqState* seq;
    const int32_t* tokens;
    int64_t n;
    int rows;  // 0: no logits, 1: last token, 2: every token
  };
  absl::StatusOr<const void*> Upload(const void* host, size_t bytes);
  absl::Status UploadMatrix(const WeightView& w, WeightView* out);
  absl::Status UploadVec(const float* host, int64_t n, const float** out);
  absl::Status Run(absl::Span<const StepItem> batch, std::vector<float>* logits,
                   std::vector<int32_t>* ids);
  absl::Status Step(const std::vector<Piece>& pieces, std::vector<float>* logits,
                    std::vector<int32_t>* ids);
  absl::Status Layers(const std::vector<Piece>& ps, int64_t N, bool graph);
  // What the LM head leaves: logits, an argmax per row, or masked logits for the sampler.
  enum class HeadMode : int { kLogits = 0, kGreedy = 1, kSample = 2 };
  absl::Status Head(const std::vector<int64_t>& rows, size_t i0, int64_t n, HeadMode mode);
  absl::Status RoutedPerToken(const DevLayer& L, const float* f, int64_t N, float* out);
  // Routed + shared experts of a short step through the fused kernels (cuda::moe_decode); with
  // SharedFused, the shared expert's gate logits must be in o_x5_ already.
  absl::Status MoeDecode(const DevLayer& L, const float* f, int64_t N, float* out);
  bool SharedFused(const DevLayer& L) const {
    return cuda::moe_decode_shared_fits(L.gate_exps, L.down_exps, L.shexp_gate, L.shexp_up,
                                        L.shexp_down);
  }
  absl::StatusOr<bool> FusedUp(const WeightView& gate, const WeightView& up,
                               const WeightView& down, const float* f, int64_t N, float* h,
                               cuda::DeviceAct* ha);
  absl::Status DenseFfn(const DevLayer& L, const float* f, int64_t N, float* out);
  absl::Status SharedExpertAdd(const DevLayer& L, const float* f, int64_t N, float* out);
  absl::Status BeginStep(const std::vector<Piece>& ps, bool decode);
  void DropGraphs();
  absl::Status EnsureAttnWorkspace(size_t need);
  // y = W x for n tokens (matvec up to kMaxMatvecTokens tokens, tensor cores above).
  absl::Status Mm(const WeightView& w, const float* x, int64_t n, float* y);
  // Several matrices reading the same activations (quantised once for decode).
  absl::Status MmGroup(const float* x, int64_t n, int64_t cols,
                       std::initializer_list<std::pair<const WeightView*, float*>> outs);
  absl::Status Attention(const DevLayer& L, int64_t ai, const std::vector<Piece>& ps, int64_t N,
                         bool graph);
  absl::Status DeltaNet(const DevLayer& L, int64_t di, const std::vector<Piece>& ps, int64_t N);
  absl::Status Ffn(const DevLayer& L, int64_t N);
  float* F(size_t off) const {
    return reinterpret_cast<float*>(static_cast<uint8_t*>(ws_.get()) + off);
  }

  const Model& m_;
  const ModelConfig& c_;
  int device_ = 0;
  cuda::Stream stream_ = nullptr;
  std::map<const void*, cuda::DeviceBuffer> uploads_;  // host pointer -> device copy
  size_t uploaded_bytes_ = 0;
  std::vector<DevLayer> layers_;
  WeightView token_embd_, output_;
  const float* output_norm_ = nullptr;
  std::vector<int64_t> attn_slot_, dn_slot_;  // layer -> index (or -1)
  int64_t n_attn_ = 0, n_dn_ = 0;
  size_t conv_bytes_ = 0, ssm_bytes_ = 0, state_bytes_ = 0, kv_row_ = 0;
  GgmlType kv_type_ = GgmlType::F16;

  // Workspace (offsets into ws_), sized for kMaxStepTokens.
  cuda::DeviceBuffer ws_, attn_ws_, act_ws_, tok_ws_, moe_ws_, norm_q8_ws_, dn_counters_,
      router_counter_;
  // The distributed step's device path: its RowMemory, and index arrays (ExpertRows, Combine).
  std::unique_ptr<par::RowMemory> rows_;
  cuda::DeviceBuffer idx_buf_;
  absl::StatusOr<int32_t*> Indices(size_t ints);
  // Mixer's work on the device: the residual stream in o_hidden_ (uploaded from hidden_in when
  // not null), f in o_a_, the shared expert / FFN output in o_m_ when `ffn`; ids / weights to
  // the host when not null. Enqueued, not waited for.
  absl::Status MixerDev(absl::Span<const StepItem> batch, int64_t l, const float* hidden_in,
                        int32_t* ids, float* weights, bool ffn);
  // Inside Layers: o_a_'s q8 blocks, made by the norm that wrote o_a_ (x == nullptr: none).
  cuda::DeviceAct pre_;
  // The prepared activations for x (n tokens, cols) when Layers' last norm made them.
  const cuda::DeviceAct* Prepared(const float* x, int64_t n, int64_t cols) const {
    return pre_.x && pre_.q && x == pre_.x && n == pre_.n_tok && cols == pre_.cols ? &pre_
                                                                                   : nullptr;
  }
  // y = [hidden += m]; rms_norm(hidden) * w into o_a_, with its q8 blocks (pre_) for short steps.
  absl::Status NormA(float* hidden, const float* m, const float* w, int64_t N);
  size_t o_hidden_ = 0, o_a_ = 0, o_m_ = 0, o_x1_ = 0, o_x2_ = 0, o_x3_ = 0, o_x4_ = 0,
         o_x5_ = 0, o_x6_ = 0, o_x7_ = 0, o_x8_ = 0, o_x9_ = 0, o_logits_ = 0,
         o_moe_d_ = 0, o_moe_h_ = 0;
  int32_t* d_tokens_ = nullptr;
  uint8_t** d_seq_base_ = nullptr;  // decode steps: each piece's state buffer
  bool fused_dn_ = false;           // the fused DeltaNet decode kernel covers this model
  int64_t dn_split_ = 1;            // ... with this many blocks per value head
  // ... and is used (SetFusedDeltaNet). Off: on the H200 the separate kernels decoded 6 % faster
  // (35b-a3b, 286 vs 270 tok/s; 27b 79.7 vs 78.0), the fused kernel having a block per value head.
  bool fused_dn_on_ = false;
  bool flash_ok_ = false;           // the flash prefill kernel covers the attention shape
  bool chunked_dn_ = true;          // the chunked delta rule (off once the device refuses it)
  bool sharded_ = false;            // holds only some layers' mixers (a group rank)
  bool grouped_decode_ = false;     // decode batches of kGroupedMoeTokens+ use moe_grouped
  bool fused_moe_on_ = true;        // short steps' experts through moe_decode (SetFusedMoeDecode)
  bool fused_norm_q8_ = true;       // short steps' norms also quantise (pre_); with fused_moe_on_
  // Short steps' FFN gate/up/SwiGLU through cuda::ffn_up (SetFusedFfnUp). Off: on the H200 the
  // matvec pair + swiglu_q8 was faster (27b: ffn_up ~80 us a layer against ~40 for the pair).
  bool fused_ffn_up_ = false;
  bool gqa_attn_ = false;           // split-K attention reads K/V once per KV head (SetGqaAttention)
  std::shared_ptr<StatePool> pool_ = std::make_shared<StatePool>();
  // Shard experts: per layer, expert id -> index in the layer's compact device copy (or -1),
  // and the copies themselves.
  std::vector<std::vector<int32_t>> expert_local_;
  std::vector<int64_t> n_local_experts_;
  std::vector<cuda::DeviceBuffer> expert_bufs_;
  bool decode_step_ = false;        // the current step is all single tokens
  // Tokens of the decode step whose K/V cache pointers BeginStep uploaded (after the state
  // buffers at d_seq_base_: attention slot ai's K caches at d_seq_base_ + (1 + 2 ai) N, its V
  // caches N further); 0: none, attention runs per sequence.
  int64_t kv_tok_n_ = 0;
  int64_t* d_pos_ = nullptr;
  int32_t* d_ids_ = nullptr;
  float* d_w_ = nullptr;
  cuda::DeviceBuffer misc_;        // unused ids, argmax output
  int32_t* d_unused_ = nullptr;
  int64_t n_unused_ = 0;
  int32_t* d_argmax_ = nullptr;
  void* d_argmax_ws_ = nullptr;  // argmax_rows' per-chunk pairs
  size_t argmax_ws_bytes_ = 0;
  // ForwardSample: the requests of the rows (in row order) and the next one to use.
  absl::Span<const SampleRequest> sample_reqs_;
  size_t sample_next_ = 0;
  cuda::DeviceSampler sampler_;
  bool use_graphs_ = true;
  std::map<std::vector<uintptr_t>, void*> graphs_;  // batch shape -> cudaGraphExec_t
};

void CudaSeqState::reset() {
  // The recurrent states start at zero; the KV cache is overwritten as positions are appended.
  (void)cuda::fill_bytes(buf.get(), 0, m_->state_bytes(), m_->stream());
  (void)cuda::synchronize(m_->stream());
}

std::unique_ptr<SeqState::DeviceState> CudaSeqState::clone() const {
  auto s = std::make_unique<CudaSeqState>(m_, pool_);
  auto b = m_->StateBuffer(buf.size());
  if (!b.ok()) {
    std::fprintf(stderr, "rigserve: cuda: cannot copy a sequence state: %s\n",
                 std::string(b.status().message()).c_str());
    return nullptr;
  }
  s->buf = std::move(*b);
  s->cap = cap;
  (void)cuda::copy_device(s->buf.get(), buf.get(), buf.size(), m_->stream());
  (void)cuda::synchronize(m_->stream());
  return s;
}

absl::StatusOr<const void*> CudaModel::Upload(const void* host, size_t bytes) {
  auto it = uploads_.find(host);
  if (it != uploads_.end()) {
    if (it->second.size() < bytes)
      return absl::InternalError("cuda upload: one host tensor bound with two sizes");
    return it->second.get();
  }
  auto b = cuda::DeviceBuffer::alloc(std::max<size_t>(bytes, 16));
  if (!b.ok())
    return absl::ResourceExhaustedError(absl::StrFormat(
        "cuda: allocating %d bytes for weights failed after %.2f GB: %s", bytes,
        uploaded_bytes_ / 1e9, b.status().message()));
  RS_CU(cuda::copy_to_device(b->get(), host, bytes, stream_));
  uploaded_bytes_ += bytes;
  const void* d = b->get();
  uploads_.emplace(host, std::move(*b));
  return d;
}

absl::Status CudaModel::UploadMatrix(const WeightView& w, WeightView* out) {
  *out = w;
  if (!w.data) return absl::OkStatus();
  if (!cuda::cuda_supports(w.type))
    return absl::InvalidArgumentError(
        absl::StrCat("cuda backend: weight type ", type_name(w.type), " has no CUDA kernel"));
  auto d = Upload(w.data, w.row_stride * static_cast<size_t>(w.rows));
  if (!d.ok()) return d.status();
  out->data = *d;
  return absl::OkStatus();
}

absl::Status CudaModel::UploadExperts(const WeightView& w, int64_t rows_per_expert,
                                      const std::vector<int32_t>& experts, WeightView* out) {
  *out = w;
  if (!w.data) return absl::OkStatus();
  if (!cuda::cuda_supports(w.type))
    return absl::InvalidArgumentError(
        absl::StrCat("cuda backend: weight type ", type_name(w.type), " has no CUDA kernel"));
  const std::vector<uint8_t> host = GatherExpertRows(w, rows_per_expert, experts);
  auto b = cuda::DeviceBuffer::alloc(host.size());
  if (!b.ok()) return b.status();
  RS_CU(cuda::copy_to_device(b->get(), host.data(), host.size(), stream_));
  RS_CU(cuda::synchronize(stream_));  // `host` goes out of scope
  out->data = b->get();
  out->rows = rows_per_expert * static_cast<int64_t>(experts.size());
  expert_bufs_.push_back(std::move(*b));
  return absl::OkStatus();
}

absl::Status CudaModel::UploadVec(const float* host, int64_t n, const float** out) {
  *out = nullptr;
  if (!host) return absl::OkStatus();
  auto d = Upload(host, static_cast<size_t>(n) * 4);
  if (!d.ok()) return d.status();
  *out = static_cast<const float*>(*d);
  return absl::OkStatus();
}

absl::Status CudaModel::Init() {
  device_ = m_.opts_.cuda_device;
  std::string why;
  if (!cuda::cuda_available(&why))
    return absl::FailedPreconditionError(
        absl::StrCat("--backend cuda: no usable GPU on this machine (", why, ")"));
  auto info = cuda::device_info(device_);  // also makes it the current device
  if (!info.ok())
    return absl::FailedPreconditionError(absl::StrCat("--backend cuda: device ", device_, ": ",
                                                      info.status().message()));
  auto s = cuda::create_stream();
  if (!s.ok()) return s.status();
  stream_ = *s;
  kv_type_ = m_.kv_type_;
  const int64_t H = c_.n_embd;

  // A group rank's shard: only the marked layers (mixer, router, shared expert or FFN: what
  // ForwardDistributed's Mixer runs) and its GPU experts.
  const std::vector<char>& shard = m_.opts_.cuda_layers;
  sharded_ = !shard.empty();
  if (sharded_ && static_cast<int64_t>(shard.size()) != c_.n_layer)
    return absl::InvalidArgumentError(absl::StrCat("cuda: the layer shard lists ", shard.size(),
                                                   " layers, the model has ", c_.n_layer));
  auto holds = [&](int64_t i) { return !sharded_ || shard[i] != 0; };
  // Weight bytes first, so that a model that cannot fit is refused before any copy.
  uint64_t need = 0;
  auto mb = [](const WeightView& w) -> uint64_t { return w.data ? w.row_stride * w.rows : 0; };
  if (!sharded_)
    need += mb(m_.token_embd_) + (m_.output_.data != m_.token_embd_.data ? mb(m_.output_) : 0);
  for (int64_t i = 0; i < c_.n_layer; ++i) {
    const Model::Layer& L = m_.layers_[i];
    if (!holds(i)) continue;
    need += mb(L.wq) + mb(L.wk) + mb(L.wv) + mb(L.wo) + mb(L.qkv) + mb(L.gate) + mb(L.beta) +
            mb(L.alpha) + mb(L.ssm_out) + mb(L.ffn_gate) + mb(L.ffn_up) + mb(L.ffn_down) +
            mb(L.router) + mb(L.shexp_gate_inp) + mb(L.shexp_gate) + mb(L.shexp_up) +
            mb(L.shexp_down);
    if (!sharded_) need += mb(L.gate_exps) + mb(L.up_exps) + mb(L.down_exps);
  }
  const auto& shard_experts = m_.opts_.cuda_experts;
  if (!shard_experts.empty() && static_cast<int64_t>(shard_experts.size()) != c_.n_layer)
    return absl::InvalidArgumentError(absl::StrCat("cuda: the expert shard lists ",
                                                   shard_experts.size(), " layers, the model has ",
                                                   c_.n_layer));
  if (sharded_ && c_.moe && c_.n_expert > 0)
    for (int64_t i = 0; i < static_cast<int64_t>(shard_experts.size()); ++i) {
      const Model::Layer& L = m_.layers_[i];
      for (int32_t e : shard_experts[i]) {
        if (e < 0 || e >= c_.n_expert)
          return absl::InvalidArgumentError(absl::StrCat("cuda: expert shard of layer ", i,
                                                         " names expert ", e, " of ", c_.n_expert));
        need += (mb(L.gate_exps) + mb(L.up_exps) + mb(L.down_exps)) / c_.n_expert;
      }
    }
  const uint64_t reserve = uint64_t{1} << 30;  // workspace, states, CUDA context
  if (need + reserve > info->free_mem)
    return absl::ResourceExhaustedError(absl::StrFormat(
        "--backend cuda: the weights need %.2f GiB (+%.2f GiB workspace) but %s has %.2f GiB "
        "free of %.2f GiB",
        need / 1073741824.0, reserve / 1073741824.0, info->name, info->free_mem / 1073741824.0,
        info->total_mem / 1073741824.0));
  std::fprintf(stderr, "rigserve: cuda: %s (sm_%d%d, %.1f GiB free); uploading %.2f GiB of weights%s\n",
               info->name.c_str(), info->cc_major, info->cc_minor,
               info->free_mem / 1073741824.0, need / 1073741824.0,
               sharded_ ? " (the mixers of this group rank's layers)" : "");

  if (!sharded_) {
    RS_CU(UploadMatrix(m_.token_embd_, &token_embd_));
    RS_CU(UploadMatrix(m_.output_, &output_));
    RS_CU(UploadVec(m_.output_norm_, H, &output_norm_));
  }
  const int64_t hd = c_.head_dim, nh = c_.n_head, nkv = c_.n_head_kv;
  const int64_t CD = c_.conv_dim(), VD = c_.value_dim(), KD = c_.key_dim();
  layers_.resize(c_.n_layer);
  for (int64_t i = 0; i < c_.n_layer; ++i) {
    const Model::Layer& L = m_.layers_[i];
    DevLayer& D = layers_[i];
    D.kind = L.kind;
    D.fused_gate_up = L.fused_gate_up;
    if (sharded_ && c_.moe && i < static_cast<int64_t>(shard_experts.size()) &&
        !shard_experts[i].empty()) {
      // This rank's experts of layer i that stay on the device, compacted.
      const int64_t I = c_.n_ff_exp;
      expert_local_.resize(c_.n_layer);
      n_local_experts_.resize(c_.n_layer, 0);
      expert_local_[i].assign(c_.n_expert, -1);
      for (size_t j = 0; j < shard_experts[i].size(); ++j)
        expert_local_[i][shard_experts[i][j]] = static_cast<int32_t>(j);
      n_local_experts_[i] = static_cast<int64_t>(shard_experts[i].size());
      RS_CU(UploadExperts(L.gate_exps, L.fused_gate_up ? 2 * I : I, shard_experts[i], &D.gate_exps));
      if (!L.fused_gate_up) RS_CU(UploadExperts(L.up_exps, I, shard_experts[i], &D.up_exps));
      RS_CU(UploadExperts(L.down_exps, H, shard_experts[i], &D.down_exps));
    }
    if (!holds(i)) continue;
    RS_CU(UploadVec(L.attn_norm, H, &D.attn_norm));
    RS_CU(UploadVec(L.post_norm, H, &D.post_norm));
    if (L.kind == LayerKind::kAttention) {
      if (hd != 32 && hd != 64 && hd != 128 && hd != 256)
        return absl::InvalidArgumentError(absl::StrCat(
            "--backend cuda: attention head_dim ", hd, " (the CUDA kernel supports 32, 64, 128, 256)"));
      RS_CU(UploadMatrix(L.wq, &D.wq));
      RS_CU(UploadMatrix(L.wk, &D.wk));
      RS_CU(UploadMatrix(L.wv, &D.wv));
      RS_CU(UploadMatrix(L.wo, &D.wo));
      RS_CU(UploadVec(L.q_norm, hd, &D.q_norm));
      RS_CU(UploadVec(L.k_norm, hd, &D.k_norm));
    } else {
      if ((c_.dk != 32 && c_.dk != 64 && c_.dk != 128) || c_.dv % 32 != 0)
        return absl::InvalidArgumentError(absl::StrCat(
            "--backend cuda: DeltaNet head sizes dk = ", c_.dk, ", dv = ", c_.dv,
            " (the CUDA kernel supports dk 32, 64, 128 and dv a multiple of 32)"));
      RS_CU(UploadMatrix(L.qkv, &D.qkv));
      RS_CU(UploadMatrix(L.gate, &D.gate));
      RS_CU(UploadMatrix(L.beta, &D.beta));
      RS_CU(UploadMatrix(L.alpha, &D.alpha));
      RS_CU(UploadMatrix(L.ssm_out, &D.ssm_out));
      RS_CU(UploadVec(L.conv1d, CD * c_.conv_kernel, &D.conv1d));
      RS_CU(UploadVec(L.dt_bias, c_.Hv, &D.dt_bias));
      RS_CU(UploadVec(L.ssm_a, c_.Hv, &D.ssm_a));
      RS_CU(UploadVec(L.ssm_norm, c_.dv, &D.ssm_norm));
    }
    if (sharded_) {
      // A group rank: its layers' router and shared expert (MoE) or FFN (dense); the routed
      // experts are dispatched (its GPU ones were uploaded above).
      RS_CU(UploadMatrix(L.ffn_gate, &D.ffn_gate));
      RS_CU(UploadMatrix(L.ffn_up, &D.ffn_up));
      RS_CU(UploadMatrix(L.ffn_down, &D.ffn_down));
      RS_CU(UploadMatrix(L.router, &D.router));
      RS_CU(UploadMatrix(L.shexp_gate_inp, &D.shexp_gate_inp));
      RS_CU(UploadMatrix(L.shexp_gate, &D.shexp_gate));
      RS_CU(UploadMatrix(L.shexp_up, &D.shexp_up));
      RS_CU(UploadMatrix(L.shexp_down, &D.shexp_down));
      continue;
    }
    RS_CU(UploadMatrix(L.ffn_gate, &D.ffn_gate));
    RS_CU(UploadMatrix(L.ffn_up, &D.ffn_up));
    RS_CU(UploadMatrix(L.ffn_down, &D.ffn_down));
    RS_CU(UploadMatrix(L.router, &D.router));
    RS_CU(UploadMatrix(L.gate_exps, &D.gate_exps));
    RS_CU(UploadMatrix(L.up_exps, &D.up_exps));
    RS_CU(UploadMatrix(L.down_exps, &D.down_exps));
    RS_CU(UploadMatrix(L.shexp_gate_inp, &D.shexp_gate_inp));
    RS_CU(UploadMatrix(L.shexp_gate, &D.shexp_gate));
    RS_CU(UploadMatrix(L.shexp_up, &D.shexp_up));
    RS_CU(UploadMatrix(L.shexp_down, &D.shexp_down));
  }
  if (c_.moe && (c_.n_expert > 1024 || c_.n_expert_used > 32))
    return absl::InvalidArgumentError(absl::StrCat("--backend cuda: ", c_.n_expert, " experts, ",
                                                   c_.n_expert_used,
                                                   " used (the CUDA router supports 1024 / 32)"));
  RS_CU(cuda::synchronize(stream_));

  attn_slot_.assign(c_.n_layer, -1);
  dn_slot_.assign(c_.n_layer, -1);
  // A sequence's device state covers the layers whose mixers this device runs (a shard: only
  // its own layers' KV caches and DeltaNet states).
  for (int64_t i = 0; i < c_.n_layer; ++i) {
    if (!holds(i)) continue;
    if (c_.layers[i] == LayerKind::kAttention)
      attn_slot_[i] = n_attn_++;
    else
      dn_slot_[i] = n_dn_++;
  }
  conv_bytes_ = Align256(static_cast<size_t>((c_.conv_kernel - 1) * CD) * 4);
  ssm_bytes_ = Align256(static_cast<size_t>(c_.Hv * c_.dk * c_.dv) * 4);
  state_bytes_ = n_dn_ * (conv_bytes_ + ssm_bytes_);
  kv_row_ = row_bytes(kv_type_, nkv * hd);

  // Workspace for kMaxStepTokens tokens.
  const int64_t N = kMaxStepTokens, k = std::max<int64_t>(1, c_.n_expert_used);
  const int64_t I = c_.n_ff_exp, Is = c_.n_ff_shexp;
  const int64_t w_attn = std::max({2 * nh * hd, CD, 2 * k * I + k * I, 2 * c_.n_ff});
  size_t off = 0;
  auto take = [&](int64_t floats) {
    const size_t o = off;
    off += Align256(static_cast<size_t>(std::max<int64_t>(floats, 1)) * 4);
    return o;
  };
  o_hidden_ = take(N * H);
  o_a_ = take(N * H);
  o_m_ = take(N * H);
  o_x1_ = take(N * w_attn);                                            // qg | u | experts' gate/up
  o_x2_ = take(N * std::max({nh * hd, KD, c_.n_expert, Is, c_.n_ff})); // q | router | g1
  o_x3_ = take(N * std::max({nh * hd, VD, k * I, Is}));                // gate | z | swiglu out
  o_x4_ = take(N * std::max({nkv * hd, KD, H}));                       // kk | k | shared down
  o_x5_ = take(N * std::max({nkv * hd, VD, int64_t{1}}));              // vv | v | shared gate
  o_x6_ = take(N * std::max({nh * hd, VD}));                           // y
  o_x7_ = take(N * std::max({CD, c_.n_ff}));                           // cv | u1
  o_x8_ = take(N * std::max<int64_t>(4 * c_.Hv, 1));                   // b, al, g, beta
  o_x9_ = take(N * std::max({VD, Is}));                                // o | shared swiglu
  o_logits_ = take(kMaxLogitRows * c_.n_vocab);
  if (c_.n_expert > 0) {
    o_moe_d_ = take(N * k * H);  // grouped prefill: each slot's down projection
    // Fused decode (MoeDecode): kMoeDecodeChunk tokens' slots of SwiGLU output, and their q8.
    const int64_t dec_slots = kMoeDecodeChunk * (k + 1), ldh = cuda::moe_decode_ldh(I, Is);
    o_moe_h_ = take(dec_slots * ldh);
    auto mw = cuda::DeviceBuffer::alloc(
        std::max(cuda::moe_grouped_workspace_bytes(N * k, c_.n_expert),
                 cuda::moe_decode_workspace_bytes(dec_slots, ldh)));
    if (!mw.ok()) return mw.status();
    moe_ws_ = std::move(*mw);
    auto rc = cuda::DeviceBuffer::alloc(256);  // router_fused's counter, 0 between launches
    if (!rc.ok()) return rc.status();
    router_counter_ = std::move(*rc);
    RS_CU(cuda::fill_bytes(router_counter_.get(), 0, router_counter_.size()));
    RS_CU(cuda::synchronize());
  }
  auto ws = cuda::DeviceBuffer::alloc(off);
  if (!ws.ok()) return ws.status();
  ws_ = std::move(*ws);
  const int64_t max_cols = std::max({H, nh * hd, VD, I, Is, c_.n_ff});
  auto act = cuda::DeviceBuffer::alloc(cuda::act_q8_bytes(max_cols, std::max<int64_t>(N * k, 8)));
  if (!act.ok()) return act.status();
  act_ws_ = std::move(*act);
  if (H % 32 == 0) {
    auto nq = cuda::DeviceBuffer::alloc(cuda::act_q8_bytes(H, kMoeDecodeChunk));
    if (!nq.ok()) return nq.status();
    norm_q8_ws_ = std::move(*nq);
  }
  // Last: a decode step's pointers (BeginStep): each token's state buffer, then per attention
  // layer each token's K and V caches.
  auto tok = cuda::DeviceBuffer::alloc(Align256(N * 4) + Align256(N * 8) + 2 * Align256(N * k * 4) +
                                       Align256(N * 8 * (1 + 2 * n_attn_)));
  if (!tok.ok()) return tok.status();
  tok_ws_ = std::move(*tok);
  uint8_t* t = static_cast<uint8_t*>(tok_ws_.get());
  d_tokens_ = reinterpret_cast<int32_t*>(t);
  d_pos_ = reinterpret_cast<int64_t*>(t + Align256(N * 4));
  d_ids_ = reinterpret_cast<int32_t*>(t + Align256(N * 4) + Align256(N * 8));
  d_w_ = reinterpret_cast<float*>(t + Align256(N * 4) + Align256(N * 8) + Align256(N * k * 4));
  d_seq_base_ = reinterpret_cast<uint8_t**>(t + Align256(N * 4) + Align256(N * 8) +
                                            2 * Align256(N * k * 4));
  {
    // The fused DeltaNet decode kernel covers these head shapes (cuda_glue.h dn_decode).
    const int64_t P = c_.dv >= 1 && c_.dv <= cuda::dn::kDecodeThreads ? cuda::dn::kDecodeThreads / c_.dv : 0;
    fused_dn_ = n_dn_ > 0 && P > 0 && c_.Hv % c_.Hk == 0 &&
                (c_.dk + P - 1) / P <= cuda::dn::kDecodeMaxRows;
    if (fused_dn_) {
      // Its per-(sequence, key head) and per-(sequence, value head) counters, zero between
      // launches, and the norm's partial sums of a head split over dn_split_ blocks.
      dn_split_ = cuda::dn::decode_col_split(c_.dv);
      const size_t words = static_cast<size_t>(kMaxStepTokens * (c_.Hk + c_.Hv * (1 + dn_split_)));
      auto cnt = cuda::DeviceBuffer::alloc(words * 4);
      if (!cnt.ok()) return cnt.status();
      dn_counters_ = std::move(*cnt);
      RS_CU(cuda::fill_bytes(dn_counters_.get(), 0, dn_counters_.size()));
      RS_CU(cuda::synchronize());
    }
  }
  chunked_dn_ = n_dn_ > 0 && c_.dk % 2 == 0 && c_.dk <= cuda::dn::kChunkMaxDk;
  flash_ok_ = nkv > 0 && nh % nkv == 0 && nh / nkv <= cuda::flash::kFlashRows && hd % 32 == 0 &&
              hd <= cuda::flash::kFlashMaxHd;
  {
    const auto& unused = m_.unused_token_ids();
    n_unused_ = static_cast<int64_t>(unused.size());
    argmax_ws_bytes_ = cuda::argmax_workspace_bytes(kMaxLogitRows, c_.n_vocab);
    auto mb2 = cuda::DeviceBuffer::alloc(Align256(kMaxLogitRows * 4) + Align256(n_unused_ * 4 + 4) +
                                         Align256(argmax_ws_bytes_));
    if (!mb2.ok()) return mb2.status();
    misc_ = std::move(*mb2);
    d_argmax_ = misc_.as<int32_t>();
    d_unused_ = reinterpret_cast<int32_t*>(static_cast<uint8_t*>(misc_.get()) +
                                           Align256(kMaxLogitRows * 4));
    d_argmax_ws_ = static_cast<uint8_t*>(misc_.get()) + Align256(kMaxLogitRows * 4) +
                   Align256(n_unused_ * 4 + 4);
    RS_CU(cuda::copy_to_device(d_unused_, unused.data(), n_unused_ * 4, stream_));
    use_graphs_ = m_.opts_.cuda_graphs;
    // The sampler's buffers: one LM-head launch of rows, and the distinct tokens of a few full
    // contexts (more only grows them, doubling).
    RS_CU(sampler_.Reserve(kMaxLogitRows, 4 * std::max<int64_t>(m_.opts_.cuda_ctx, 4096)));
  }
  if (n_attn_ > 0) {
    auto aw = cuda::DeviceBuffer::alloc(
        cuda::attention_workspace_bytes(N, nh, hd, std::max<int64_t>(m_.opts_.cuda_ctx, N)));
    if (!aw.ok()) return aw.status();
    attn_ws_ = std::move(*aw);
  }
  // The worker's state slots, allocated now: sequences then start without allocating.
  const int64_t ctx = m_.opts_.cuda_ctx > 0 ? m_.opts_.cuda_ctx : 4096;
  for (int i = 0; i < m_.opts_.cuda_state_slots; ++i) {
    auto b = cuda::DeviceBuffer::alloc(seq_bytes(ctx));
    if (!b.ok())
      return absl::ResourceExhaustedError(absl::StrFormat(
          "cuda: %d sequence states of %.1f MiB (%lld positions each) do not fit beside the "
          "weights; %d did (lower the context or the number of sequences): %s",
          m_.opts_.cuda_state_slots, seq_bytes(ctx) / 1048576.0, static_cast<long long>(ctx), i,
          b.status().message()));
    pool_->Give(std::move(*b));
  }
  std::fprintf(stderr,
               "rigserve: cuda: %.2f GiB of weights on the device; workspace %.1f MiB; KV %s, "
               "%zu bytes per position and layer; %d sequence states of %.1f MiB\n",
               uploaded_bytes_ / 1073741824.0,
               (ws_.size() + act_ws_.size() + attn_ws_.size() + tok_ws_.size()) / 1048576.0,
               type_name(kv_type_), 2 * kv_row_, m_.opts_.cuda_state_slots,
               seq_bytes(ctx) / 1048576.0);
  return absl::OkStatus();
}

std::unique_ptr<SeqState::DeviceState> CudaModel::NewState(int64_t reserve_ctx) {
  cudaSetDevice(device_);
  auto s = std::make_unique<CudaSeqState>(this, pool_);
  const int64_t cap = std::max<int64_t>(reserve_ctx, m_.opts_.cuda_ctx > 0 ? m_.opts_.cuda_ctx : 4096);
  auto b = StateBuffer(seq_bytes(cap));
  if (!b.ok()) {
    std::fprintf(stderr, "rigserve: cuda: a sequence state of %.1f MiB (%lld positions): %s\n",
                 seq_bytes(cap) / 1048576.0, static_cast<long long>(cap),
                 std::string(b.status().message()).c_str());
    return nullptr;
  }
  s->buf = std::move(*b);
  s->cap = cap;
  s->reset();
  return s;
}

absl::Status CudaModel::Grow(CudaSeqState* s, int64_t n_past, int64_t need) {
  if (need <= s->cap) return absl::OkStatus();
  int64_t cap = std::max<int64_t>(s->cap, 1);
  while (cap < need) cap *= 2;
  auto b = StateBuffer(seq_bytes(cap));
  if (!b.ok())
    return absl::ResourceExhaustedError(absl::StrFormat(
        "cuda: growing a sequence's KV cache to %d positions (%.1f MiB): %s", cap,
        seq_bytes(cap) / 1048576.0, b.status().message()));
  std::fprintf(stderr, "rigserve: cuda: a sequence outgrew %lld positions; KV cache now %lld\n",
               static_cast<long long>(s->cap), static_cast<long long>(cap));
  RS_CU(cuda::copy_device(b->get(), s->buf.get(), state_bytes_, stream_));
  for (int64_t i = 0; i < n_attn_; ++i)
    for (int which = 0; which < 2; ++which)
      RS_CU(cuda::copy_device(kv(b->get(), cap, i, which), kv(s->buf.get(), s->cap, i, which),
                              kv_row_ * static_cast<size_t>(n_past), stream_));
  RS_CU(cuda::synchronize(stream_));
  pool_->Give(std::move(s->buf));  // the smaller buffer serves a later sequence
  s->buf = std::move(*b);
  s->cap = cap;
  return absl::OkStatus();
}

absl::StatusOr<cuda::DeviceBuffer> CudaModel::StateBuffer(size_t bytes) {
  if (auto b = pool_->Take(bytes)) return std::move(*b);
  return cuda::DeviceBuffer::alloc(bytes);
}

absl::Status CudaModel::Mm(const WeightView& w, const float* x, int64_t n, float* y) {
  if (const cuda::DeviceAct* p = Prepared(x, n, w.cols); p && n <= cuda::kMaxMatvecTokens)
    return cuda::matvec(w, *p, y, w.rows, stream_);
  if (n > cuda::kMaxMatvecTokens && (w.rows < 16 || w.type == GgmlType::F32)) {
    // Thin matrices (the shared expert's gate: one row) and F32 weights (the router of real
    // models; exact test models) run as f32 matvecs of up to 8 tokens: the tensor cores would
    // round them to f16, and a rounded router logit can flip a near-tied expert choice.
    for (int64_t t0 = 0; t0 < n; t0 += cuda::kMaxMatvecTokens) {
      const int64_t nt = std::min(cuda::kMaxMatvecTokens, n - t0);
      RS_CU(cuda::matmul(w, x + t0 * w.cols, w.cols, nt, y + t0 * w.rows, w.rows, act_ws_.get(),
                         act_ws_.size(), stream_));
    }
    return absl::OkStatus();
  }
  return cuda::matmul(w, x, w.cols, n, y, w.rows, act_ws_.get(), act_ws_.size(), stream_);
}

absl::Status CudaModel::MmGroup(const float* x, int64_t n, int64_t cols,
                                std::initializer_list<std::pair<const WeightView*, float*>> outs) {
  if (n > cuda::kMaxMatvecTokens) {
    for (const auto& [w, y] : outs) RS_CU(Mm(*w, x, n, y));
    return absl::OkStatus();
  }
  bool q8 = false;
  for (const auto& [w, y] : outs) q8 = q8 || cuda::matvec_uses_q8(w->type);
  cuda::DeviceAct a{x, cols, nullptr, nullptr, cols, n};
  if (const cuda::DeviceAct* p = Prepared(x, n, cols)) {
    a = *p;
  } else if (q8) {
    RS_CU(cuda::quantize_act(x, cols, n, cols, act_ws_.get(), act_ws_.size(), &a, stream_));
  }
  cuda::MatvecOut mo[8];
  size_t n_out = 0;
  for (const auto& [w, y] : outs) {
    if (n_out == 8) {
      RS_CU(cuda::matvec_multi(mo, n_out, a, stream_));
      n_out = 0;
    }
    mo[n_out++] = {w, y, w->rows};
  }
  return cuda::matvec_multi(mo, n_out, a, stream_);
}

absl::Status CudaModel::Attention(const DevLayer& L, int64_t ai, const std::vector<Piece>& ps,
                                  int64_t N, bool graph) {
  const int64_t nh = c_.n_head, nkv = c_.n_head_kv, hd = c_.head_dim, H = c_.n_embd;
  float* a = F(o_a_);
  float* qg = F(o_x1_);
  float* q = F(o_x2_);
  float* gate = F(o_x3_);
  float* kk = F(o_x4_);
  float* vv = F(o_x5_);
  float* y = F(o_x6_);
  RS_CU(MmGroup(a, N, H, {{&L.wq, qg}, {&L.wk, kk}, {&L.wv, vv}}));
  // q / gate split, q and k norms, RoPE on both: one kernel.
  RS_CU(cuda::attn_prep(qg, N, nh, nkv, hd, c_.rope_dims, L.q_norm, L.k_norm, d_pos_,
                        c_.rope_theta, c_.eps, q, gate, kk, stream_));
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  if (decode_step_ && kv_tok_n_ == N && N == static_cast<int64_t>(ps.size())) {
    // A decode batch: every token's K/V store in one launch and its attention in one launch
    // pair, each token on its own sequence's cache (the pointers BeginStep uploaded).
    void* const* Kt = reinterpret_cast<void* const*>(d_seq_base_ + (1 + 2 * ai) * N);
    void* const* Vt = Kt + N;
    RS_CU(cuda::kv_store_kv_seqs_at(kk, vv, N, nkv * hd, kv_type_, Kt, Vt, kv_row_, d_pos_,
                                    stream_));
    int64_t max_ctx = 1;
    for (const Piece& p : ps) {
      auto* st = static_cast<CudaSeqState*>(p.seq->device.get());
      max_ctx = std::max(max_ctx, graph ? st->cap : p.seq->n_past + 1);
    }
    const size_t need = cuda::attention_seqs_workspace_bytes(N, nh, hd, max_ctx);
    RS_CU(EnsureAttnWorkspace(need));  // never grows inside a capture: Step sized it first
    const KvView kview{kv_type_, nullptr, nkv, hd, kv_row_};
    RS_CU(cuda::attention_seqs_at(q, N, nh, hd, kview, kview, Kt, Vt, d_pos_, max_ctx, scale, y,
                                  attn_ws_.get(), attn_ws_.size(), stream_, gqa_attn_));
  } else {
    int64_t r0 = 0;
    for (const Piece& p : ps) {
      auto* st = static_cast<CudaSeqState*>(p.seq->device.get());
      const int64_t n_past = p.seq->n_past, T = p.n;
      uint8_t* K = kv(st->buf.get(), st->cap, ai, 0);
      uint8_t* V = kv(st->buf.get(), st->cap, ai, 1);
      // Positions come from d_pos_ (n_past + t): a graph replays these launches at any length.
      RS_CU(cuda::kv_store_kv_at(kk + r0 * nkv * hd, vv + r0 * nkv * hd, T, nkv * hd, kv_type_, K,
                                 V, kv_row_, d_pos_ + r0, stream_));
      const KvView kview{kv_type_, K, nkv, hd, kv_row_};
      const KvView vview{kv_type_, V, nkv, hd, kv_row_};
      if (!graph && T >= kFlashPrefillTokens && flash_ok_) {
        // Prefill pieces: each block reads the cache once for all heads of a KV head.
        RS_CU(cuda::attention_prefill(q + r0 * nh * hd, T, nh, hd, kview, vview, n_past, scale,
                                      y + r0 * nh * hd, stream_));
        r0 += T;
        continue;
      }
      const int64_t max_ctx = graph ? st->cap : n_past + T;
      const size_t need = cuda::attention_workspace_bytes(T, nh, hd, max_ctx - T);
      RS_CU(EnsureAttnWorkspace(need));  // never grows inside a capture: Step sized it first
      RS_CU(cuda::attention_at(q + r0 * nh * hd, T, nh, hd, kview, vview, d_pos_ + r0, max_ctx,
                               scale, y + r0 * nh * hd, attn_ws_.get(), attn_ws_.size(), stream_,
                               gqa_attn_));
      r0 += T;
    }
  }
  const int64_t QD = nh * hd;
  if (fused_norm_q8_ && N <= cuda::kMaxMatvecTokens && QD % 32 == 0 &&
      cuda::matvec_uses_q8(L.wo.type)) {
    // The output gate and wo's q8 activations in one kernel.
    cuda::DeviceAct ya;
    RS_CU(cuda::mul_sigmoid_q8(y, gate, N, QD, act_ws_.get(), act_ws_.size(), &ya, stream_));
    return cuda::matvec(L.wo, ya, F(o_m_), L.wo.rows, stream_);
  }
  RS_CU(cuda::mul_sigmoid(y, gate, N * QD, stream_));
  return Mm(L.wo, y, N, F(o_m_));
}

absl::Status CudaModel::DeltaNet(const DevLayer& L, int64_t di, const std::vector<Piece>& ps,
                                 int64_t N) {
  const int64_t H = c_.n_embd, CD = c_.conv_dim(), KD = c_.key_dim(), VD = c_.value_dim();
  const int64_t Hk = c_.Hk, Hv = c_.Hv, dk = c_.dk, dv = c_.dv;
  float* a = F(o_a_);
  float* u = F(o_x1_);
  float* q = F(o_x2_);
  float* z = F(o_x3_);
  float* k = F(o_x4_);
  float* v = F(o_x5_);
  float* y = F(o_x6_);
  float* cv = F(o_x7_);
  float* b = F(o_x8_);
  float* al = b + N * Hv;
  float* g = al + N * Hv;
  float* beta = g + N * Hv;
  float* o = F(o_x9_);
  RS_CU(MmGroup(a, N, H, {{&L.qkv, u}, {&L.gate, z}, {&L.beta, b}, {&L.alpha, al}}));
  if (decode_step_ && fused_dn_ && fused_dn_on_) {
    // One token per sequence: conv, norms, gates, state update, readout and gated norm in one
    // kernel over all sequences.
    cuda::dn::DecodeArgs da;
    da.Hk = Hk;
    da.Hv = Hv;
    da.dk = dk;
    da.dv = dv;
    da.K = c_.conv_kernel;
    da.u = u;
    da.z = z;
    da.b = b;
    da.al = al;
    da.conv_w = L.conv1d;
    da.ssm_a = L.ssm_a;
    da.dt_bias = L.dt_bias;
    da.norm_w = L.ssm_norm;
    da.q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
    da.eps = c_.eps;
    da.seq_base = d_seq_base_;
    da.conv_off = static_cast<size_t>(di) * conv_bytes_;
    da.ssm_off = static_cast<size_t>(n_dn_) * conv_bytes_ + static_cast<size_t>(di) * ssm_bytes_;
    da.y = y;
    da.counters = static_cast<int*>(dn_counters_.get());
    da.col_split = dn_split_;
    if (dn_split_ > 1) {
      da.norm_cnt = da.counters + kMaxStepTokens * Hk;
      da.norm_part = reinterpret_cast<float*>(da.norm_cnt + kMaxStepTokens * Hv);
    }
    // ssm_out's q8 activations from the same kernel (the quantiser launch saved).
    absl::StatusOr<cuda::DeviceAct> ya = absl::UnavailableError("no q8 output");
    if (fused_norm_q8_ && N <= cuda::kMaxMatvecTokens && dv % 32 == 0 &&
        cuda::matvec_uses_q8(L.ssm_out.type))
      ya = cuda::act_q8_layout("dn_decode", y, VD, N, VD, act_ws_.get(), act_ws_.size());
    if (ya.ok()) {
      da.yq = const_cast<int8_t*>(ya->q);
      da.yds = const_cast<float*>(ya->ds);
    }
    RS_CU(cuda::dn_decode(da, N, stream_));
    if (ya.ok()) return cuda::matvec(L.ssm_out, *ya, F(o_m_), L.ssm_out.rows, stream_);
    return Mm(L.ssm_out, y, N, F(o_m_));
  }
  RS_CU(cuda::dn_gates(b, al, L.ssm_a, L.dt_bias, N, Hv, g, beta, stream_));
  int64_t r0 = 0;
  for (const Piece& p : ps) {
    auto* st = static_cast<CudaSeqState*>(p.seq->device.get());
    RS_CU(cuda::conv1d_silu(u + r0 * CD, p.n, CD, L.conv1d, c_.conv_kernel, conv(st, di),
                            cv + r0 * CD, stream_));
    r0 += p.n;
  }
  RS_CU(cuda::dn_prep(cv, N, Hk, dk, VD, 1.0f / std::sqrt(static_cast<float>(dk)), q, k, v,
                      stream_));
  r0 = 0;
  for (const Piece& p : ps) {
    auto* st = static_cast<CudaSeqState*>(p.seq->device.get());
    const DeltaNetDims dims{p.n, Hk, Hv, dk, dv};
    bool done = false;
    if (chunked_dn_ && p.n >= kChunkedDeltaTokens) {
      // Long pieces: 64-token chunks (matrix form) instead of the token-by-token recurrence.
      const absl::Status cs = cuda::delta_rule_chunked(dims, q + r0 * KD, k + r0 * KD, v + r0 * VD,
                                                       g + r0 * Hv, beta + r0 * Hv, ssm(st, di),
                                                       o + r0 * VD, stream_);
      if (cs.ok()) {
        done = true;
      } else if (cs.code() == absl::StatusCode::kFailedPrecondition) {
        std::fprintf(stderr, "cuda: %s; the delta rule runs token by token\n",
                     std::string(cs.message()).c_str());
        chunked_dn_ = false;
      } else {
        return cs;
      }
    }
    if (!done)
      RS_CU(cuda::delta_rule(dims, q + r0 * KD, k + r0 * KD, v + r0 * VD, g + r0 * Hv,
                             beta + r0 * Hv, ssm(st, di), o + r0 * VD, stream_));
    r0 += p.n;
  }
  RS_CU(cuda::rms_norm_gated(o, L.ssm_norm, z, N * Hv, dv, c_.eps, y, stream_));
  return Mm(L.ssm_out, y, N, F(o_m_));
}

// Routed experts token by token (decode, short steps): gate/up of the k selected experts in one
// launch per token, then down with the routing weights summed in a fixed order.
absl::Status CudaModel::RoutedPerToken(const DevLayer& L, const float* f, int64_t N, float* out) {
  const int64_t H = c_.n_embd, k = c_.n_expert_used, I = c_.n_ff_exp;
  float* eg = F(o_x1_);            // [N][k][2I] fused, else gate [N][k][I]
  float* eu = eg + N * k * I;      // up [N][k][I] (separate tensors)
  float* eh = F(o_x3_);            // swiglu [N][k][I]
  const bool up_q8 = cuda::matvec_uses_q8(L.gate_exps.type);
  cuda::DeviceAct fa{f, H, nullptr, nullptr, H, N};
  if (up_q8) RS_CU(cuda::quantize_act(f, H, N, H, act_ws_.get(), act_ws_.size(), &fa, stream_));
  for (int64_t t = 0; t < N; ++t) {
    cuda::DeviceAct at = fa;
    at.x = f + t * H;
    if (fa.q) {
      at.q = fa.q + t * H;
      at.ds = fa.ds + t * (H / 32) * 2;
    }
    at.n_tok = 1;
    if (L.fused_gate_up) {
      RS_CU(cuda::moe_matvec_up(L.gate_exps, 2 * I, d_ids_ + t * k, k, at, eg + t * k * 2 * I,
                                stream_));
    } else {
      RS_CU(cuda::moe_matvec_up(L.gate_exps, I, d_ids_ + t * k, k, at, eg + t * k * I, stream_));
      RS_CU(cuda::moe_matvec_up(L.up_exps, I, d_ids_ + t * k, k, at, eu + t * k * I, stream_));
    }
  }
  if (L.fused_gate_up)
    RS_CU(cuda::swiglu_rows(eg, 2 * I, eg + I, 2 * I, N * k, I, eh, stream_));
  else
    RS_CU(cuda::swiglu_rows(eg, I, eu, I, N * k, I, eh, stream_));
  cuda::DeviceAct ha{eh, I, nullptr, nullptr, I, N * k};
  if (cuda::matvec_uses_q8(L.down_exps.type))
    RS_CU(cuda::quantize_act(eh, I, N * k, I, act_ws_.get(), act_ws_.size(), &ha, stream_));
  for (int64_t t = 0; t < N; ++t) {
    cuda::DeviceAct at = ha;
    at.x = eh + t * k * I;
    if (ha.q) {
      at.q = ha.q + t * k * I;
      at.ds = ha.ds + t * k * (I / 32) * 2;
    }
    at.n_tok = k;
    RS_CU(cuda::moe_matvec_down(L.down_exps, H, d_ids_ + t * k, d_w_ + t * k, k, at, out + t * H,
                                /*accumulate=*/false, stream_));
  }
  return absl::OkStatus();
}

// A short step's gate and up, SwiGLU and, for an integer down type, the q8 blocks of the result
// in one launch (cuda::ffn_up) into h [N][gate.rows] (its q8 in act_ws_), described by *ha for
// the down matvec. False (nothing run) where it does not apply: off with the fused MoE decode
// switch, a long step, gate/up that differ, or an integer gate type without f's q8 blocks from
// the norm before (its q8 would need act_ws_, which h's takes).
absl::StatusOr<bool> CudaModel::FusedUp(const WeightView& gate, const WeightView& up,
                                        const WeightView& down, const float* f, int64_t N,
                                        float* h, cuda::DeviceAct* ha) {
  const int64_t H = c_.n_embd, I = gate.rows;
  if (!fused_ffn_up_ || N > cuda::kMaxMatvecTokens || !cuda::ffn_up_fits(gate, up) ||
      act_ws_.size() < cuda::ffn_up_workspace_bytes(I, N))
    return false;
  cuda::DeviceAct x{f, H, nullptr, nullptr, H, N};
  if (const cuda::DeviceAct* p = Prepared(f, N, H)) {
    x = *p;
  } else if (cuda::matvec_uses_q8(gate.type)) {
    return false;
  }
  RS_CU(cuda::ffn_up(gate, up, x, h, I, cuda::matvec_uses_q8(down.type), act_ws_.get(),
                     act_ws_.size(), ha, stream_));
  return true;
}

absl::Status CudaModel::DenseFfn(const DevLayer& L, const float* f, int64_t N, float* out) {
  float* g = F(o_x2_);
  float* u = F(o_x7_);
  cuda::DeviceAct ha;
  absl::StatusOr<bool> fused = FusedUp(L.ffn_gate, L.ffn_up, L.ffn_down, f, N, g, &ha);
  if (!fused.ok()) return fused.status();
  if (*fused) return cuda::matvec(L.ffn_down, ha, out, L.ffn_down.rows, stream_);
  RS_CU(MmGroup(f, N, c_.n_embd, {{&L.ffn_gate, g}, {&L.ffn_up, u}}));
  if (fused_norm_q8_ && N <= cuda::kMaxMatvecTokens && c_.n_ff % 32 == 0 &&
      cuda::matvec_uses_q8(L.ffn_down.type)) {
    // SwiGLU and the down matvec's q8 activations in one kernel.
    RS_CU(cuda::swiglu_q8(g, u, N, c_.n_ff, act_ws_.get(), act_ws_.size(), &ha, stream_));
    return cuda::matvec(L.ffn_down, ha, out, L.ffn_down.rows, stream_);
  }
  RS_CU(cuda::swiglu(g, u, N * c_.n_ff, g, stream_));
  return Mm(L.ffn_down, g, N, out);
}

// out += sigmoid(w_gate . f) * shared_expert(f), per token (uses o_x2_, o_x4_, o_x5_, o_x9_).
absl::Status CudaModel::SharedExpertAdd(const DevLayer& L, const float* f, int64_t N, float* out) {
  const int64_t H = c_.n_embd, Is = c_.n_ff_shexp;
  float* sg = F(o_x5_);
  float* sgu = F(o_x2_);
  float* suu = F(o_x9_);
  float* sd = F(o_x4_);
  RS_CU(Mm(L.shexp_gate_inp, f, N, sg));
  cuda::DeviceAct ha;
  absl::StatusOr<bool> fused = FusedUp(L.shexp_gate, L.shexp_up, L.shexp_down, f, N, sgu, &ha);
  if (!fused.ok()) return fused.status();
  if (*fused) {
    RS_CU(cuda::matvec(L.shexp_down, ha, sd, L.shexp_down.rows, stream_));
  } else {
    RS_CU(MmGroup(f, N, H, {{&L.shexp_gate, sgu}, {&L.shexp_up, suu}}));
    RS_CU(cuda::swiglu(sgu, suu, N * Is, sgu, stream_));
    RS_CU(Mm(L.shexp_down, sgu, N, sd));
  }
  return cuda::add_sigmoid_scaled(out, sd, sg, N, H, stream_);
}

absl::Status CudaModel::Ffn(const DevLayer& L, int64_t N) {
  const int64_t H = c_.n_embd;
  float* f = F(o_a_);
  float* out = F(o_m_);
  if (!c_.moe) return DenseFfn(L, f, N, out);
  const int64_t E = c_.n_expert, k = c_.n_expert_used, I = c_.n_ff_exp;
  float* logits = F(o_x2_);
  const bool grouped = N >= kGroupedMoeTokens && (!decode_step_ || grouped_decode_);
  const bool fused = fused_moe_on_ && k + 1 <= cuda::kMoeDecodeMaxSlots;
  const bool sh_fused = !grouped && fused && SharedFused(L);
  const bool router_fused =
      !grouped && fused && N <= cuda::kMaxMatvecTokens && L.router.type == GgmlType::F32 &&
      E <= 1024 && k <= 32 && H % 8 == 0 &&
      (!sh_fused || (L.shexp_gate_inp.type == GgmlType::F32 && L.shexp_gate_inp.rows == 1));
  if (router_fused) {
    // Router (and shared gate) matvec and top-k in one launch.
    RS_CU(cuda::router_fused(L.router, sh_fused ? &L.shexp_gate_inp : nullptr, f, N, k, logits,
                             F(o_x5_), d_ids_, d_w_, static_cast<int*>(router_counter_.get()),
                             stream_));
  } else {
    if (sh_fused) {
      // The router and the shared expert's gate in one launch where their types allow.
      RS_CU(MmGroup(f, N, H, {{&L.router, logits}, {&L.shexp_gate_inp, F(o_x5_)}}));
    } else {
      RS_CU(Mm(L.router, f, N, logits));
    }
    RS_CU(cuda::router_topk(logits, N, E, k, d_ids_, d_w_, stream_));
  }
  if (grouped) {
    // Prefill: the slots bucketed by expert, each selected expert's weights read once per 32
    // slots (cuda_glue.h moe_grouped).
    RS_CU(cuda::moe_grouped(L.gate_exps, L.fused_gate_up ? nullptr : &L.up_exps, L.down_exps, E,
                            I, H, f, N, d_ids_, d_w_, k, F(o_x1_), F(o_x3_), F(o_moe_d_),
                            moe_ws_.get(), moe_ws_.size(), out, stream_));
  } else if (fused) {
    return MoeDecode(L, f, N, out);
  } else {
    RS_CU(RoutedPerToken(L, f, N, out));
  }
  // Shared expert, gated by sigmoid(w . f) (the router logits in o_x2_ are consumed).
  return SharedExpertAdd(L, f, N, out);
}

// The experts of a short step in two launches per kMoeDecodeChunk tokens (gate/up + SwiGLU + q8
// for every slot, then down + the weighted sum), the shared expert among them when its types
// match the routed experts' (else it runs on its own after them).
absl::Status CudaModel::MoeDecode(const DevLayer& L, const float* f, int64_t N, float* out) {
  const int64_t H = c_.n_embd, E = c_.n_expert, k = c_.n_expert_used, I = c_.n_ff_exp,
                Is = c_.n_ff_shexp;
  const bool sh = SharedFused(L);
  float* sg = F(o_x5_);  // the shared expert's gate logits (Ffn)
  cuda::DeviceAct fa{f, H, nullptr, nullptr, H, N};
  if (const cuda::DeviceAct* p = Prepared(f, N, H)) {
    fa = *p;
  } else if (cuda::matvec_uses_q8(L.gate_exps.type)) {
    RS_CU(cuda::quantize_act(f, H, N, H, act_ws_.get(), act_ws_.size(), &fa, stream_));
  }
  cuda::MoeDecodeWeights w;
  w.gate = &L.gate_exps;
  w.up = L.fused_gate_up ? nullptr : &L.up_exps;
  w.down = &L.down_exps;
  if (sh) {
    w.sh_gate = &L.shexp_gate;
    w.sh_up = &L.shexp_up;
    w.sh_down = &L.shexp_down;
  }
  for (int64_t t0 = 0; t0 < N; t0 += kMoeDecodeChunk) {
    const int64_t n = std::min(kMoeDecodeChunk, N - t0);
    cuda::DeviceAct a = fa;
    a.x = f + t0 * H;
    if (fa.q) {
      a.q = fa.q + t0 * H;
      a.ds = fa.ds + t0 * (H / 32) * 2;
    }
    a.n_tok = n;
    RS_CU(cuda::moe_decode(w, E, I, Is, a, d_ids_ + t0 * k, d_w_ + t0 * k, k,
                           sh ? sg + t0 : nullptr, F(o_moe_h_), moe_ws_.get(), moe_ws_.size(),
                           out + t0 * H, /*accumulate=*/false, stream_));
  }
  return sh ? absl::OkStatus() : SharedExpertAdd(L, f, N, out);
}

absl::Status CudaModel::Layers(const std::vector<Piece>& ps, int64_t N, bool graph) {
  const int64_t H = c_.n_embd;
  float* hidden = F(o_hidden_);
  float* m = F(o_m_);
  // pre_ lives only inside this call (o_a_ is written elsewhere too).
  struct ClearPre {
    cuda::DeviceAct* p;
    ~ClearPre() { *p = cuda::DeviceAct{}; }
  } clear_pre{&pre_};
  pre_ = cuda::DeviceAct{};
  // Labels for a launch profile (Model::ProfileCuda); free otherwise.
  struct ClearScope {
    ~ClearScope() { cuda::profile_scope(nullptr); }
  } clear_scope;
  cuda::profile_scope("embed");
  RS_CU(cuda::embedding_lookup(token_embd_, d_tokens_, N, hidden, stream_));
  // Each residual add is fused with the norm that follows it.
  cuda::profile_scope("norm");
  RS_CU(NormA(hidden, nullptr, layers_[0].attn_norm, N));
  for (int64_t l = 0; l < c_.n_layer; ++l) {
    const DevLayer& L = layers_[l];
    if (L.kind == LayerKind::kAttention) {
      cuda::profile_scope("attn");
      RS_CU(Attention(L, attn_slot_[l], ps, N, graph));
    } else {
      cuda::profile_scope("deltanet");
      RS_CU(DeltaNet(L, dn_slot_[l], ps, N));
    }
    cuda::profile_scope("norm");
    RS_CU(NormA(hidden, m, L.post_norm, N));
    cuda::profile_scope(c_.moe ? "moe" : "ffn");
    RS_CU(Ffn(L, N));
    cuda::profile_scope("norm");
    if (l + 1 < c_.n_layer)
      RS_CU(NormA(hidden, m, layers_[l + 1].attn_norm, N));
    else
      RS_CU(cuda::add_inplace(hidden, m, N * H, stream_));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::NormA(float* hidden, const float* m, const float* w, int64_t N) {
  const int64_t H = c_.n_embd;
  float* a = F(o_a_);
  pre_ = cuda::DeviceAct{};
  if (norm_q8_ws_.get() != nullptr && N <= kMoeDecodeChunk && fused_norm_q8_)
    return cuda::add_rms_norm_q8(hidden, m, w, N, H, c_.eps, a, norm_q8_ws_.get(),
                                 norm_q8_ws_.size(), &pre_, stream_);
  if (m == nullptr) return cuda::rms_norm(hidden, w, N, H, c_.eps, a, stream_);
  return cuda::add_rms_norm(hidden, m, w, N, H, c_.eps, a, stream_);
}

// Final norm + LM head for rows[i0, i0 + n) of the hidden states into the logits buffer; for
// kGreedy and kSample also the unused ids masked, for kGreedy each row's argmax into d_argmax_.
absl::Status CudaModel::Head(const std::vector<int64_t>& rows, size_t i0, int64_t n,
                             HeadMode mode) {
  const int64_t H = c_.n_embd;
  float* a = F(o_a_);
  cuda::profile_scope("head");
  // The rows to normalise: read in place when they are consecutive (a decode step's are),
  // else gathered first.
  bool consecutive = true;
  for (int64_t i = 1; i < n; ++i) consecutive = consecutive && rows[i0 + i] == rows[i0] + i;
  const float* x = a;
  if (consecutive && n > 0)
    x = F(o_hidden_) + rows[i0] * H;
  else
    for (int64_t i = 0; i < n; ++i)
      RS_CU(cuda::copy_device(a + i * H, F(o_hidden_) + rows[i0 + i] * H, H * 4, stream_));
  RS_CU(cuda::rms_norm(x, output_norm_, n, H, c_.eps, a, stream_));
  RS_CU(Mm(output_, a, n, F(o_logits_)));
  if (mode != HeadMode::kLogits && n_unused_ > 0)
    RS_CU(cuda::mask_ids(F(o_logits_), n, c_.n_vocab, d_unused_, n_unused_, stream_));
  if (mode == HeadMode::kGreedy)
    RS_CU(cuda::argmax_rows(F(o_logits_), n, c_.n_vocab, d_argmax_, stream_, d_argmax_ws_,
                            argmax_ws_bytes_));
  return absl::OkStatus();
}

// Grows the attention workspace to `need` bytes (waiting for the stream and dropping the graphs,
// which hold the old one).
absl::Status CudaModel::EnsureAttnWorkspace(size_t need) {
  if (need <= attn_ws_.size()) return absl::OkStatus();
  RS_CU(cuda::synchronize(stream_));
  DropGraphs();
  auto b = cuda::DeviceBuffer::alloc(need);
  if (!b.ok()) return b.status();
  attn_ws_ = std::move(*b);
  return absl::OkStatus();
}

void CudaModel::DropGraphs() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));
  graphs_.clear();
}

absl::Status CudaModel::Step(const std::vector<Piece>& ps, std::vector<float>* logits,
                             std::vector<int32_t>* ids) {
  const int64_t V = c_.n_vocab;
  int64_t N = 0;
  std::vector<int32_t> toks;
  std::vector<int64_t> pos;
  std::vector<int64_t> rows;
  bool decode = true;
  for (const Piece& p : ps) {
    auto* st = static_cast<CudaSeqState*>(p.seq->device.get());
    RS_CU(Grow(st, p.seq->n_past, p.seq->n_past + p.n));
    for (int64_t t = 0; t < p.n; ++t) {
      toks.push_back(p.tokens[t]);
      pos.push_back(p.seq->n_past + t);
    }
    if (p.rows == 2)
      for (int64_t t = 0; t < p.n; ++t) rows.push_back(N + t);
    else if (p.rows == 1)
      rows.push_back(N + p.n - 1);
    decode = decode && p.n == 1;
    N += p.n;
  }
  cuda::profile_scope("input");
  RS_CU(cuda::copy_to_device(d_tokens_, toks.data(), N * 4, stream_));
  RS_CU(BeginStep(ps, decode));
  RS_CU(cuda::copy_to_device(d_pos_, pos.data(), N * 8, stream_));
  const HeadMode mode = ids == nullptr          ? HeadMode::kLogits
                        : sample_reqs_.empty() ? HeadMode::kGreedy
                                               : HeadMode::kSample;
  // Appends the n rows the LM head just wrote: argmax ids (greedy), sampled ids, or the logits.
  auto fetch_rows = [&](int64_t n) -> absl::Status {
    if (mode == HeadMode::kSample) {
      if (sample_next_ + n > sample_reqs_.size())
        return absl::InternalError("cuda: more logits rows than sampling requests");
      const size_t old = ids->size();
      ids->resize(old + n);
      const absl::Status st =
          sampler_.Sample(F(o_logits_), V, V, sample_reqs_.subspan(sample_next_, n),
                          ids->data() + old, stream_);
      sample_next_ += n;
      return st;
    }
    if (mode == HeadMode::kGreedy) {
      const size_t old = ids->size();
      ids->resize(old + n);
      return cuda::copy_to_host(ids->data() + old, d_argmax_, n * 4, stream_);
    }
    const size_t old = logits->size();
    logits->resize(old + n * V);
    return cuda::copy_to_host(logits->data() + old, F(o_logits_), n * V * 4, stream_);
  };
  const int64_t n_rows = static_cast<int64_t>(rows.size());
  if (use_graphs_ && decode && n_rows <= kMaxLogitRows) {
    // Decode: the whole step (layers + LM head) as one CUDA graph per batch shape. The
    // launches depend on the positions only through d_pos_ (KV stores and attention read it on
    // the device) and attention is split for the largest capacity, so a graph replays at every
    // length. The fused DeltaNet kernel and the batch's attention reach each sequence's buffer
    // through the pointers BeginStep uploads, so then the graph serves any set of sequences of
    // the same count, largest capacity and rows (continuous batching changes the set often);
    // the separate DeltaNet kernels take a sequence's buffer as a launch argument, so with them
    // the buffers are part of the key.
    const bool batched_attn = kv_tok_n_ == N;  // BeginStep's choice
    const bool by_shape =
        (n_dn_ == 0 || (fused_dn_ && fused_dn_on_)) && (n_attn_ == 0 || batched_attn);
    size_t need = 0;
    int64_t max_cap = 1;
    for (const Piece& p : ps) {
      auto* st = static_cast<CudaSeqState*>(p.seq->device.get());
      max_cap = std::max(max_cap, st->cap);
      if (n_attn_ > 0 && !batched_attn)  // attention per sequence: the largest one's workspace
        need = std::max(need, cuda::attention_workspace_bytes(1, c_.n_head, c_.head_dim,
                                                              st->cap - 1));
    }
    std::vector<uintptr_t> key = {static_cast<uintptr_t>(mode),
                                  reinterpret_cast<uintptr_t>(attn_ws_.get()),
                                  static_cast<uintptr_t>(by_shape), static_cast<uintptr_t>(N),
                                  static_cast<uintptr_t>(max_cap)};
    for (const Piece& p : ps) {
      auto* st = static_cast<CudaSeqState*>(p.seq->device.get());
      if (!by_shape) {
        key.push_back(reinterpret_cast<uintptr_t>(st->buf.get()));
        key.push_back(static_cast<uintptr_t>(st->cap));
      }
      key.push_back(static_cast<uintptr_t>(p.rows));
    }
    // The decode batch's attention (Attention: one launch pair over every sequence's cache).
    if (n_attn_ > 0 && batched_attn)
      need = cuda::attention_seqs_workspace_bytes(N, c_.n_head, c_.head_dim, max_cap);
    RS_CU(EnsureAttnWorkspace(need));
    key[1] = reinterpret_cast<uintptr_t>(attn_ws_.get());
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      if (graphs_.size() >= 64) DropGraphs();
      cudaStream_t cs = static_cast<cudaStream_t>(stream_);
      cudaError_t e = cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal);
      if (e != cudaSuccess)
        return absl::InternalError(absl::StrCat("cudaStreamBeginCapture: ", cudaGetErrorString(e)));
      absl::Status st = Layers(ps, N, /*graph=*/true);
      if (st.ok() && n_rows > 0) st = Head(rows, 0, n_rows, mode);
      cudaGraph_t g = nullptr;
      e = cudaStreamEndCapture(cs, &g);
      if (!st.ok()) {
        if (g) cudaGraphDestroy(g);
        return st;
      }
      if (e != cudaSuccess)
        return absl::InternalError(absl::StrCat("cudaStreamEndCapture: ", cudaGetErrorString(e)));
      cudaGraphExec_t exec = nullptr;
      e = cudaGraphInstantiate(&exec, g, 0);
      cudaGraphDestroy(g);
      if (e != cudaSuccess)
        return absl::InternalError(absl::StrCat("cudaGraphInstantiate: ", cudaGetErrorString(e)));
      it = graphs_.emplace(key, exec).first;
    }
    const cudaError_t e =
        cudaGraphLaunch(static_cast<cudaGraphExec_t>(it->second), static_cast<cudaStream_t>(stream_));
    if (e != cudaSuccess)
      return absl::InternalError(absl::StrCat("cudaGraphLaunch: ", cudaGetErrorString(e)));
    if (n_rows > 0) {
      RS_CU(fetch_rows(n_rows));
    } else {
      RS_CU(cuda::synchronize(stream_));
    }
  } else {
    RS_CU(Layers(ps, N, /*graph=*/false));
    // Logits of the wanted rows, at most kMaxLogitRows per LM-head launch.
    for (size_t i0 = 0; i0 < rows.size(); i0 += kMaxLogitRows) {
      const int64_t n = std::min<int64_t>(kMaxLogitRows, static_cast<int64_t>(rows.size() - i0));
      RS_CU(Head(rows, i0, n, mode));
      RS_CU(fetch_rows(n));
    }
    if (rows.empty()) RS_CU(cuda::synchronize(stream_));
  }
  for (const Piece& p : ps) p.seq->n_past += p.n;
  return absl::OkStatus();
}

// The step's kind for the kernels that differ by it; for decode with the fused DeltaNet kernel,
// each piece's state buffer where that kernel finds it.
absl::Status CudaModel::BeginStep(const std::vector<Piece>& ps, bool decode) {
  decode_step_ = decode;
  kv_tok_n_ = 0;
  if (!decode) return absl::OkStatus();
  const bool dn = fused_dn_ && fused_dn_on_;
  bool attn = false;
  if (n_attn_ > 0) {
    int64_t max_cap = 1;
    for (const Piece& p : ps)
      max_cap = std::max(max_cap, static_cast<CudaSeqState*>(p.seq->device.get())->cap);
    const size_t need = cuda::attention_seqs_workspace_bytes(
        static_cast<int64_t>(ps.size()), c_.n_head, c_.head_dim, max_cap);
    attn = need <= std::max(kBatchedAttnWorkspace, attn_ws_.size());
  }
  if (!dn && !attn) return absl::OkStatus();
  // One upload: the sequences' state buffers (the fused DeltaNet kernel), then each attention
  // layer's K and V caches per token (the decode batch's KV stores and attention in one launch
  // each instead of one per sequence).
  const int64_t N = static_cast<int64_t>(ps.size());
  std::vector<uint8_t*> ptrs(N * (1 + 2 * n_attn_));
  for (int64_t i = 0; i < N; ++i) {
    auto* st = static_cast<CudaSeqState*>(ps[i].seq->device.get());
    uint8_t* base = static_cast<uint8_t*>(st->buf.get());
    ptrs[i] = base;
    for (int64_t ai = 0; ai < n_attn_; ++ai) {
      ptrs[(1 + 2 * ai) * N + i] = kv(base, st->cap, ai, 0);
      ptrs[(2 + 2 * ai) * N + i] = kv(base, st->cap, ai, 1);
    }
  }
  kv_tok_n_ = attn ? N : 0;
  return cuda::copy_to_device(d_seq_base_, ptrs.data(), ptrs.size() * sizeof(uint8_t*), stream_);
}

absl::Status CudaModel::Mixer(absl::Span<const StepItem> batch, int64_t l, float* hidden,
                             float* f, int32_t* ids, float* weights, float* ffn) {
  RS_CU(MixerDev(batch, l, hidden, ids, weights, ffn != nullptr));
  int64_t N = 0;
  for (const StepItem& it : batch) N += it.n_tok;
  const int64_t H = c_.n_embd;
  if (ffn) RS_CU(cuda::copy_to_host(ffn, F(o_m_), N * H * 4, stream_));
  RS_CU(cuda::copy_to_host(hidden, F(o_hidden_), N * H * 4, stream_));
  RS_CU(cuda::copy_to_host(f, F(o_a_), N * H * 4, stream_));
  return cuda::synchronize(stream_);
}

absl::Status CudaModel::MixerOnDevice(absl::Span<const StepItem> batch, int64_t l, int32_t* ids,
                                      float* weights) {
  RS_CU(MixerDev(batch, l, nullptr, ids, weights, /*ffn=*/true));
  return cuda::synchronize(stream_);
}

absl::Status CudaModel::MixerDev(absl::Span<const StepItem> batch, int64_t l,
                                 const float* hidden_in, int32_t* ids, float* weights, bool ffn) {
  cudaSetDevice(device_);
  const int64_t H = c_.n_embd;
  std::vector<Piece> ps;
  std::vector<int64_t> pos;
  int64_t N = 0;
  bool decode = true;
  for (const StepItem& it : batch) {
    auto* st = static_cast<CudaSeqState*>(it.seq->device.get());
    if (!st)
      return absl::FailedPreconditionError(
          "cuda: sequence has no device state (its allocation failed; see the log)");
    RS_CU(Grow(st, it.seq->n_past, it.seq->n_past + it.n_tok));
    ps.push_back(Piece{it.seq, it.tokens, it.n_tok, 0});
    for (int64_t t = 0; t < it.n_tok; ++t) pos.push_back(it.seq->n_past + t);
    decode = decode && it.n_tok == 1;
    N += it.n_tok;
  }
  if (N > kMaxStepTokens)
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda: a distributed step of ", N, " tokens; the device workspace holds ", kMaxStepTokens,
        " (lower the daemon's step token budget)"));
  if (N == 0) return absl::OkStatus();
  RS_CU(cuda::copy_to_device(d_pos_, pos.data(), N * 8, stream_));
  RS_CU(BeginStep(ps, decode));
  if (sharded_ && !m_.opts_.cuda_layers[l])
    return absl::FailedPreconditionError(
        absl::StrCat("cuda: layer ", l, "'s mixer is not on this device (another rank's layer)"));
  const DevLayer& L = layers_[l];
  float* dh = F(o_hidden_);
  float* a = F(o_a_);
  if (hidden_in) RS_CU(cuda::copy_to_device(dh, hidden_in, N * H * 4, stream_));
  RS_CU(cuda::rms_norm(dh, L.attn_norm, N, H, c_.eps, a, stream_));
  if (L.kind == LayerKind::kAttention)
    RS_CU(Attention(L, attn_slot_[l], ps, N, /*graph=*/false));
  else
    RS_CU(DeltaNet(L, dn_slot_[l], ps, N));
  RS_CU(cuda::add_rms_norm(dh, F(o_m_), L.post_norm, N, H, c_.eps, a, stream_));
  // The layer's router, and its shared expert (MoE) or FFN (dense), on the device as well: only
  // the routed experts are dispatched.
  const int64_t k = c_.n_expert_used;
  if (c_.moe && ids) {
    float* logits = F(o_x2_);
    RS_CU(Mm(L.router, a, N, logits));
    RS_CU(cuda::router_topk(logits, N, c_.n_expert, k, d_ids_, d_w_, stream_));
    RS_CU(cuda::copy_to_host(ids, d_ids_, N * k * 4, stream_));
    RS_CU(cuda::copy_to_host(weights, d_w_, N * k * 4, stream_));
  }
  if (ffn) {
    float* out = F(o_m_);  // the mixer output is consumed
    if (c_.moe) {
      RS_CU(cuda::fill_bytes(out, 0, N * H * 4, stream_));
      RS_CU(SharedExpertAdd(L, a, N, out));
    } else {
      RS_CU(DenseFfn(L, a, N, out));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CudaModel::GroupedLocalExperts(int64_t l, int64_t n_tok,
                                                       const float* x_host, const float* dx,
                                                       const int32_t* ids,
                                                       const float* weights,
                                                       std::vector<int32_t>* local,
                                                       std::vector<int32_t>* inv) {
  cudaSetDevice(device_);
  const int64_t H = c_.n_embd, k = c_.n_expert_used, I = c_.n_ff_exp, S = n_tok * k;
  local->clear();
  if (l < 0 || l >= static_cast<int64_t>(expert_local_.size()) || n_local_experts_[l] == 0 ||
      n_tok == 0)
    return 0;
  if (n_tok > kMaxStepTokens)
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda: ", n_tok, " tokens for the experts of layer ", l, "; the device workspace holds ",
        kMaxStepTokens));
  local->resize(S);
  int64_t n_ours = 0;
  for (int64_t s = 0; s < S; ++s) {
    (*local)[s] = HoldsExpert(l, ids[s]) ? expert_local_[l][ids[s]] : -1;
    n_ours += (*local)[s] >= 0;
  }
  if (n_ours == 0) return 0;
  const DevLayer& L = layers_[l];
  if (x_host) RS_CU(cuda::copy_to_device(const_cast<float*>(dx), x_host, n_tok * H * 4, stream_));
  RS_CU(cuda::copy_to_device(d_ids_, local->data(), S * 4, stream_));
  RS_CU(cuda::copy_to_device(d_w_, weights, S * 4, stream_));
  RS_CU(cuda::moe_grouped(L.gate_exps, L.fused_gate_up ? nullptr : &L.up_exps, L.down_exps,
                          n_local_experts_[l], I, H, dx, n_tok, d_ids_, d_w_, k, F(o_x1_),
                          F(o_x3_), F(o_moe_d_), moe_ws_.get(), moe_ws_.size(), /*out=*/nullptr,
                          stream_));
  inv->resize(S);
  RS_CU(cuda::copy_to_host(inv->data(), cuda::moe_grouped_inv(moe_ws_.get(), S), S * 4, stream_));
  RS_CU(cuda::synchronize(stream_));
  return n_ours;
}

absl::Status CudaModel::ExpertSlots(int64_t l, const float* x, int64_t n_tok,
                                   const int32_t* ids, const float* weights, float* slots) {
  const int64_t H = c_.n_embd, S = n_tok * c_.n_expert_used;
  std::vector<int32_t> local, inv;
  absl::StatusOr<int64_t> n_ours =
      GroupedLocalExperts(l, n_tok, x, F(o_a_), ids, weights, &local, &inv);
  if (!n_ours.ok()) return n_ours.status();
  if (*n_ours == 0) return absl::OkStatus();
  std::vector<float> d(*n_ours * H);
  RS_CU(cuda::copy_to_host(d.data(), F(o_moe_d_), *n_ours * H * 4, stream_));
  RS_CU(cuda::synchronize(stream_));
  for (int64_t s = 0; s < S; ++s) {
    if (local[s] < 0) continue;
    const float* src = d.data() + static_cast<int64_t>(inv[s]) * H;
    float* dst = slots + s * H;
    for (int64_t h = 0; h < H; ++h) dst[h] = weights[s] * src[h];
  }
  return absl::OkStatus();
}

par::RowMemory* CudaModel::Rows() {
  if (!rows_) rows_ = std::make_unique<CudaRowMemory>(device_, stream_);
  return rows_.get();
}

absl::Status CudaModel::ReserveRows(int world) {
  cudaSetDevice(device_);
  if (!c_.moe) return absl::OkStatus();
  const size_t T = kMaxStepTokens, H = c_.n_embd, k = c_.n_expert_used;
  const size_t row = T * (H + 2 * k) * 4, slots = T * k * H * 4;
  // The owner sends a token once to each rank holding one of its experts (itself included).
  const size_t copies = std::min<size_t>(std::max(world, 1), k);
  const size_t want[4] = {copies * row, row, slots, slots};  // send, receive, slots, combine
  for (int i = 0; i < 4; ++i)
    if (auto b = Rows()->Scratch(i, want[i]); !b.ok()) return b.status();
  if (auto ix = Indices(3 * T * k); !ix.ok()) return ix.status();
  // The RowMemory's gather index array (its first allocation holds 16K rows): one row, into
  // scratch that the next mixer overwrites.
  const int32_t row0 = 0;
  return Rows()->GatherRows(F(o_a_), F(o_hidden_), &row0, 1, H);
}

absl::StatusOr<int32_t*> CudaModel::Indices(size_t ints) {
  if (idx_buf_.size() < ints * 4) {
    idx_buf_ = cuda::DeviceBuffer();
    auto nb = cuda::DeviceBuffer::alloc(std::max(ints * 4, size_t{64} << 10));
    if (!nb.ok()) return nb.status();
    idx_buf_ = std::move(*nb);
  }
  return idx_buf_.as<int32_t>();
}

absl::Status CudaModel::ExpertRows(int64_t l, const float* x, int64_t n_tok, const int32_t* ids,
                                   const float* weights, float* out) {
  const int64_t H = c_.n_embd, S = n_tok * c_.n_expert_used;
  std::vector<int32_t> local, inv;
  absl::StatusOr<int64_t> n_ours =
      GroupedLocalExperts(l, n_tok, nullptr, x, ids, weights, &local, &inv);
  if (!n_ours.ok()) return n_ours.status();
  if (*n_ours == 0) return absl::OkStatus();
  // Each of our slots: its bucket row of d, its row in `out` (its index among the slots with
  // ids >= 0) and its routing weight.
  std::vector<int64_t> ours, dst;
  int32_t p = 0;
  for (int64_t s = 0; s < S; ++s) {
    if (local[s] >= 0) {
      ours.push_back(s);
      dst.push_back(p);
    }
    p += ids[s] >= 0;
  }
  const size_t n = ours.size();
  std::vector<int32_t> idx(3 * n);  // [src rows][dst rows][scale bits]
  for (size_t i = 0; i < n; ++i) {
    idx[i] = inv[ours[i]];
    idx[n + i] = static_cast<int32_t>(dst[i]);
    std::memcpy(&idx[2 * n + i], &weights[ours[i]], 4);
  }
  absl::StatusOr<int32_t*> d_idx = Indices(3 * n);
  if (!d_idx.ok()) return d_idx.status();
  RS_CU(cuda::copy_to_device(*d_idx, idx.data(), 3 * n * 4, stream_));
  RS_CU(cuda::gather_rows(out, *d_idx + n, F(o_moe_d_), *d_idx,
                          reinterpret_cast<const float*>(*d_idx + 2 * n),
                          static_cast<int64_t>(n), H, stream_));
  return cuda::synchronize(stream_);
}

absl::Status CudaModel::CombineOnDevice(int64_t /*l*/, const float* rows,
                                        const int32_t* slot_row, int64_t n_tok, int64_t k) {
  cudaSetDevice(device_);
  if (n_tok <= 0) return absl::OkStatus();
  if (n_tok > kMaxStepTokens)
    return absl::FailedPreconditionError(absl::StrCat("cuda: combine of ", n_tok,
                                                      " tokens; the workspace holds ",
                                                      kMaxStepTokens));
  int32_t* d_rows = nullptr;
  if (k > 0) {
    absl::StatusOr<int32_t*> d = Indices(static_cast<size_t>(n_tok * k));
    if (!d.ok()) return d.status();
    d_rows = *d;
    RS_CU(cuda::copy_to_device(d_rows, slot_row, n_tok * k * 4, stream_));
  }
  RS_CU(cuda::combine_slots(F(o_hidden_), rows, d_rows, F(o_m_), n_tok, k, c_.n_embd, stream_));
  return cuda::synchronize(stream_);
}

absl::Status CudaModel::Run(absl::Span<const StepItem> batch, std::vector<float>* logits,
                            std::vector<int32_t>* ids) {
  if (sharded_)
    return absl::FailedPreconditionError(
        "cuda: this worker holds only its layers of a group; whole-model steps "
        "need the whole model on the device (Model::ShardCuda with no layers)");
  cudaSetDevice(device_);
  if (logits) logits->clear();
  if (ids) ids->clear();
  std::vector<Piece> step;
  int64_t in_step = 0;
  for (const StepItem& it : batch) {
    if (!it.seq->device)
      return absl::FailedPreconditionError(
          "cuda: sequence has no device state (its allocation failed; see the log)");
    for (int64_t t0 = 0; t0 < it.n_tok;) {
      if (in_step == kMaxStepTokens) {
        RS_CU(Step(step, logits, ids));
        step.clear();
        in_step = 0;
      }
      const int64_t n = std::min(it.n_tok - t0, kMaxStepTokens - in_step);
      const bool last = t0 + n == it.n_tok;
      step.push_back(Piece{it.seq, it.tokens + t0, n, it.all_logits ? 2 : (last ? 1 : 0)});
      in_step += n;
      t0 += n;
      // A sequence appears once per sub-step: its next piece starts a new one.
      if (!last) {
        RS_CU(Step(step, logits, ids));
        step.clear();
        in_step = 0;
      }
    }
  }
  if (!step.empty()) RS_CU(Step(step, logits, ids));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CreateCudaBackend(const Model& m) {
  auto b = std::make_unique<CudaModel>(m);
  if (absl::Status st = b->Init(); !st.ok()) return st;
  return std::unique_ptr<CudaBackend>(std::move(b));
}

#undef RS_CU

}  // namespace rs
#endif
