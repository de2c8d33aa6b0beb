// Executes the coordinator's step plans on this worker's model: owns the sequences' states
// (running and kept), feeds each step's tokens in one batched forward pass, samples where the
// plan asks (this worker holds the last layer) and returns the tokens. No gRPC here: the
// service in worker/service/ converts the Worker protocol to these structs.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/sampler.h"
#include "worker/model.h"

namespace rs {

struct SeqStep {
  uint64_t seq_id = 0;
  std::vector<int32_t> tokens;   // fed this step
  bool sample = false;           // sample after the last fed token
  bool start = false;            // first step: new state (or a copy of a kept one)
  uint64_t restore_from = 0;     // with start: kept state id to copy (0 = fresh)
  SamplerParams sampling;        // with start
  bool tokens_are_prompt = false;
};

struct StepRequest {
  uint64_t step_id = 0;
  bool reset_all = false;                           // first: drop everything
  std::vector<std::pair<uint64_t, uint64_t>> keep;  // (seq_id, keep_id): snapshot copies
  std::vector<uint64_t> free_seqs;
  std::vector<uint64_t> drop_kept;
  std::vector<SeqStep> seqs;
};

struct SeqOutput {
  uint64_t seq_id = 0;
  int32_t token = -1;
  float logprob = 0;
  std::vector<TokenLogprob> top;
};

class StepExecutor {
 public:
  // `max_states`: running plus kept sequence states this worker may hold.
  StepExecutor(Model* model, int max_states) : model_(model), max_states_(max_states) {}

  absl::StatusOr<std::vector<SeqOutput>> Execute(const StepRequest& req);
  void Reset();
  // Distributed execution: this worker is one rank of a group that runs every step together.
  // Only the rank holding the last layer samples.
  // `data` (optional): the rows' communicator of a group of GPU workers (NCCL; see
  // Model::ForwardDistributed), released before `comm`.
  void SetDistributed(std::unique_ptr<par::Communicator> comm, Model::Placement placement,
                      std::unique_ptr<par::Communicator> data = nullptr);
  // "nccl" (the rows move between the GPUs), "host" (over the control communicator) or "" (not
  // in a group).
  const char* data_plane() const;
  bool last_stage() const;
  int running() const { return static_cast<int>(seqs_.size()); }
  int kept() const { return static_cast<int>(kept_.size()); }
  int max_states() const { return max_states_; }
  Model* model() { return model_; }

 private:
  struct Seq {
    std::unique_ptr<SeqState> state;
    SamplerParams sampling;
    TokenCounts counts;
    int64_t n_output = 0;        // sampled tokens so far (the draw's step counter)
    int32_t pending_sample = -1; // last sampled token (counted as output when fed back)
  };
  absl::Status Start(const SeqStep& s);

  Model* model_;
  int max_states_;
  std::unordered_map<uint64_t, Seq> seqs_;
  std::unordered_map<uint64_t, Seq> kept_;
  std::unique_ptr<par::Communicator> comm_;
  std::unique_ptr<par::Communicator> data_;
  Model::Placement placement_;
  SamplerScratch scratch_;
  std::vector<float> logits_;
  std::vector<SampleResult> sampled_;
};

}  // namespace rs
