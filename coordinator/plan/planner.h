// Placement planner: which worker owns which layers (pipeline parallelism), which worker and
// device holds each routed expert (expert parallelism), and what every device must hold.
//
// Input is plain data (the coordinator never opens a weight file): the model's tensor table as
// a worker's Describe reports it, the hyperparameters (ShapeFromTensorTable derives them from
// the table alone), each worker's inventory, and the wanted context, concurrency and KV type.
// The output is deterministic: the same input gives the same plan, byte for byte of its JSON.
//
// How the plan is made:
//  1. Every tensor is classified: token_embd (stage 0), output_norm + output (last stage),
//     blk.i.*_exps (routed experts of layer i: the tensor's bytes / E per expert; ne[2] = E),
//     every other blk.i.* (the non-expert part of layer i: mixer, norms, router, shared expert).
//     Blocks i >= n_layer (an MTP head) are not served and are listed as skipped.
//  2. Layer ranges: one contiguous range per worker, in worker order, each non-empty. A stage's
//     cost is the bytes one decode step reads there, which is both its compute (decode is
//     bandwidth-bound) and most of its memory: the non-expert weights of its layers, their
//     state (KV at context x slots for attention layers, conv + recurrent state x slots for
//     DeltaNet layers) and, on the last stage, the LM head. The embedding (one row read per
//     token) is held by stage 0 but not counted: the experts, placed after, fill whatever
//     memory each stage leaves. The split minimises the sum over stages of cost^2 / share
//     (smallest where cost / share is the same on every stage), the share being the worker's primary memory (its first GPU, or its
//     host RAM for a CPU worker), so equal workers get equal cost and a bigger one
//     proportionally more. Exact dynamic programme over all contiguous splits.
//  3. Each worker's primary memory holds its non-expert weights, its KV cache and DeltaNet
//     state slots, a workspace (Workspace* below) and a safety margin. If that alone does not
//     fit, the plan is refused.
//  4. Routed experts: pinned experts (overrides) first, then every other expert, in the order
//     expert 0 of every layer, expert 1 of every layer, ... Each goes to the GPU (of any worker)
//     with the most bytes left that can hold it; when no GPU can, to the host RAM (run by that
//     worker's CPU) with the most bytes left. Spread this way, every layer's experts end up on
//     all workers, GPUs fill evenly, and when VRAM runs short the spilled experts are the
//     high-numbered ones of every layer, spread evenly over the hosts. A device that gets
//     experts reserves an expert workspace too. No place left: refused, with the numbers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace rs::plan {

// One entry of the tensor table (rigserve.v1.TensorEntry).
struct TensorDesc {
  std::string name;
  std::string type;            // ggml spelling: F32, Q4_K, ...
  std::vector<int64_t> shape;  // ggml order
  uint64_t bytes = 0;
};

// The hyperparameters the state sizes depend on (spec §1, §5).
struct ModelShape {
  int64_t n_layer = 0;
  std::vector<bool> layer_is_attention;  // n_layer entries
  int64_t n_embd = 0;                    // H
  int64_t n_vocab = 0;
  int64_t n_head = 0, n_head_kv = 0, head_dim = 0;   // attention
  int64_t Hv = 0, dk = 0, dv = 0, conv_dim = 0, conv_kernel = 4;  // Gated DeltaNet
  int64_t n_expert = 0, n_expert_used = 0, n_ff_exp = 0, n_ff_shexp = 0, n_ff = 0;  // FFN
  int64_t n_attn_layers() const;
  int64_t n_deltanet_layers() const { return n_layer - n_attn_layers(); }
};

// The shape read from the tensor table alone (what Describe returns): attention layers are the
// blocks with attn_k.weight; nkv*hd from attn_k, hd from attn_k_norm, nh from attn_output,
// Hv from ssm_a, dv from ssm_norm, conv_dim and the kernel from ssm_conv1d, E from
// ffn_gate_inp, I from ffn_up_exps (or ffn_gate_up_exps), Is from ffn_up_shexp, F from ffn_up.
// dk is not visible in any shape: it is taken equal to dv (true of every Qwen3.5 model, spec
// §1.1). k (experts per token) is not a shape either: the caller passes it (Describe's
// n_expert_used). InvalidArgument naming the tensor when the table is not a Qwen3.5 layout.
absl::StatusOr<ModelShape> ShapeFromTensorTable(const std::vector<TensorDesc>& tensors,
                                                int64_t n_expert_used);

