// The two patterns the workers run on top of a Communicator (host memory, f32 activations):
//
// 1. Expert parallelism, MoE dispatch/combine. A layer's owner holds the normed hidden states
//    of its tokens and the router's top-k (expert, weight) pairs. Each token's hidden state goes
//    only to the ranks that hold at least one of its selected experts (one copy per rank, with
//    the pairs that rank must compute); every rank computes its experts' weighted outputs for
//    the tokens it received; the partial sums go back to the owner, which adds them per token.
//    Every rank calls MoeDispatcher::Run for every MoE layer, in the same order, even when it
//    receives nothing (the size exchange is a collective). Messages per layer: one broadcast of
//    the per-rank token counts, one all-to-all of the tokens (owner -> ranks), one all-to-all of
//    the partial sums (ranks -> owner); ranks with zero tokens exchange nothing in the latter.
//
// 2. Pipeline parallelism, the stage hand-off: SendHidden / RecvHidden move the residual stream
//    of a batch from one stage to the next. A small header (token count, width) travels first
//    so that a receiver that expects another shape gets an error naming both shapes, never a
//    size mismatch inside the transport.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "parallel/communicator.h"

namespace rs::par {

// The work one rank does for one layer: for every received token i,
//   out[i] = sum over j < top_k with experts[i*top_k+j] >= 0 of
//            weights[i*top_k+j] * Expert(experts[i*top_k+j])(x[i]).
// Entries whose expert lives on another rank are -1 (weight 0). `out` arrives zeroed.
// In per-slot mode (MoeLayer::slot_out set) `out` is [num_tokens, top_k, hidden] instead and the
// callback writes each local slot's weights[i*top_k+j] * Expert(experts[i*top_k+j])(x[i]) into
// out[(i*top_k+j)*hidden ...] (the other slots are ignored).
struct ExpertWork {
  int layer = 0;
  size_t num_tokens = 0;
  size_t hidden = 0;
  int top_k = 0;
  const float* x = nullptr;          // [num_tokens, hidden]
  const int32_t* experts = nullptr;  // [num_tokens, top_k]
  const float* weights = nullptr;    // [num_tokens, top_k]
  float* out = nullptr;              // [num_tokens, hidden] or [num_tokens, top_k, hidden]
  bool per_slot = false;
};
using ExpertFn = std::function<absl::Status(const ExpertWork&)>;

// One MoE layer as every rank sees it. The fields under "owner only" are read on the owner and
// ignored elsewhere.
struct MoeLayer {
  int layer = 0;   // passed to the callback, and named in errors
  int owner = 0;   // the rank that holds the tokens and gets the sums
  size_t hidden = 0;
  int top_k = 0;
  const std::vector<int>* expert_rank = nullptr;  // expert id -> rank holding it (all ranks)
  // owner only:
  size_t num_tokens = 0;
  const float* x = nullptr;          // [num_tokens, hidden]
  const int32_t* experts = nullptr;  // [num_tokens, top_k], ids < expert_rank->size()
  const float* weights = nullptr;    // [num_tokens, top_k]
  float* out = nullptr;              // [num_tokens, hidden]: the sum over all top_k experts
  // Per-slot mode (owner only; every rank must agree, so set per_slot on all ranks): the owner
  // gets every (token, slot) result in slot_out [num_tokens, top_k, hidden], exactly as the
  // rank holding that expert computed it, and `out` (if not null) is their sum in slot order
  // j = 0..top_k-1. The result is then independent of the expert placement, bit for bit: a
  // single worker that sums its slots in the same order gets the same floats. Costs top_k/ranks
  // times more bytes on the way back than the per-rank sums.
  bool per_slot = false;
  float* slot_out = nullptr;
};

// Counters, accumulated over calls (the benchmark's bytes per token and time in communication).
struct MoeStats {
  uint64_t calls = 0;
  uint64_t bytes_sent = 0;        // payload bytes this rank sent to other ranks
  uint64_t bytes_received = 0;    // payload bytes this rank received from other ranks
  uint64_t tokens_computed = 0;   // rows this rank's callback computed
  double comm_seconds = 0;        // wall time inside the communicator
  double compute_seconds = 0;     // wall time inside the callback
};

// ---------------------------------------------------------------------------------------------
// Rows in another memory (a GPU's, for the NCCL data plane). The dispatcher keeps the routing on
// the host (the owner needs its top-k ids there anyway) and the control messages on its own
// communicator (Gloo: the count broadcast); the rows (hidden states, slot results) stay in the
// RowMemory and move over a data communicator whose ops take RowMemory pointers (NCCL on GPUs).
// Every call completes before it returns, so the data communicator may read what it wrote.
class RowMemory {
 public:
  virtual ~RowMemory() = default;
  // A buffer of at least `bytes` for `slot` (0..7; the dispatcher uses 0..3), kept and reused:
  // it changes (and its contents are lost) only when a call asks for more than it holds.
  virtual absl::StatusOr<void*> Scratch(int slot, size_t bytes) = 0;
  virtual absl::Status Upload(void* dst, const void* src, size_t bytes) = 0;
  virtual absl::Status Download(void* dst, const void* src, size_t bytes) = 0;
  // Row i of dst (`width` floats) = row rows[i] of src, for i < n; `rows` is on the host.
  virtual absl::Status GatherRows(float* dst, const float* src, const int32_t* rows, size_t n,
                                  size_t width) = 0;
  virtual const char* name() const = 0;  // "host", "cuda:0"
};
// Host memory (memcpy): the CPU reference of a RowMemory, for tests and for staging.
std::unique_ptr<RowMemory> MakeHostRowMemory();

// A communicator whose ops take RowMemory pointers, over one that takes host pointers: every
// payload is downloaded, moved by `host`, and uploaded. For a GPU group without NCCL, and for
// testing the device path with several ranks on one GPU (NCCL refuses two ranks per device).
std::unique_ptr<Communicator> MakeStagedCommunicator(Communicator* host, RowMemory* mem);

// What one rank computes in RunRows: for each received token i and slot j with
// experts[i*top_k+j] >= 0 (its expert is on this rank), in (i, j) order, one row of `hidden`
// floats = weights[i*top_k+j] * Expert(experts[i*top_k+j])(x[i]) at out + p*hidden, p counting
// those slots from 0 (out_rows in all).
struct RowWork {
  int layer = 0;
  size_t num_tokens = 0;
  size_t hidden = 0;
  int top_k = 0;
  const float* x = nullptr;          // RowMemory: [num_tokens, hidden]
  const int32_t* experts = nullptr;  // host: [num_tokens, top_k], -1 where held elsewhere
  const float* weights = nullptr;    // host: [num_tokens, top_k], 0 where held elsewhere
  float* out = nullptr;              // RowMemory: [out_rows, hidden]
  size_t out_rows = 0;
};
using RowFn = std::function<absl::Status(const RowWork&)>;

// One MoE layer for RunRows; as MoeLayer in per-slot mode, with x in the RowMemory.
struct RowLayer {
  int layer = 0;
  int owner = 0;
  size_t hidden = 0;
  int top_k = 0;
  const std::vector<int>* expert_rank = nullptr;
  // owner only:
  size_t num_tokens = 0;
  const float* x = nullptr;          // RowMemory: [num_tokens, hidden]
  const int32_t* experts = nullptr;  // host: [num_tokens, top_k]
  const float* weights = nullptr;    // host: [num_tokens, top_k]
};

// The owner's result of RunRows: every (token, slot) row as the rank holding its expert
// computed it (so the sum is placement independent, as in per-slot mode).
struct RowResult {
  const float* rows = nullptr;   // RowMemory, valid until the next RunRows on this dispatcher
  std::vector<int32_t> slot_row;  // host [num_tokens * top_k]: the row of slot (t, j) in `rows`
};

class MoeDispatcher {
 public:
  explicit MoeDispatcher(Communicator* comm) : comm_(comm) {}

