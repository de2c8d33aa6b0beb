// The Qwen3.5 model (qwen35 dense, qwen35moe) on the CPU: weights bound from a GGUF (mmap, no
// copies for matmul weights), per-sequence state, and a forward step over a batch of
// (sequence, tokens) items that can run a sub-range of layers with a pluggable expert executor.
// Spec: ../shared/spec/qwen35.md §3-5.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/matmul.h"
#include "kernels/sampler.h"
#include "parallel/communicator.h"
namespace rs::par { class RowMemory; }
#include "parallel/moe_dispatch.h"
#include "worker/gguf.h"
#include "worker/model_config.h"

namespace rs {

enum class Backend { kReference, kCpu, kCuda };
absl::StatusOr<Backend> ParseBackend(const std::string& name);
const char* BackendName(Backend b);

// Per-sequence state: KV cache of the attention layers, conv + recurrent state of the DeltaNet
// layers (f32). The KV cache grows by doubling; reserve() sizes it up front.
struct SeqState {
  // State held on a device by a non-CPU backend (the CUDA backend keeps the KV cache, conv and
  // recurrent state there; the host vectors below stay empty).
  struct DeviceState {
    virtual ~DeviceState() = default;
    virtual void reset() = 0;
    virtual std::unique_ptr<DeviceState> clone() const = 0;
  };

  SeqState() = default;
  SeqState(const SeqState& o);
  SeqState& operator=(const SeqState& o);
  SeqState(SeqState&&) = default;
  SeqState& operator=(SeqState&&) = default;

  int64_t n_past = 0;
  // One attention layer's cache, head-major: [n_kv_heads][cap][head_dim] in kv_type (see
  // KvView). Memory is allocated uninitialised (large reservations stay untouched until used)
  // and re-laid out when the positions outgrow cap.
  struct Kv {
    std::unique_ptr<uint8_t[]> k, v;
    int64_t heads = 0;      // n_kv_heads
    size_t head_row = 0;    // bytes of one position of one head
    int64_t cap = 0;        // positions per head allocated
    int64_t used = 0;       // positions written
    Kv() = default;
    Kv(const Kv& o);
    Kv& operator=(const Kv& o);
    Kv(Kv&&) = default;
    Kv& operator=(Kv&&) = default;
    // Makes room for `n` positions, keeping the `used` ones.
    void Reserve(int64_t n);
    uint8_t* k_at(int64_t h, int64_t p) { return k.get() + (h * cap + p) * head_row; }
    uint8_t* v_at(int64_t h, int64_t p) { return v.get() + (h * cap + p) * head_row; }
  };
  std::vector<Kv> kv;             // one per attention layer (in layer order)
  std::vector<std::vector<float>> conv;  // one per DeltaNet layer: [K-1][conv_dim]
  std::vector<std::vector<float>> ssm;   // one per DeltaNet layer: [Hv][dk][dv]
  std::unique_ptr<DeviceState> device;
  void reset();
};

// Computes the routed experts of one MoE layer for a set of tokens: out[t] = sum_i
// weights[t][i] * expert_{ids[t][i]}(x[t]). The local executor runs them here; an
// expert-parallel one dispatches to other workers.
class ExpertExecutor {
 public:
  virtual ~ExpertExecutor() = default;
  virtual void Run(int64_t layer, const float* x, int64_t n_tok, const int32_t* ids,
                   const float* weights, float* out) = 0;
};

// out[t] = sum over slots i = 0..k-1, in that order, of slots[t][i] (each already weighted).
// Summing in a fixed order makes the result independent of where each expert ran.
void SumExpertSlots(const float* slots, int64_t n_tok, int64_t k, int64_t H, float* out,
                    int n_threads = 1);

struct ModelOptions {
  Backend backend = Backend::kCpu;
  int n_threads = 0;               // 0: all cores
  // KV cache type: F16 by default; F32 for the reference backend and when the attention
  // weights are F32 (exact test models); Q8_0 on request.
  std::optional<GgmlType> kv_type;
  // Routed experts per token; 0 = the model's expert_used_count (tests force all experts).
  int64_t n_expert_used = 0;
  // CUDA backend: the device to use and the context each new sequence's KV cache is sized for
  // up front (a sequence that outgrows it is reallocated, doubling).
  int cuda_device = 0;
  int64_t cuda_ctx = 4096;
  bool cuda_graphs = true;  // decode steps captured as CUDA graphs and replayed
  // Sequence-state buffers (KV caches of cuda_ctx positions + DeltaNet states) allocated at
  // load and recycled (the worker's state slots); 0: allocated as sequences start.
  int cuda_state_slots = 0;
  // CUDA backend, for workers that may join a group: load binds the weights on the host only;
  // the device copy is made by EnsureCuda / ShardCuda (once the placement is known, or on first
  // use).
  bool cuda_deferred = false;
  // CUDA backend of a group rank: when not empty, the device holds only the layers marked here
  // (mixer, norms, router, shared expert or FFN; not the routed experts, see cuda_experts) and
  // runs only ForwardDistributed (embedding, host-RAM experts and LM head run on the host).
  std::vector<char> cuda_layers;
  // With a layer shard: per layer, the routed experts (ascending ids) this rank keeps on the
  // device and runs there in ForwardDistributed; the rest of its experts run on the host CPU.
  std::vector<std::vector<int32_t>> cuda_experts;
};

// One item of a step: `n_tok` tokens of one sequence, continuing its state.
struct StepItem {
  SeqState* seq = nullptr;
  const int32_t* tokens = nullptr;
  int64_t n_tok = 0;
  bool all_logits = false;  // logits for every token (score) or only the last
};

class Model {
 public:
  static absl::StatusOr<std::unique_ptr<Model>> Load(std::shared_ptr<const gguf::File> file,
                                                     const ModelOptions& opts);
  ~Model();