enum class KvType { kF16, kQ8_0, kF32 };  // f32: the reference backend and F32 test models
const char* KvTypeName(KvType t);  // "f16" / "q8_0" / "f32"
absl::StatusOr<KvType> ParseKvType(std::string_view s);

// Per-sequence state sizes (spec §5).
uint64_t KvBytesPerTokenPerLayer(const ModelShape& m, KvType t);  // K and V of one attention layer
uint64_t KvBytesPerToken(const ModelShape& m, KvType t);          // all attention layers
uint64_t ConvStateBytesPerLayer(const ModelShape& m);             // (K-1) * conv_dim * 4
uint64_t RecurrentStateBytesPerLayer(const ModelShape& m);        // Hv * dk * dv * 4
uint64_t DeltaNetStateBytesPerSequence(const ModelShape& m);      // conv + S, all DeltaNet layers

enum class DeviceKind { kCpu, kCuda };

struct DeviceInventory {
  DeviceKind kind = DeviceKind::kCuda;
  int index = 0;            // cuda:N
  uint64_t free_bytes = 0;  // for kCpu entries ignored: the host RAM below is the CPU's memory
};

struct WorkerInventory {
  std::string name;                      // "w0", an address, ...; only for messages
  std::vector<DeviceInventory> devices;  // CUDA devices; none (or only cpu) = a CPU worker
  uint64_t host_ram_bytes = 0;           // RAM this worker may use for weights and state
};

// Pins experts [expert_begin, expert_end) of layers [layer_begin, layer_end) to a worker, and
// optionally to its host RAM (device = -1) or one of its GPUs (device = position in its CUDA
// device list); device unset = GPU first, then host, as for unpinned experts.
struct ExpertPin {
  int64_t layer_begin = 0, layer_end = 0;
  int64_t expert_begin = 0, expert_end = 0;
  int worker = 0;
  std::optional<int> device;
};

struct PlanRequest {
  std::vector<TensorDesc> tensors;
  ModelShape shape;
  std::vector<WorkerInventory> workers;
  int64_t context = 4096;  // tokens per sequence
  int64_t slots = 1;       // sequence-state slots (running + kept sequences)
  KvType kv_type = KvType::kF16;
  // Workspace: activations of a micro-batch of this many tokens (see WorkspaceBytes).
  int64_t batch_tokens = 512;
  // Safety margin per device: max(margin_min_bytes, margin_fraction x capacity).
  double margin_fraction = 0.03;
  uint64_t margin_min_bytes = 256ull << 20;
  // Overrides. layer_ranges: one [begin, end) per worker, contiguous from 0 to n_layer.
  std::vector<std::pair<int64_t, int64_t>> layer_ranges;
  std::vector<ExpertPin> expert_pins;
};

// Bytes of one memory pool, by category.
struct MemoryUse {
  uint64_t weights = 0;    // non-expert weights (layers, embedding, LM head)
  uint64_t experts = 0;    // routed experts
  uint64_t kv = 0;         // KV cache
  uint64_t state = 0;      // DeltaNet conv + recurrent state slots
  uint64_t workspace = 0;  // activations, logits, expert scratch
  uint64_t margin = 0;     // safety margin
  uint64_t total() const { return weights + experts + kv + state + workspace + margin; }
};

// A memory pool of a worker: one of its GPUs, or its host RAM (device == -1).
struct DevicePlan {
  int device = -1;            // position in the worker's CUDA device list; -1 = host / CPU
  std::string label;          // "cuda:0", "host"
  uint64_t capacity = 0;
  MemoryUse use;
  int64_t n_experts = 0;      // routed experts held (all layers)
  bool primary = false;       // holds the worker's layers, KV and state
};

struct WorkerPlan {
  std::string name;
  int64_t layer_begin = 0, layer_end = 0;  // [begin, end)
  bool embedding = false;                  // stage 0: token_embd
  bool lm_head = false;                    // last stage: output_norm + output
  std::vector<DevicePlan> devices;         // GPUs in inventory order, then the host
  uint64_t stage_cost = 0;                 // the balanced quantity (bytes read per decode step
                                           // on the stage, see header comment)
  int64_t experts_on_gpu = 0, experts_on_cpu = 0;
};

