// The coordinator's engine: request queue, continuous-batching scheduler, kept-state LRU for
// multi-turn reuse, and the text side of every request (detokenisation, stop strings,
// reasoning / tool-call parsing, thinking budget). It drives the workers with StepPlans and
// never touches weights. Threads: one scheduler thread; RPC threads submit requests and read
// their output through a Request handle.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/metrics.h"
#include "coordinator/text/chat_template.h"
#include "coordinator/text/output_parser.h"
#include "coordinator/text/thinking_budget.h"
#include "coordinator/text/tokenizer.h"
#include "coordinator/worker_link.h"
#include "kernels/sampler.h"

namespace rs {

struct EngineOptions {
  int max_running = 16;         // sequences in the running batch (state slots)
  int max_waiting = 1024;       // queued requests beyond this get RESOURCE_EXHAUSTED
  int max_kept = 8;             // kept sequence states for multi-turn reuse (LRU)
  int step_token_budget = 512;  // tokens per step: one per decode plus prefill chunks
  int prefill_chunk = 256;      // largest prefill piece of one sequence per step
  int64_t max_context = 0;      // 0: the model's context_length
  int default_max_tokens = 256;
  // Several workers: the group's rendezvous and placement.
  std::string coordinator_address;   // where workers reach the Rendezvous service
  std::string bind_address = "127.0.0.1";
  int collective_timeout_ms = 10000;
  // Where a group's activations move: "auto" (NCCL when every worker is on a GPU of its own),
  // "nccl" (asked of every worker: those that cannot say why and all fall back together), "host"
  // (Gloo in host memory).
  std::string data_plane = "auto";
  std::string layer_split;           // "0-3,4-7,...": layers per worker (default: the plan's)
  // Several workers: layer ranges and experts from the placement planner (coordinator/plan/)
  // fed with the tensor table and each worker's inventory (Describe); false: an even layer
  // split and experts round-robin (e + l) % n.
  bool use_planner = true;
  std::function<void(const std::string&)> drop_rendezvous_prefix;
};

// Validated per-request generation settings.
struct RequestParams {
  SamplerParams sampling;
  int max_tokens = 0;           // 0: the engine's default
  int min_tokens = 0;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_ids;
  bool ignore_eos = false;
  bool skip_special = true;
  double deadline_s = 0;        // 0: none
};

struct ChatOptions {
  std::string messages_json;    // OpenAI-format messages
  std::string tools_json;       // "" for none
  std::string kwargs_json;      // "" for none
  std::optional<int> thinking_budget;
};

struct TokenInfo {
  int32_t id;
  float logprob;
  std::vector<TokenLogprob> top;
};

// One piece of a request's output stream.
struct OutputChunk {
  std::vector<TokenInfo> tokens;     // new tokens
  std::string text;                  // Generate: text delta
  std::vector<OutputEvent> events;   // Chat: reasoning / content / tool-call deltas
  bool finished = false;
  std::string finish_reason;         // stop | length | tool_calls | abort
  std::string stop_reason;
  absl::Status error;                // non-OK: the request failed
  int prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0, reasoning_tokens = 0;
};

class Request {
 public:
  const std::string& id() const { return id_; }
  // The next chunk, or nullopt after `timeout_ms` without one.
  std::optional<OutputChunk> Next(int timeout_ms);
  void Cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  friend class Engine;
  void Push(OutputChunk c);

  std::string id_;
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<OutputChunk> out_;

  // Engine-thread state.
  bool chat_ = false;
  uint64_t seq_id_ = 0;
  std::vector<int32_t> prompt_;
  size_t n_fed_ = 0;                 // prompt tokens in the worker state (cached ones included)
  size_t snapshot_at_ = 0;           // keep the state after this many prompt tokens (0: no)
  std::vector<int32_t> generated_;
  std::vector<int32_t> to_feed_;
  bool started_ = false;
  uint64_t restore_from_ = 0;
  int cached_ = 0;
  RequestParams params_;
  std::unique_ptr<text::StreamDecoder> decoder_;
  std::string held_text_;            // text not yet sent (may start a stop string)
  std::optional<OutputParser> parser_;
  std::optional<ThinkingBudget> budget_;
  bool saw_tool_call_ = false;
  double arrival_ = 0, deadline_ = 0, first_token_ = 0, last_token_ = 0;
};

struct EngineInfo {
  int running = 0, waiting = 0, kept = 0, slots_total = 0, workers = 0, workers_up = 0;
  double uptime_s = 0;
};

class Engine {
 public:
  // Describes the model through the first worker, builds the tokenizer and template, runs a
  // warm-up step and starts the scheduler thread.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      std::vector<std::unique_ptr<WorkerLink>> workers, EngineOptions opts, Metrics* metrics);
  ~Engine();