  const ModelConfig& config() const { return cfg_; }
  Backend backend() const { return opts_.backend; }
  int cuda_device() const { return opts_.cuda_device; }
  GgmlType kv_type() const { return kv_type_; }
  int n_threads() const { return n_threads_; }

  // A fresh state sized for `reserve_ctx` positions.
  std::unique_ptr<SeqState> NewSequence(int64_t reserve_ctx = 0) const;

  // Runs all layers for the batch and writes logits: for each item, n_tok rows if all_logits
  // else 1 row, concatenated in item order, each n_vocab floats.
  absl::Status Forward(absl::Span<const StepItem> batch, std::vector<float>* logits);
  // Greedy: the argmax of each logits row of Forward (unused ids never chosen), and nothing
  // else. On the CUDA backend the logits stay on the device.
  absl::Status ForwardGreedy(absl::Span<const StepItem> batch, std::vector<int32_t>* ids);
  // Sampling: one token per item (no item may ask for all_logits) from its last logits row, by
  // the pipeline of kernels/sampler.h with the unused ids masked; reqs[i] is item i's (params
  // == nullptr: not sampled, result token -1). CPU: Forward + sample_cpu. CUDA: the logits stay
  // on the device (kernels/cuda/cuda_sampler.h) unless a request asks for logprobs, which are
  // then computed on the host as on the CPU.
  absl::Status ForwardSample(absl::Span<const StepItem> batch,
                             absl::Span<const SampleRequest> reqs,
                             std::vector<SampleResult>* out);
  // CUDA backend: capture decode steps as CUDA graphs (default) or launch every kernel.
  void set_cuda_graphs(bool on);
  // CUDA backend: makes the device copy now if it is deferred (no-op otherwise or on the CPU).
  absl::Status EnsureCuda();
  // CUDA backend: re-makes the device copy for this group role (layers: the layers this rank
  // runs; empty: the whole model). A no-op if it already holds exactly that.
  // Sequences made before are invalid afterwards.
  // gpu_experts: per layer, the routed experts to keep on the device (see ModelOptions).
  absl::Status ShardCuda(const std::vector<char>& layers,
                         const std::vector<std::vector<int32_t>>& gpu_experts = {});
  // CUDA backend: decode steps run each DeltaNet layer as one fused kernel or as the separate
  // conv / norm / gate / delta-rule / gated-norm kernels of prefill (default: measured faster
  // on an H200, bench/gpu_check.sh's dn-fused column).
  void set_cuda_fused_deltanet(bool on);
  // CUDA backend: decode steps of 16+ sequences run the routed experts grouped by expert (as
  // prefill does) instead of per-token matvecs. Off by default until measured on a GPU.
  void set_cuda_grouped_moe_decode(bool on);
  // CUDA backend: steps below the grouped size run each MoE layer's routed and shared experts
  // in two fused launches and take the matvecs' q8 activations from the kernel before them (the
  // norm, SwiGLU, the attention gate: default), or run per-token matvecs, the separate shared
  // expert, and a quantiser per matvec group (for comparison).
  void set_cuda_fused_moe_decode(bool on);
  // CUDA backend: steps below the grouped size run a dense FFN's gate/up/SwiGLU in one launch
  // (cuda::ffn_up) instead of the matvec pair and swiglu_q8 (default off: slower on an H200,
  // bench/gpu_check.sh's ffn-up column).
  void set_cuda_fused_ffn_up(bool on);
  // CUDA backend: split-K attention reads each K/V row once per KV head for all its query heads
  // (on) or once per query head (off, the default until measured on a GPU).
  void set_cuda_gqa_attention(bool on);
  // CUDA backend: programmatic dependent launch (sm_90+: each kernel's blocks may be scheduled
  // before the previous kernel ends; every kernel waits for it first, so results are equal).
  // Off by default until measured on a GPU; a no-op on older devices.
  void set_cuda_programmatic_launch(bool on);
  // CUDA backend (benchmarks): runs `step` (Forward / ForwardGreedy / ForwardSample calls) with
  // graphs off and every kernel and copy it queues timed on the device (kernels/cuda/cuda_ops.h
  // profile_begin), each labelled by the part of the model that queued it ("moe/moe_decode
  // (up)", "head/matvec", ...). FailedPrecondition on the CPU backend.
  struct CudaProfileRow {
    std::string name;
    int64_t calls = 0;
    double ms = 0;
  };
  struct CudaProfile {
    std::vector<CudaProfileRow> rows;  // by descending time
    double total_ms = 0;               // device time of all rows
    double host_queue_ms = 0;          // the host's time to queue them
    int64_t launches = 0;
    bool host_bound = false;           // the host queued slower than the hold: times inflated
  };
  absl::StatusOr<CudaProfile> ProfileCuda(const std::function<absl::Status()>& step);

