// Model internals shared by the CPU forward pass (model.cc) and the CUDA backend
// (model_cuda.cc): the bound weights of one layer and the CPU scratch buffers.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/matmul.h"
#include "parallel/moe_dispatch.h"
#include "worker/model.h"
#include "worker/model_config.h"

namespace rs {

struct Model::Layer {
  LayerKind kind = LayerKind::kDeltaNet;
  const float* attn_norm = nullptr;
  const float* post_norm = nullptr;
  // Gated attention.
  WeightView wq, wk, wv, wo;
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
  // Gated DeltaNet.
  WeightView qkv, gate, beta, alpha, ssm_out;
  const float* conv1d = nullptr;  // [conv_dim][K]
  const float* dt_bias = nullptr;
  const float* ssm_a = nullptr;
  const float* ssm_norm = nullptr;
  // Dense FFN.
  WeightView ffn_gate, ffn_up, ffn_down;
  // MoE.
  WeightView router, gate_exps, up_exps, down_exps;  // stacked: rows = I * E (down: H * E)
  bool fused_gate_up = false;                         // gate_exps holds [gate; up] per expert
  WeightView shexp_gate_inp, shexp_gate, shexp_up, shexp_down;
  std::vector<std::vector<float>> owned;  // 1-D tensors converted to f32
};

// Scratch buffers reused across steps (grow only).
struct Model::Workspace {
  std::vector<float> a, m, f, u, z, b, al, c, q, k, v, g, beta, o, y, qg, gate, kk, vv, ffn1,
      ffn2, ffn3, router, ew, sh, tmp;
  std::vector<int32_t> ids;
  std::vector<int64_t> pos;
  static float* get(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
};

// The rows of the listed experts of a stacked expert tensor (rows_per_expert rows each, in
// list order), contiguous: a device shard's compact copy of the experts it runs.
std::vector<uint8_t> GatherExpertRows(const WeightView& w, int64_t rows_per_expert,
                                      const std::vector<int32_t>& experts);

// ForwardDistributed with the rows on the device (a data communicator whose ops take device
// pointers: NCCL, or Gloo staged through the device): what it needs of the backend. The step's
// residual stream stays in DeviceHidden() ([N][H], N <= 512) between layers. Implemented by the
// CUDA backend, and on the CPU for tests (Model::UseHostRows).
class RowsBackend {
 public:
  virtual ~RowsBackend() = default;
  // The routed experts this device keeps (ModelOptions::cuda_experts); the others of this rank
  // run on the host CPU.
  virtual bool HoldsExpert(int64_t l, int32_t e) const = 0;
  // This device's RowMemory: scratch buffers (allocated on first use, grown when a step needs
  // more), copies and row gathers, each complete when it returns.
  virtual par::RowMemory* Rows() = 0;
  // Allocates Rows()' dispatch buffers (and index arrays) for a full step of a group of `world`
  // ranks now, at load, so that no step allocates (par::MoeDispatcher::RunRows' scratch slots
  // 0-3; the planner counts them as DispatchWorkspaceBytes).
  virtual absl::Status ReserveRows(int world) = 0;
  virtual float* DeviceHidden() = 0;
  // As CudaBackend::Mixer with the residual stream in DeviceHidden() (updated in place):
  // f = post_norm(hidden) stays in DeviceF(); only the router's ids / weights ([N][k], MoE; null
  // for dense models) come to the host.
  virtual absl::Status MixerOnDevice(absl::Span<const StepItem> batch, int64_t l, int32_t* ids,
                                     float* weights) = 0;
  virtual const float* DeviceF() = 0;
  // For the rows x (device, n_tok x H) and their routing (host; -1 where another rank holds the
  // expert): each slot whose expert this device holds gets weights[s] * expert(x[t]) at row p of
  // `out` (device), p = the slot's index among all slots with ids >= 0 in (token, slot) order
  // (par::RowWork's layout); other rows are left alone.
  virtual absl::Status ExpertRows(int64_t l, const float* x, int64_t n_tok, const int32_t* ids,
                                  const float* weights, float* out) = 0;
  // The owner's end of layer l: DeviceHidden()[t] += (the k slot rows of token t, rows: device,
  // slot_row: host [n_tok][k], summed in slot order) + the shared expert's output (MoE) or the
  // FFN's (dense, k = 0), with the float operations of the host path in its order.
  virtual absl::Status CombineOnDevice(int64_t l, const float* rows, const int32_t* slot_row,
                                       int64_t n_tok, int64_t k) = 0;
};

// The CUDA backend of Model (worker/model_cuda.cc; a stub that says so in builds without
// CUDA). It uploads the bound weights once at load and runs Forward on the device.
class CudaBackend : public RowsBackend {
 public:
  virtual ~CudaBackend() = default;
  virtual std::unique_ptr<SeqState::DeviceState> NewState(int64_t reserve_ctx) = 0;
  virtual absl::Status Forward(absl::Span<const StepItem> batch, std::vector<float>* logits) = 0;
  // As Forward, but only each logits row's argmax (unused ids masked) comes back to the host.
  virtual absl::Status ForwardGreedy(absl::Span<const StepItem> batch,
                                     std::vector<int32_t>* ids) = 0;
  // As ForwardGreedy, but each row sampled on the device by its request (reqs: one per row, in
  // row order; no logprobs).
  virtual absl::Status ForwardSample(absl::Span<const StepItem> batch,
                                     absl::Span<const SampleRequest> reqs,
                                     std::vector<int32_t>* ids) = 0;
  // Decode steps as CUDA graphs (on by default; off: every kernel launched each step).
  virtual void SetGraphs(bool on) = 0;
  // Decode: the fused DeltaNet kernel or the separate kernels (default).
  virtual void SetFusedDeltaNet(bool on) = 0;
  // Decode batches of 16+ tokens: routed experts grouped by expert (default off).
  virtual void SetGroupedMoeDecode(bool on) = 0;
  // Steps below the grouped size: experts through the fused decode kernels (default) or
  // per-token matvecs and the separate shared expert.
  virtual void SetFusedMoeDecode(bool on) = 0;
  // Short steps of a dense FFN (and the separate shared expert): gate/up/SwiGLU in one launch
  // (cuda::ffn_up) or the matvec pair and swiglu_q8 (default).
  virtual void SetFusedFfnUp(bool on) = 0;
  // Split-K attention (decode, and prefill pieces the flash kernel does not take): the first pass
  // reads each K/V row once per KV head (on) or once per query head (default until measured).
  virtual void SetGqaAttention(bool on) = 0;
  // Model::set_cuda_programmatic_launch.
  virtual void SetProgrammaticLaunch(bool on) = 0;
  // Model::ProfileCuda.
  virtual absl::StatusOr<Model::CudaProfile> Profile(const std::function<absl::Status()>& step) = 0;
  // ForwardDistributed's layer l on the device, for a batch of at most 512 tokens with
  // host-side residual stream: hidden += mixer(attn_norm(hidden)); f = post_norm(hidden) (the
  // CPU Model::Mixer); then, where not null, the router's ids / weights ([N][k], MoE) and `ffn`
  // ([N][H]): the shared expert's gated output (MoE) or the FFN's output (dense). The
  // sequences' KV and DeltaNet states stay on the device; n_past is not advanced (the caller
  // does it after the last layer).
  virtual absl::Status Mixer(absl::Span<const StepItem> batch, int64_t l, float* hidden,
                             float* f, int32_t* ids, float* weights, float* ffn) = 0;
  // For the slots whose expert this shard holds: slots[t][i] = weights[t][i] * expert(x[t]) (H
  // floats), computed on the device; other slots are left as they are. x: n_tok rows of H on the
  // host, ids / weights [n_tok][k] on the host.
  virtual absl::Status ExpertSlots(int64_t l, const float* x, int64_t n_tok, const int32_t* ids,
                                   const float* weights, float* slots) = 0;

};
absl::StatusOr<std::unique_ptr<CudaBackend>> CreateCudaBackend(const Model& m);

}  // namespace rs