  // Collective; see the top of this file. On error (a peer gone, a timeout, an invalid expert
  // id on the owner) the status names the layer and the cause; the communicator is then unusable
  // for the Gloo backend and the group must reconnect.
  absl::Status Run(const MoeLayer& layer, const ExpertFn& compute);

  // The same exchange with the rows in `mem`, moved by `data` (whose ops take `mem` pointers);
  // the count broadcast goes over this dispatcher's communicator, which must be the same group
  // (same ranks) as `data`. Wire layout and messages as Run in per-slot mode. `result` is
  // filled on the owner. As in Run, a failed callback still takes part in the combine (with
  // zeros); a RowMemory failure or a received expert this rank does not hold returns at once,
  // and the peers fail with the communicator's timeout (the group then re-forms).
  absl::Status RunRows(const RowLayer& layer, RowMemory& mem, Communicator& data,
                       const RowFn& compute, RowResult* result);

  const MoeStats& stats() const { return stats_; }
  void reset_stats() { stats_ = MoeStats{}; }

 private:
  Communicator* comm_;
  MoeStats stats_;
  // Reused between layers.
  std::vector<int64_t> counts_;
  std::vector<std::vector<uint32_t>> rows_of_rank_;  // owner: token indices sent to each rank
  std::vector<float> send_, recv_, work_out_, partial_;
  std::vector<uint64_t> slots_of_rank_;  // owner, per-slot mode: slots each rank computes
  std::vector<int32_t> idx_;             // RunRows: rows to gather
  std::vector<char> meta_;               // RunRows: the ids/weights part of a block, host side

  // Step 1 of both: the owner checks the routing and builds rows_of_rank_; counts_ is then the
  // agreed header on every rank. `owner_error` is set on the owner when it rejected the routing.
  absl::Status Announce(int layer, int owner_rank, size_t hidden, int top_k, bool per_slot,
                        const std::vector<int>* expert_rank, absl::Status routing,
                        const int32_t* experts, size_t num_tokens, const std::string& where);
};

// The hand-off between pipeline stages: `num_tokens` rows of `hidden` floats from this rank to
// `dst`. Blocks until the receiver has taken the data (or the timeout).
absl::Status SendHidden(Communicator& comm, int dst, const float* x, size_t num_tokens,
                        size_t hidden, uint32_t tag);
// Receives what SendHidden sent; the shape must be the one expected (InvalidArgument naming both
// shapes otherwise, after draining the message so that the stream stays usable).
absl::Status RecvHidden(Communicator& comm, int src, float* x, size_t num_tokens, size_t hidden,
                        uint32_t tag);
// The same with the header over `control` (host memory) and the rows over `data` (x in the data
// communicator's memory: a device pointer for NCCL). A receiver that expects another shape
// gets the error without the rows being drained (the group must reconnect).
absl::Status SendHidden(Communicator& control, Communicator& data, int dst, const float* x,
                        size_t num_tokens, size_t hidden, uint32_t tag);
absl::Status RecvHidden(Communicator& control, Communicator& data, int src, float* x,
                        size_t num_tokens, size_t hidden, uint32_t tag);

}  // namespace rs::par