  // Pipeline-stage pieces. `hidden` is [total tokens][H] in item order.
  void Embed(absl::Span<const StepItem> batch, float* hidden) const;
  absl::Status RunLayers(absl::Span<const StepItem> batch, int64_t layer_begin, int64_t layer_end,
                         float* hidden);
  // Final norm + LM head on the selected rows of hidden.
  void Logits(const float* hidden, const std::vector<int64_t>& rows, float* logits);

  // Distributed step (pipeline + expert parallelism): every rank calls this with the same
  // batch. Rank `layer_owner[l]` runs layer l's mixer, norms, router and shared expert; routed
  // experts run where `expert_owner[l][e]` says. Logits land on the owner of the last layer
  // (the others get an empty vector). Collectives go through `comm`.
  struct Placement {
    std::vector<int> layer_owner;               // n_layer entries
    std::vector<std::vector<int>> expert_owner; // [n_layer][n_expert] (MoE only)
    // [n_layer][n_expert]: -1 the owner's host RAM, >= 0 its GPU; empty: all in host RAM. A CPU
    // worker runs every expert on its CPU either way.
    std::vector<std::vector<int>> expert_device;
  };
  // `data` (optional; the cuda backend, or a cpu model after UseHostRows): the communicator of
  // the rows, whose ops take device pointers (NCCL; or par::MakeStagedCommunicator over comm and
  // CudaRows()); then the residual stream, the dispatched rows and the slot results stay on the
  // GPU and only control messages (counts, hand-off headers) go over `comm`. Without it
  // everything goes over `comm` in host memory (CUDA ranks copy each layer's rows in and out).
  absl::Status ForwardDistributed(absl::Span<const StepItem> batch, par::Communicator* comm,
                                  const Placement& placement, std::vector<float>* logits,
                                  par::Communicator* data = nullptr);
  // The cuda backend's RowMemory (made on first use); null on the cpu backend or when the
  // device copy cannot be made.
  par::RowMemory* CudaRows();
  // The cuda backend's dispatch buffers for the device-rows path in a group of `world` ranks,
  // allocated now (a group rank with an NCCL data plane, at load); no-op on the cpu.
  absl::Status ReserveDeviceRows(int world);
  // Tests of the device-rows path without a GPU: a cpu model runs ForwardDistributed(..., data)
  // with its "device" buffers in `mem` (which must outlive the model's use of it; the ops of
  // `data` take its pointers), the mixers and experts on the CPU; with `holds_even_experts` the
  // even expert ids take the path of experts kept on the device, the odd ones that of host-RAM
  // experts. The logits equal the host path's bit for bit.
  void UseHostRows(par::RowMemory* mem, bool holds_even_experts);
  // This rank's traffic in ForwardDistributed, accumulated over its steps (decode: only the
  // steps whose items are all single tokens). Bytes are payload to / from other ranks.
  struct CommStats {
    uint64_t steps = 0, tokens = 0;
    par::MoeStats moe;  // expert dispatch + combine (all MoE layers)
    uint64_t handoff_bytes_sent = 0, handoff_bytes_received = 0;
    double handoff_seconds = 0;
  };
  CommStats comm_stats(bool decode_only) const;

