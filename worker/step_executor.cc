#include "worker/step_executor.h"

#include "absl/strings/str_format.h"

namespace rs {
namespace {


std::unique_ptr<SeqState> CopyState(const SeqState& s) { return std::make_unique<SeqState>(s); }

}  // namespace

void StepExecutor::Reset() {
  seqs_.clear();
  kept_.clear();
}

void StepExecutor::SetDistributed(std::unique_ptr<par::Communicator> comm,
                                  Model::Placement placement,
                                  std::unique_ptr<par::Communicator> data) {
  // The old group is over (a regroup: some peers may be gone); the data communicator may stage
  // through or sit beside the old comm_, so it goes first.
  if (data_) data_->Abort();
  data_.reset();
  comm_ = std::move(comm);
  data_ = std::move(data);
  placement_ = std::move(placement);
  Reset();
}

const char* StepExecutor::data_plane() const {
  if (!comm_) return "";
  return data_ ? data_->backend() : "host";
}

bool StepExecutor::last_stage() const {
  return !comm_ || placement_.layer_owner.empty() || placement_.layer_owner.back() == comm_->rank();
}

absl::Status StepExecutor::Start(const SeqStep& s) {
  if (seqs_.count(s.seq_id))
    return absl::FailedPreconditionError(absl::StrFormat("sequence %d already exists", s.seq_id));
  if (running() + kept() >= max_states_)
    return absl::ResourceExhaustedError(absl::StrFormat(
        "no free state slot: %d running + %d kept of %d", running(), kept(), max_states_));
  const std::string err = validate_sampler_params(s.sampling, model_->config().n_vocab);
  if (!err.empty()) return absl::InvalidArgumentError(err);
  // A deferred CUDA backend makes its device copy here, before the first sequence.
  if (auto st = model_->EnsureCuda(); !st.ok()) return st;
  Seq seq;
  if (s.restore_from) {
    auto it = kept_.find(s.restore_from);
    if (it == kept_.end())
      return absl::NotFoundError(absl::StrFormat("kept state %d not found", s.restore_from));
    seq.state = CopyState(*it->second.state);
    seq.counts = it->second.counts;
  } else {
    seq.state = model_->NewSequence();
  }
  seq.sampling = s.sampling;
  seqs_.emplace(s.seq_id, std::move(seq));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SeqOutput>> StepExecutor::Execute(const StepRequest& req) {
  if (req.reset_all) Reset();
  for (uint64_t id : req.drop_kept) kept_.erase(id);
  for (const auto& [seq_id, keep_id] : req.keep) {
    auto it = seqs_.find(seq_id);
    if (it == seqs_.end())
      return absl::NotFoundError(absl::StrFormat("keep: sequence %d not found", seq_id));
    if (!kept_.count(keep_id) && running() + kept() >= max_states_)
      return absl::ResourceExhaustedError(absl::StrFormat(
          "no free state slot to keep sequence %d: %d running + %d kept of %d", seq_id,
          running(), kept(), max_states_));
    Seq kept;
    kept.state = CopyState(*it->second.state);
    kept.counts = it->second.counts;
    kept_[keep_id] = std::move(kept);
  }
  for (uint64_t id : req.free_seqs) seqs_.erase(id);

  std::vector<StepItem> items;
  std::vector<Seq*> seqs;
  items.reserve(req.seqs.size());
  for (const auto& s : req.seqs) {
    if (s.start)
      if (auto st = Start(s); !st.ok()) return st;
    auto it = seqs_.find(s.seq_id);
    if (it == seqs_.end())
      return absl::NotFoundError(absl::StrFormat("sequence %d not found", s.seq_id));
    if (s.tokens.empty())
      return absl::InvalidArgumentError(absl::StrFormat("sequence %d: no tokens", s.seq_id));
    Seq& q = it->second;
    // Penalty bookkeeping: fed tokens are prompt, or output when they continue the sample.
    if (s.tokens_are_prompt) {
      q.counts.AddPrompt(s.tokens);
    } else {
      for (int32_t t : s.tokens) q.counts.AddOutput(t);
    }
    items.push_back({q.state.get(), s.tokens.data(), static_cast<int64_t>(s.tokens.size()), false});
    seqs.push_back(&q);
  }
  std::vector<SeqOutput> out;
  if (items.empty()) return out;
  if (!comm_) {
    // One model call samples every row (on the GPU for the cuda backend).
    std::vector<SampleRequest> reqs(req.seqs.size());
    for (size_t i = 0; i < req.seqs.size(); ++i)
      if (req.seqs[i].sample)
        reqs[i] = {&seqs[i]->sampling, &seqs[i]->counts, static_cast<uint64_t>(seqs[i]->n_output)};
    if (auto st = model_->ForwardSample(items, reqs, &sampled_); !st.ok()) return st;
    for (size_t i = 0; i < req.seqs.size(); ++i) {
      if (!req.seqs[i].sample) continue;
      ++seqs[i]->n_output;
      out.push_back({req.seqs[i].seq_id, sampled_[i].token, sampled_[i].logprob,
                     std::move(sampled_[i].top)});
    }
    return out;
  }
  // Distributed: the last stage samples from the logits ForwardDistributed leaves it.
  if (auto st = model_->ForwardDistributed(items, comm_.get(), placement_, &logits_, data_.get()); !st.ok())
    return st;
  if (!last_stage()) {
    for (size_t i = 0; i < req.seqs.size(); ++i)
      if (req.seqs[i].sample) ++seqs[i]->n_output;
    return out;
  }
  const int64_t V = model_->config().n_vocab;
  for (size_t i = 0; i < req.seqs.size(); ++i) {
    const SeqStep& s = req.seqs[i];
    if (!s.sample) continue;
    Seq& q = *seqs[i];
    model_->MaskUnused(logits_.data() + i * V, 1);
    SampleResult r = sample_cpu(logits_.data() + i * V, V, q.sampling, q.counts,
                                static_cast<uint64_t>(q.n_output), &scratch_);
    ++q.n_output;
    out.push_back({s.seq_id, r.token, r.logprob, std::move(r.top)});
  }
  return out;
}

}  // namespace rs