  absl::StatusOr<std::shared_ptr<Request>> SubmitGenerate(std::string id,
                                                          std::vector<int32_t> prompt,
                                                          RequestParams params);
  absl::StatusOr<std::shared_ptr<Request>> SubmitChat(std::string id, const ChatOptions& chat,
                                                      RequestParams params);
  bool Abort(const std::string& id);

  // Checks sampling fields against the model; "" if fine, else a message naming the field.
  std::string ValidateParams(const RequestParams& p) const;
  std::string RenderChat(const ChatOptions& chat, absl::Status* st) const;

  const rigserve::v1::DescribeResponse& model() const { return model_; }
  const text::Tokenizer& tokenizer() const { return *tokenizer_; }
  std::vector<int32_t> eog_ids() const { return eog_ids_; }
  EngineInfo Info() const;
  bool healthy() const { return healthy_; }
  // A worker slot changed hands (a worker registered again, possibly at a new address): fail
  // the running requests with UNAVAILABLE and re-form the group (thread-safe).
  // Re-forms the group now (failing running requests) because `slot` got a new worker; skipped
  // when a recovery already formed the group with that worker (its link's generation).
  void RequestRegroup(const std::string& why, int slot = -1);
  // The plan table of the current placement ("" for one worker or without the planner).
  std::string placement_table() const;
  int64_t max_context() const { return max_context_; }

 private:
  Engine() = default;
  absl::StatusOr<std::shared_ptr<Request>> Enqueue(std::shared_ptr<Request> r);
  void Loop();
  void StepOnce();
  void Admit();
  void ProcessToken(Request& r, const rigserve::v1::SeqResult& res, std::vector<uint64_t>* done);
  void Finish(Request& r, OutputChunk c, bool keep_state);
  void FailAll(const absl::Status& st);
  void AddKept(std::vector<int32_t> tokens, uint64_t seq_id);
  double Now() const;
  absl::Status ComputePlacement();
  absl::Status PlanPlacement(const std::vector<std::pair<int64_t, int64_t>>& ranges);
  absl::Status ConnectGroup();
  absl::Status WarmUp();
  // Sends the plan to every worker at once; returns the last worker's result, or the first
  // failure as soon as it is known (slower workers are drained before the next plan).
  absl::StatusOr<rigserve::v1::StepResult> RunPlan(const rigserve::v1::StepPlan& plan,
                                                   int* failed_worker);
  void Drain();
  void TryRecover();

  std::vector<std::unique_ptr<WorkerLink>> workers_;
  EngineOptions opts_;
  Metrics* metrics_ = nullptr;
  rigserve::v1::DescribeResponse model_;
  std::unique_ptr<text::Tokenizer> tokenizer_;
  std::optional<chat::ChatTemplate> template_;
  std::vector<int32_t> eog_ids_;
  std::vector<int32_t> think_close_seq_;
  int32_t think_open_ = -1, think_close_ = -1, call_open_ = -1, call_close_ = -1;
  int64_t max_context_ = 0;
  double start_ = 0;

  mutable std::mutex mu_;            // guards waiting_, by_id_, counters read by Info()
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Request>> waiting_;
  std::unordered_map<std::string, std::shared_ptr<Request>> by_id_;
  std::atomic<int> n_running_{0};
  std::atomic<bool> healthy_{false};
  std::atomic<bool> stop_{false};
  std::thread thread_;

  // Scheduler-thread state.
  std::vector<std::shared_ptr<Request>> running_;
  struct Kept {
    uint64_t keep_id;
    std::vector<int32_t> tokens;
  };
  std::list<Kept> kept_;             // most recently used first
  std::atomic<int> n_kept_{0};
  std::vector<std::pair<uint64_t, uint64_t>> pending_keep_;
  std::vector<uint64_t> pending_free_, pending_drop_;
  bool pending_reset_ = false;
  uint64_t next_seq_ = 1, next_keep_ = 1, step_id_ = 0;
  std::atomic<int> workers_up_{0};
  std::vector<int> layer_owner_;
  std::vector<std::vector<int>> expert_owner_;
  std::vector<std::vector<int>> expert_device_;  // from the planner; empty otherwise
  std::string plan_table_;           // guarded by mu_
  std::string last_recovery_error_;
  std::vector<std::string> worker_names_;  // the metric labels in use
  std::atomic<bool> regroup_{false};
  std::string regroup_why_;          // guarded by mu_
  int regroup_slot_ = -1;            // guarded by mu_
  uint64_t regroup_gen_ = 0;         // guarded by mu_: that slot's link generation when asked
  std::vector<uint64_t> formed_gen_; // scheduler thread: link generations of the formed group
  int generation_ = 0;
  std::vector<std::future<absl::StatusOr<rigserve::v1::StepResult>>> draining_;
  double next_recovery_ = 0;
};

}  // namespace rs