  void set_expert_executor(ExpertExecutor* ex) { experts_ = ex; }
  ExpertExecutor* local_experts() { return local_experts_.get(); }

  // Padding ids of the vocabulary (token type UNUSED): never sampled (spec §3.1 recommends
  // masking them; they are untrained).
  const std::vector<int32_t>& unused_token_ids() const { return unused_tokens_; }
  // Sets the logits of the unused ids to -inf in each of `rows` rows of n_vocab.
  void MaskUnused(float* logits, int64_t rows) const;

  // Total bytes of weights the model reads per decoded token (for bandwidth reports).
  uint64_t active_weight_bytes_per_token() const;

  struct Layer;
  struct Workspace;
  friend class CudaModel;

 private:
  // Tokens per CPU sub-step of Forward.
  static constexpr int64_t kCpuStepTokens = 2048;
  // One CPU sub-step (each sequence at most once): appends the logits rows of the pieces with
  // all_logits, and of the pieces that hold their item's last token (last[i]).
  absl::Status CpuStep(absl::Span<const StepItem> batch, const std::vector<char>& last,
                       std::vector<float>* logits);
  Model() = default;
  absl::Status Bind();
  // Every item has a sequence, tokens, ids in the vocabulary (and device state on cuda).
  absl::Status CheckBatch(absl::Span<const StepItem> batch) const;
  void Matmul(const WeightView& w, const float* x, int64_t n_tok, float* y);
  void MatmulLd(const WeightView& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy);
  void DeltaNetLayer(const Layer& L, absl::Span<const StepItem> batch, const float* a, float* out);
  void AttentionLayer(const Layer& L, absl::Span<const StepItem> batch, const float* a, float* out);
  void FfnLayer(const Layer& L, int64_t layer, const float* f, int64_t n_tok, float* out);
  void Route(const Layer& L, const float* f, int64_t n_tok, int32_t* ids, float* weights);
  void SharedExpertAdd(const Layer& L, const float* f, int64_t n_tok, float* out);
  void Mixer(const Layer& L, absl::Span<const StepItem> batch, float* hidden, float* f);
  absl::Status ForwardDistributedDevice(absl::Span<const StepItem> batch, par::Communicator* comm,
                                        par::Communicator* data, const Placement& pl,
                                        const std::vector<int64_t>& rows, int64_t N,
                                        CommStats* step, std::vector<float>* logits);
  // slots[t][i] = weights[t][i] * expert_{ids[t][i]}(x[t]) for every slot whose id is >= 0
  // (zero for id -1): the local executor's per-slot entry point, for ForwardDistributed.
  void RunLocalExpertSlots(int64_t layer, const float* x, int64_t n_tok, const int32_t* ids,
                           const float* weights, float* slots);

  std::shared_ptr<const gguf::File> file_;
  ModelOptions opts_;
  ModelConfig cfg_;
  GgmlType kv_type_ = GgmlType::F16;
  int n_threads_ = 1;
  std::vector<Layer> layers_;
  WeightView token_embd_, output_;
  const float* output_norm_ = nullptr;
  std::vector<int64_t> attn_index_, dn_index_;  // layer -> index in SeqState::kv / conv
  std::vector<int32_t> unused_tokens_;
  std::unique_ptr<Workspace> ws_;
  std::vector<float> sample_logits_;
  SamplerScratch sampler_scratch_;
  std::unique_ptr<ExpertExecutor> local_experts_;
  ExpertExecutor* experts_ = nullptr;
  std::unique_ptr<class CudaBackend> cuda_;
  std::shared_ptr<struct DistributedState> dist_;  // ForwardDistributed (model_distributed.cc)
  std::shared_ptr<class RowsBackend> host_rows_;   // UseHostRows
  friend class HostRowsBackend;
  friend class LocalExpertExecutor;
};

}  // namespace rs