struct ExpertPlace {
  int worker = -1;
  int device = -1;  // position in the worker's CUDA device list; -1 = host RAM (its CPU runs it)
};

struct Plan {
  ModelShape shape;
  int64_t context = 0, slots = 0;
  KvType kv_type = KvType::kF16;
  std::vector<WorkerPlan> workers;
  std::vector<std::vector<ExpertPlace>> experts;  // [layer][expert]; empty for dense models
  std::vector<uint64_t> expert_bytes;             // bytes of one expert, per layer
  uint64_t nonexpert_bytes = 0, expert_bytes_total = 0;
  int64_t experts_spilled = 0;                    // routed experts in host RAM
  uint64_t spilled_bytes = 0;
  std::vector<std::string> skipped_tensors;       // not served (MTP blocks)
  uint64_t kv_bytes_per_token = 0;                // whole model, one sequence
  uint64_t deltanet_state_bytes_per_sequence = 0;
  bool fits_on_gpus() const { return experts_spilled == 0; }
};

// Workspace of a worker's primary memory: batch_tokens x 4 B x (4H + the widest mixer output
// (max of 2*nh*hd + 2*nkv*hd and 2*conv_dim + value_dim) + E + 2*max(Is, F)) for activations,
// plus slots x n_vocab x 4 B of logits on the last stage.
uint64_t WorkspaceBytes(const ModelShape& m, int64_t batch_tokens, int64_t slots, bool lm_head);
// A group's MoE dispatch buffers on each worker's primary memory (its GPU on the device path,
// host RAM otherwise): the owner's send rows (H + 2k floats, a token once per rank holding one of
// its experts: up to min(workers, k) copies), the received rows (once), the slot results and the
// owner's combine buffer (k x H floats per token each):
// batch_tokens x ((min(workers, k) + 1) x (H + 2k) + 2kH) x 4 B. Zero for dense models and for a
// single worker.
uint64_t DispatchWorkspaceBytes(const ModelShape& m, int64_t batch_tokens, int64_t workers);
// Scratch of a device that runs routed experts: batch_tokens x k x (2I + H) x 4 B.
uint64_t ExpertWorkspaceBytes(const ModelShape& m, int64_t batch_tokens);

// Makes the plan, or FailedPrecondition / ResourceExhausted / InvalidArgument with a message
// naming the device(s), the bytes needed by category and the bytes available.
absl::StatusOr<Plan> MakePlan(const PlanRequest& req);

// "0-15,16-31,32-47" (inclusive ranges) -> [begin, end) pairs. Contiguity is checked by MakePlan.
absl::StatusOr<std::vector<std::pair<int64_t, int64_t>>> ParseLayerRanges(std::string_view s);
// "LAYERS:EXPERTS=WORKER[/DEV]" items separated by ';' or ','. LAYERS and EXPERTS are "*", "N"
// or "A-B" (inclusive); DEV is "cpu"/"host" (host RAM), "gpu" (its first GPU) or "cuda:N"
// (position N of its CUDA devices). E.g. "*:0-63=0;*:64-127=1/cpu". Bounds are checked by
// MakePlan ("*" is resolved there: layer_end / expert_end = -1 until then).
absl::StatusOr<std::vector<ExpertPin>> ParseExpertPins(std::string_view s);
// "24GiB", "24 GB", "512MiB", "1.5GiB", "1000000" (bytes). GiB/MiB/KiB = 2^30/2^20/2^10,
// GB/MB/KB = 10^9/10^6/10^3, G/M/K taken as the binary units, B/no suffix = bytes.
absl::StatusOr<uint64_t> ParseBytes(std::string_view s);
std::string FormatBytes(uint64_t b);  // "23.41 GiB", "512.0 MiB", "812 B"

// The placement as LoadRequest carries it (rigserve.v1): the owner (worker index) of every
// layer, and of every routed expert of every layer ([layer][expert]; empty for dense models).
std::vector<int32_t> LayerOwners(const Plan& p);
std::vector<std::vector<int32_t>> ExpertOwners(const Plan& p);
// And the device of each: -1 = the owner's host RAM, N = its N-th GPU ([layer][expert]).
std::vector<std::vector<int32_t>> ExpertDevices(const Plan& p);

std::string PlanTable(const Plan& p);  // readable table
std::string PlanJson(const Plan& p);   // one JSON document (see cli_plan --help)

}  // namespace rs::plan
