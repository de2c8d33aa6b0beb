#include "coordinator/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <future>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "coordinator/plan/planner.h"
#include "coordinator/text/json.h"
#include "coordinator/text/tokenizer_vocab.h"
#include "worker/default_chat_template.h"

namespace rs {

namespace pb = rigserve::v1;

// ---- Request ----------------------------------------------------------------------------------

std::optional<OutputChunk> Request::Next(int timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return !out_.empty(); }))
    return std::nullopt;
  OutputChunk c = std::move(out_.front());
  out_.pop_front();
  return c;
}

void Request::Push(OutputChunk c) {
  std::lock_guard<std::mutex> lock(mu_);
  out_.push_back(std::move(c));
  cv_.notify_all();
}

// ---- set-up -------------------------------------------------------------------------------------

namespace {

// The vocabulary of a worker's Describe, as the tokenizer's metadata source.
class VocabSource : public text::MetadataSource {
 public:
  explicit VocabSource(const pb::Vocab& v) : v_(v) {}
  absl::StatusOr<std::string> GetString(std::string_view key) const override {
    if (key == "tokenizer.ggml.model") return v_.model();
    if (key == "tokenizer.ggml.pre") return v_.pre();
    return absl::NotFoundError(std::string(key));
  }
  absl::StatusOr<int64_t> GetInt(std::string_view key) const override {
    int64_t v = -1;
    if (key == "tokenizer.ggml.bos_token_id") v = v_.bos_id();
    else if (key == "tokenizer.ggml.eos_token_id") v = v_.eos_id();
    else if (key == "tokenizer.ggml.padding_token_id") v = v_.pad_id();
    if (v < 0) return absl::NotFoundError(std::string(key));
    return v;
  }
  absl::StatusOr<bool> GetBool(std::string_view key) const override {
    if (key == "tokenizer.ggml.add_bos_token") return v_.add_bos();
    return absl::NotFoundError(std::string(key));
  }
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const override {
    if (key == "tokenizer.ggml.tokens") return std::vector<std::string>(v_.tokens().begin(), v_.tokens().end());
    if (key == "tokenizer.ggml.merges") return std::vector<std::string>(v_.merges().begin(), v_.merges().end());
    return absl::NotFoundError(std::string(key));
  }
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const override {
    if (key == "tokenizer.ggml.token_type")
      return std::vector<int64_t>(v_.token_types().begin(), v_.token_types().end());
    return absl::NotFoundError(std::string(key));
  }

 private:
  const pb::Vocab& v_;
};

// The host part of a worker's HOST:PORT (brackets of an IPv6 address removed): where its
// collectives bind, so that workers on several hosts each use their own interface.
std::string BindAddressOf(const std::string& name, const std::string& fallback) {
  const size_t colon = name.rfind(':');
  if (colon == std::string::npos || colon == 0) return fallback;
  std::string host = name.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return host.empty() ? fallback : host;
}

double SteadyNow() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

double Engine::Now() const { return SteadyNow(); }

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(
    std::vector<std::unique_ptr<WorkerLink>> workers, EngineOptions opts, Metrics* metrics) {
  if (workers.empty()) return absl::InvalidArgumentError("no workers");
  std::unique_ptr<Engine> e(new Engine());
  e->workers_ = std::move(workers);
  e->opts_ = opts;
  e->metrics_ = metrics;
  e->start_ = SteadyNow();
  auto d = e->workers_.back()->Describe(true);
  if (!d.ok()) return d.status();
  e->model_ = std::move(*d);
  auto vocab = text::VocabFromMetadata(VocabSource(e->model_.vocab()));
  if (!vocab.ok()) return vocab.status();
  auto tok = text::Tokenizer::FromVocab(std::move(*vocab));
  if (!tok.ok()) return tok.status();
  e->tokenizer_ = std::move(*tok);
  const std::string tpl = e->model_.chat_template().empty() ? std::string(kDefaultChatTemplate)
                                                            : e->model_.chat_template();
  auto ct = chat::ChatTemplate::Create(tpl);
  if (!ct.ok()) return absl::InvalidArgumentError(absl::StrCat("chat template: ", ct.status().message()));
  e->template_.emplace(std::move(*ct));
  // End-of-generation ids: eos plus the control tokens llama.cpp treats as EOG.
  auto add_eog = [&](std::string_view text) {
    if (auto id = e->tokenizer_->TokenId(text)) e->eog_ids_.push_back(*id);
  };
  if (e->model_.vocab().eos_id() >= 0) e->eog_ids_.push_back(e->model_.vocab().eos_id());
  for (auto t : {"<|endoftext|>", "<|im_end|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}) add_eog(t);
  std::sort(e->eog_ids_.begin(), e->eog_ids_.end());
  e->eog_ids_.erase(std::unique(e->eog_ids_.begin(), e->eog_ids_.end()), e->eog_ids_.end());
  auto id_of = [&](std::string_view t) { auto i = e->tokenizer_->TokenId(t); return i ? *i : -1; };
  e->think_open_ = id_of("<think>");
  e->think_close_ = id_of("</think>");
  e->call_open_ = id_of("<tool_call>");
  e->call_close_ = id_of("</tool_call>");
  text::EncodeOptions eo;
  eo.parse_special = true;
  e->think_close_seq_ = e->tokenizer_->Encode(kDefaultThinkingCloseText, eo);
  e->max_context_ = opts.max_context > 0 ? opts.max_context : e->model_.context_length();
  if (e->max_context_ <= 0) e->max_context_ = 4096;
  if (metrics) {
    metrics->state_slots_total->Set(opts.max_running + opts.max_kept);
    for (auto& w : e->workers_) metrics->worker_up(w->name()).Set(1);
  }
  for (auto& w : e->workers_) e->worker_names_.push_back(w->name());
  if (auto st = e->ComputePlacement(); !st.ok()) return st;
  if (auto st = e->ConnectGroup(); !st.ok()) return st;
  if (auto st = e->WarmUp(); !st.ok()) return st;
  e->workers_up_ = static_cast<int>(e->workers_.size());
  e->healthy_ = true;
  e->thread_ = std::thread([p = e.get()] { p->Loop(); });
  return e;
}

Engine::~Engine() {
  stop_ = true;
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::Status Engine::ComputePlacement() {
  const int n = static_cast<int>(workers_.size());
  const int64_t L = model_.n_layer();
  // --layers "a-b,c-d,...": one contiguous range per worker, covering every layer in order.
  std::vector<std::pair<int64_t, int64_t>> ranges;  // [begin, end)
  if (!opts_.layer_split.empty()) {
    int64_t next = 0;
    for (absl::string_view part : absl::StrSplit(opts_.layer_split, ',')) {
      int64_t a = 0, b = 0;
      std::vector<absl::string_view> ab = absl::StrSplit(part, '-');
      if (ab.size() != 2 || !absl::SimpleAtoi(ab[0], &a) || !absl::SimpleAtoi(ab[1], &b) || a != next || b < a || b >= L)
        return absl::InvalidArgumentError(absl::StrCat("--layers: '", part, "' must be ", next, "-N with N < ", L,
                                                       " (contiguous ranges covering 0..", L - 1, ")"));
      if (static_cast<int>(ranges.size()) >= n)
        return absl::InvalidArgumentError(absl::StrCat("--layers names more ranges than the ", n, " workers"));
      ranges.emplace_back(a, b + 1);
      next = b + 1;
    }
    if (next != L || static_cast<int>(ranges.size()) != n)
      return absl::InvalidArgumentError(absl::StrCat("--layers must give all ", L, " layers to the ", n, " workers in order"));
  }
  if (n > 1 && opts_.use_planner) return PlanPlacement(ranges);
  layer_owner_.assign(L, 0);
  if (!ranges.empty()) {
    for (int w = 0; w < n; ++w)
      for (int64_t l = ranges[w].first; l < ranges[w].second; ++l) layer_owner_[l] = w;
  } else {
    for (int64_t l = 0; l < L; ++l) layer_owner_[l] = static_cast<int>(l * n / L);
  }
  expert_owner_.clear();
  expert_device_.clear();
  if (model_.n_expert() > 0)
    for (int64_t l = 0; l < L; ++l) {
      std::vector<int> owners(model_.n_expert());
      for (int64_t e = 0; e < model_.n_expert(); ++e) owners[e] = static_cast<int>((e + l) % n);
      expert_owner_.push_back(std::move(owners));
    }
  return absl::OkStatus();
}

absl::Status Engine::PlanPlacement(const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  const int n = static_cast<int>(workers_.size());
  plan::PlanRequest req;
  for (const auto& t : model_.tensors())
    req.tensors.push_back({t.name(), t.type(), std::vector<int64_t>(t.shape().begin(), t.shape().end()), t.size()});
  auto shape = plan::ShapeFromTensorTable(req.tensors, model_.n_expert_used());
  if (!shape.ok()) return absl::InvalidArgumentError(absl::StrCat("placement: ", shape.status().message()));
  req.shape = std::move(*shape);
  // Every worker's inventory; they must all serve the model the coordinator described.
  std::vector<pb::DescribeResponse> ds;
  for (auto& w : workers_) {
    auto d = w->Describe(false);
    if (!d.ok()) return d.status();
    if (d->summary() != model_.summary() || d->tensors_size() != model_.tensors_size())
      return absl::FailedPreconditionError(absl::StrCat(
          "worker ", w->name(), " serves another model (", d->summary(), ", ", d->tensors_size(),
          " tensors) than worker ", workers_.back()->name(), " (", model_.summary(), ", ",
          model_.tensors_size(), " tensors)"));
    ds.push_back(std::move(*d));
  }
  // Workers on one host (same boot id) share its RAM equally.
  std::map<std::string, int> on_host;
  auto host_key = [&](int i) { return ds[i].host_id().empty() ? absl::StrCat("?", i) : ds[i].host_id(); };
  for (int i = 0; i < n; ++i) ++on_host[host_key(i)];
  for (int i = 0; i < n; ++i) {
    const pb::DescribeResponse& d = ds[i];
    plan::WorkerInventory w;
    w.name = workers_[i]->name();
    int dev = 0;
    if (absl::StartsWith(d.device(), "cuda")) {
      absl::string_view idx = absl::string_view(d.device()).substr(4);
      if (absl::ConsumePrefix(&idx, ":") && !absl::SimpleAtoi(idx, &dev)) dev = 0;
      w.devices.push_back({plan::DeviceKind::kCuda, dev, d.device_memory_free()});
    } else {
      w.devices.push_back({plan::DeviceKind::kCpu, 0, 0});
    }
    w.host_ram_bytes = d.host_memory_total() / on_host[host_key(i)];
    if (w.host_ram_bytes == 0 && w.devices[0].kind == plan::DeviceKind::kCpu)
      return absl::FailedPreconditionError(absl::StrCat(
          "placement: CPU worker ", w.name, " reports no host RAM (an older rigserve worker?); "
          "start the coordinator with --placement even"));
    req.workers.push_back(std::move(w));
  }
  req.context = max_context_;
  req.slots = opts_.max_running + opts_.max_kept + 1;
  req.batch_tokens = opts_.step_token_budget;
  if (!ds.back().kv_type().empty()) {
    auto kv = plan::ParseKvType(ds.back().kv_type());
    if (!kv.ok()) return absl::InvalidArgumentError(absl::StrCat("placement: ", kv.status().message()));
    req.kv_type = *kv;
  }
  req.layer_ranges = ranges;
  auto p = plan::MakePlan(req);
  if (!p.ok())
    return absl::Status(p.status().code(),
                        absl::StrCat("placement: ", p.status().message(),
                                     absl::IsResourceExhausted(p.status())
                                         ? " (lower --context, --max-running or --max-kept, or add workers)"
                                         : ""));
  const std::vector<int32_t> owners = plan::LayerOwners(*p);
  layer_owner_.assign(owners.begin(), owners.end());
  expert_owner_.clear();
  for (const auto& l : plan::ExpertOwners(*p)) expert_owner_.emplace_back(l.begin(), l.end());
  expert_device_.clear();
  for (const auto& l : plan::ExpertDevices(*p)) expert_device_.emplace_back(l.begin(), l.end());
  std::string table = plan::PlanTable(*p);
  bool changed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    changed = table != plan_table_;
    plan_table_ = table;
  }
  if (changed)
    std::fprintf(stderr, "rigserve: placement of %d workers (%s; context %lld x %lld slots):\n%s", n,
                 ranges.empty() ? "layer ranges planned" : "layer ranges from --layers",
                 static_cast<long long>(req.context), static_cast<long long>(req.slots), table.c_str());
  return absl::OkStatus();
}

std::string Engine::placement_table() const {
  std::lock_guard<std::mutex> lock(mu_);
  return plan_table_;
}

void Engine::RequestRegroup(const std::string& why, int slot) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    regroup_why_ = why;
    regroup_slot_ = slot;
    regroup_gen_ = slot >= 0 && slot < static_cast<int>(workers_.size())
                       ? workers_[slot]->generation() : 0;
  }
  regroup_ = true;
  cv_.notify_all();
}

absl::Status Engine::ConnectGroup() {
  const int n = static_cast<int>(workers_.size());
  if (n == 1) return absl::OkStatus();
  if (opts_.coordinator_address.empty())
    return absl::FailedPreconditionError("several workers need the coordinator's rendezvous address");
  if (opts_.drop_rendezvous_prefix && generation_ > 0)
    opts_.drop_rendezvous_prefix(absl::StrCat("rs/g", generation_, "/"));
  ++generation_;
  std::vector<std::future<absl::StatusOr<pb::LoadResponse>>> fs;
  // The data plane: NCCL when every worker is on a GPU and no two share one (auto), or whenever
  // asked (nccl); the workers agree among themselves and fall back to host memory together when
  // one cannot create its NCCL communicator.
  std::string data_plane = "host";
  if (opts_.data_plane != "host") {
    bool all_gpu = true, shared = false;
    std::string why;
    std::map<std::string, std::string> gpu_of;  // (host, device) -> worker: NCCL wants one rank per GPU
    for (auto& w : workers_) {
      auto d = w->Describe(false);
      if (!d.ok()) return d.status();
      if (!absl::StartsWith(d->device(), "cuda")) {
        all_gpu = false;
        why = absl::StrCat("worker ", w->name(), " is on the ", d->device().empty() ? "cpu" : d->device());
        break;
      }
      const std::string key = absl::StrCat(d->host_id(), "/", d->device());
      if (!d->host_id().empty() && gpu_of.count(key)) {
        all_gpu = false;
        shared = true;
        why = absl::StrCat("workers ", gpu_of[key], " and ", w->name(), " share ", d->device(),
                           " (NCCL needs one GPU per worker)");
        break;
      }
      gpu_of[key] = w->name();
    }
    if (all_gpu || opts_.data_plane == "nccl") data_plane = "nccl";
    if (!all_gpu && opts_.data_plane == "nccl")
      std::fprintf(stderr, "rigserve: --data-plane nccl, but %s: the workers will fall back to "
                           "Gloo in host memory together\n", why.c_str());
    else if (shared)
      std::fprintf(stderr, "rigserve: --data-plane auto, but %s: activations go over Gloo in host "
                           "memory\n", why.c_str());
  }
  for (int r = 0; r < n; ++r) {
    pb::LoadRequest req;
    req.set_rank(r);
    req.set_world_size(n);
    for (int o : layer_owner_) req.add_layer_owner(o);
    for (const auto& eo : expert_owner_) {
      auto* x = req.add_expert_owner();
      for (int o : eo) x->add_rank(o);
    }
    for (const auto& ed : expert_device_) {
      auto* x = req.add_expert_device();
      for (int d : ed) x->add_device(d);
    }
    req.set_coordinator(opts_.coordinator_address);
    req.set_rendezvous_prefix(absl::StrCat("rs/g", generation_, "/"));
    req.set_bind_address(BindAddressOf(workers_[r]->name(), opts_.bind_address));
    req.set_collective_timeout_ms(opts_.collective_timeout_ms);
    req.set_data_plane(data_plane);
    req.set_last_stage(r == layer_owner_.back());
    fs.push_back(std::async(std::launch::async, [this, r, req] { return workers_[r]->Load(req); }));
  }
  absl::Status first = absl::OkStatus();
  for (auto& f : fs) {
    auto r = f.get();
    if (!r.ok() && first.ok()) first = r.status();
  }
  return first;
}

absl::Status Engine::WarmUp() {
  pb::StepPlan plan;
  plan.set_step_id(0);
  plan.set_reset_all(true);
  auto* s = plan.add_seqs();
  s->set_seq_id(0);
  s->add_tokens(0);
  s->set_start(true);
  s->set_sample(true);
  s->set_tokens_are_prompt(true);
  s->mutable_sampling()->set_temperature(0);
  s->mutable_sampling()->set_top_p(1);
  s->mutable_sampling()->set_repetition_penalty(1);
  int failed = -1;
  auto r = RunPlan(plan, &failed);
  if (!r.ok()) return r.status();
  pending_reset_ = true;
  return absl::OkStatus();
}

void Engine::Drain() {
  for (auto& f : draining_) f.wait();
  draining_.clear();
}

absl::StatusOr<pb::StepResult> Engine::RunPlan(const pb::StepPlan& plan, int* failed_worker) {
  Drain();
  *failed_worker = -1;
  const size_t n = workers_.size();
  if (n == 1) {
    auto r = workers_[0]->Step(plan);
    if (r.ok() && !r->error().empty()) return absl::InternalError(absl::StrCat("worker ", workers_[0]->name(), ": ", r->error()));
    if (!r.ok()) *failed_worker = 0;
    if (r.ok() && metrics_) metrics_->step_seconds(workers_[0]->name()).Observe(r->step_seconds());
    return r;
  }
  std::vector<std::future<absl::StatusOr<pb::StepResult>>> fs;
  for (auto& w : workers_) {
    WorkerLink* link = w.get();
    fs.push_back(std::async(std::launch::async, [link, plan] { return link->Step(plan); }));
  }
  std::vector<bool> done(n, false);
  std::vector<absl::StatusOr<pb::StepResult>> res(n, absl::UnknownError("pending"));
  size_t n_done = 0;
  absl::Status failure = absl::OkStatus();
  while (n_done < n) {
    for (size_t i = 0; i < n; ++i) {
      if (done[i] || fs[i].wait_for(std::chrono::milliseconds(2)) != std::future_status::ready) continue;
      done[i] = true;
      ++n_done;
      res[i] = fs[i].get();
      // In a group, any failed step means a lost peer or a broken communicator (Gloo closes
      // every connection after an error): the group must re-form, so it counts as UNAVAILABLE.
      absl::Status st = res[i].ok() ? (res[i]->error().empty()
                                           ? absl::OkStatus()
                                           : absl::UnavailableError(absl::StrCat("worker ", workers_[i]->name(), ": ", res[i]->error())))
                                    : res[i].status();
      if (res[i].ok() && metrics_) metrics_->step_seconds(workers_[i]->name()).Observe(res[i]->step_seconds());
      if (!st.ok() && failure.ok()) {
        failure = st;
        *failed_worker = static_cast<int>(i);
      }
    }
    // A dead worker: fail now; the others finish (their collectives time out) in the background.
    if (!failure.ok() && absl::IsUnavailable(failure)) {
      for (size_t i = 0; i < n; ++i)
        if (!done[i]) draining_.push_back(std::move(fs[i]));
      return failure;
    }
  }
  if (!failure.ok()) return failure;
  return std::move(res.back());
}

void Engine::TryRecover() {
  const double now = Now();
  if (now < next_recovery_) return;
  next_recovery_ = now + 0.25;
  std::vector<uint64_t> gen_before(workers_.size());
  for (size_t i = 0; i < workers_.size(); ++i) gen_before[i] = workers_[i]->generation();
  Drain();
  int up = 0;
  for (size_t i = 0; i < workers_.size(); ++i) {
    const bool alive = workers_[i]->Alive();
    up += alive;
    const std::string name = workers_[i]->name();
    if (metrics_) {
      // A slot taken over by a worker at another address: the old label goes away.
      if (name != worker_names_[i]) metrics_->worker_up_family->Remove(&metrics_->worker_up(worker_names_[i]));
      metrics_->worker_up(name).Set(alive ? 1 : 0);
    }
    worker_names_[i] = name;
  }
  workers_up_ = up;
  if (up != static_cast<int>(workers_.size())) return;
  // The placement again: a worker that came back may bring another device or inventory.
  absl::Status st = workers_.size() > 1 ? ComputePlacement() : absl::OkStatus();
  if (st.ok()) st = ConnectGroup();
  if (st.ok()) st = WarmUp();
  if (!st.ok()) {
    if (std::string(st.message()) != last_recovery_error_)
      std::fprintf(stderr, "rigserve: workers are back but the group did not form yet: %s\n",
                   std::string(st.message()).c_str());
    last_recovery_error_ = std::string(st.message());
    return;
  }
  // A slot that changed hands while the group formed may have joined half-way: form again.
  for (size_t i = 0; i < workers_.size(); ++i)
    if (workers_[i]->generation() != gen_before[i]) return;
  last_recovery_error_.clear();
  std::fprintf(stderr, "rigserve: all %zu workers are back; serving again\n", workers_.size());
  formed_gen_ = gen_before;
  healthy_ = true;
}

// ---- submission ---------------------------------------------------------------------------------

std::string Engine::ValidateParams(const RequestParams& p) const {
  std::string err = validate_sampler_params(p.sampling, model_.n_vocab());
  if (!err.empty()) return err;
  if (p.max_tokens < 0) return absl::StrCat("sampling.max_tokens must be >= 1, got ", p.max_tokens);
  if (p.max_tokens > max_context_)
    return absl::StrCat("sampling.max_tokens ", p.max_tokens, " exceeds the context length ", max_context_);
  if (p.min_tokens < 0) return "sampling.min_tokens must be >= 0";
  for (int32_t id : p.stop_ids)
    if (id < 0 || id >= model_.n_vocab())
      return absl::StrCat("sampling.stop_token_ids: ", id, " is not a token id (vocabulary ", model_.n_vocab(), ")");
  for (const auto& s : p.stop)
    if (s.empty()) return "sampling.stop: empty stop string";
  if (p.deadline_s < 0) return "deadline_seconds must be >= 0";
  return "";
}

absl::StatusOr<std::shared_ptr<Request>> Engine::SubmitGenerate(std::string id,
                                                                std::vector<int32_t> prompt,
                                                                RequestParams params) {
  if (prompt.empty()) return absl::InvalidArgumentError("input: the prompt is empty");
  for (int32_t t : prompt)
    if (t < 0 || t >= model_.n_vocab())
      return absl::InvalidArgumentError(absl::StrCat("input.token_ids: ", t,
                                                      " is not a token id (vocabulary ", model_.n_vocab(), ")"));
  if (std::string err = ValidateParams(params); !err.empty()) return absl::InvalidArgumentError(err);
  if (static_cast<int64_t>(prompt.size()) >= max_context_)
    return absl::InvalidArgumentError(absl::StrCat("input: ", prompt.size(),
                                                   " prompt tokens leave no room in the context of ", max_context_));
  auto r = std::make_shared<Request>();
  r->id_ = std::move(id);
  r->prompt_ = std::move(prompt);
  r->params_ = std::move(params);
  return Enqueue(std::move(r));
}

std::string Engine::RenderChat(const ChatOptions& chat, absl::Status* st) const {
  std::string kwargs = chat.kwargs_json.empty() ? "{}" : chat.kwargs_json;
  if (chat.thinking_budget && *chat.thinking_budget == 0) {
    // Budget 0: no reasoning at all, rendered as the template's enable_thinking=false.
    auto kw = json::Parse(kwargs);
    if (!kw.ok() || !kw->is_object()) {
      *st = absl::InvalidArgumentError("chat_template_kwargs_json: not a JSON object");
      return "";
    }
    kw->set("enable_thinking", json::Json(false));
    kwargs = json::DumpCompact(*kw);
  }
  auto out = template_->Apply(chat.messages_json, chat.tools_json, true, kwargs);
  if (!out.ok()) {
    *st = absl::InvalidArgumentError(absl::StrCat("messages: ", out.status().message()));
    return "";
  }
  *st = absl::OkStatus();
  return *out;
}

absl::StatusOr<std::shared_ptr<Request>> Engine::SubmitChat(std::string id, const ChatOptions& chat,
                                                            RequestParams params) {
  if (std::string err = ValidateParams(params); !err.empty()) return absl::InvalidArgumentError(err);
  std::vector<ToolSpec> tools;
  if (!chat.tools_json.empty()) {
    auto t = ToolSpecsFromOpenAiJson(chat.tools_json);
    if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat("tools_json: ", t.status().message()));
    tools = std::move(*t);
  }
  if (!chat.kwargs_json.empty()) {
    auto kw = json::Parse(chat.kwargs_json);
    if (!kw.ok() || !kw->is_object())
      return absl::InvalidArgumentError("chat_template_kwargs_json: not a JSON object");
  }
  absl::Status st;
  std::string prompt_text = RenderChat(chat, &st);
  if (!st.ok()) return st;
  // Where the conversation so far ends (before the generation prompt): the state there is kept
  // for the next turn.
  ChatOptions no_gen = chat;
  std::string history;
  {
    std::string kwargs = chat.kwargs_json.empty() ? "{}" : chat.kwargs_json;
    auto h = template_->Apply(chat.messages_json, chat.tools_json, false, kwargs);
    if (h.ok()) history = *h;
  }
  text::EncodeOptions eo;
  eo.parse_special = true;
  auto r = std::make_shared<Request>();
  r->id_ = std::move(id);
  r->chat_ = true;
  r->prompt_ = tokenizer_->Encode(prompt_text, eo);
  if (!history.empty() && prompt_text.compare(0, history.size(), history) == 0) {
    auto h = tokenizer_->Encode(history, eo);
    if (h.size() < r->prompt_.size() && std::equal(h.begin(), h.end(), r->prompt_.begin()))
      r->snapshot_at_ = h.size();
  }
  if (r->prompt_.empty()) return absl::InvalidArgumentError("messages: the rendered prompt is empty");
  if (static_cast<int64_t>(r->prompt_.size()) >= max_context_)
    return absl::InvalidArgumentError(absl::StrCat("messages: ", r->prompt_.size(),
                                                   " prompt tokens leave no room in the context of ", max_context_));
  // Thinking: the generation prompt opens <think> unless enable_thinking is false.
  bool thinking = true;
  if (!chat.kwargs_json.empty()) {
    auto kw = json::Parse(chat.kwargs_json);
    if (const json::Json* et = kw->find("enable_thinking"); et && et->is_bool()) thinking = et->as_bool();
  }
  if (chat.thinking_budget && *chat.thinking_budget == 0) thinking = false;
  OutputParserOptions po;
  po.prompt_opened_think = thinking;
  po.think_open_id = think_open_;
  po.think_close_id = think_close_;
  po.tool_call_open_id = call_open_;
  po.tool_call_close_id = call_close_;
  po.tools = std::move(tools);
  auto parser = OutputParser::Create(std::move(po));
  if (!parser.ok()) return parser.status();
  r->parser_.emplace(std::move(*parser));
  if (chat.thinking_budget) {
    if (*chat.thinking_budget < 0) return absl::InvalidArgumentError("thinking_budget must be >= 0");
    ThinkingBudgetOptions bo;
    bo.budget = *chat.thinking_budget;
    bo.prompt_opened_think = thinking;
    bo.think_open_id = think_open_;
    bo.think_close_id = think_close_;
    bo.tool_call_open_id = call_open_;
    bo.tool_call_close_id = call_close_;
    bo.close_sequence = think_close_seq_;
    auto b = ThinkingBudget::Create(std::move(bo));
    if (!b.ok()) return b.status();
    r->budget_.emplace(std::move(*b));
  }
  // Control tokens must reach the parser as ids; their text is not shown.
  r->params_ = std::move(params);
  return Enqueue(std::move(r));
}

absl::StatusOr<std::shared_ptr<Request>> Engine::Enqueue(std::shared_ptr<Request> r) {
  if (!healthy_) return absl::UnavailableError("no worker is available");
  r->decoder_ = std::make_unique<text::StreamDecoder>(tokenizer_.get(), r->params_.skip_special);
  if (r->params_.max_tokens == 0) r->params_.max_tokens = opts_.default_max_tokens;
  r->arrival_ = Now();
  if (r->params_.deadline_s > 0) r->deadline_ = r->arrival_ + r->params_.deadline_s;
  std::lock_guard<std::mutex> lock(mu_);
  if (static_cast<int>(waiting_.size()) >= opts_.max_waiting)
    return absl::ResourceExhaustedError(absl::StrFormat("the queue is full (%d waiting)", waiting_.size()));
  if (r->id_.empty() || by_id_.count(r->id_)) {
    if (!r->id_.empty()) return absl::AlreadyExistsError(absl::StrCat("request_id '", r->id_, "' is in use"));
    r->id_ = absl::StrCat("req-", next_seq_ + by_id_.size(), "-", static_cast<int64_t>(r->arrival_ * 1e6) % 1000000);
  }
  by_id_[r->id_] = r;
  waiting_.push_back(r);
  if (metrics_) metrics_->num_requests_waiting->Set(waiting_.size());
  cv_.notify_all();
  return r;
}

bool Engine::Abort(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return false;
  std::shared_ptr<Request> r = it->second;
  r->Cancel();
  // A queued request holds no state: it leaves the queue now rather than when it reaches the
  // front (which waits for a free running slot).
  if (auto w = std::find(waiting_.begin(), waiting_.end(), r); w != waiting_.end()) {
    waiting_.erase(w);
    by_id_.erase(it);
    if (metrics_) metrics_->num_requests_waiting->Set(waiting_.size());
    OutputChunk c;
    c.finished = true;
    c.finish_reason = "abort";
    c.error = absl::CancelledError("request aborted");
    r->Push(std::move(c));
  }
  cv_.notify_all();
  return true;
}

EngineInfo Engine::Info() const {
  EngineInfo i;
  {
    std::lock_guard<std::mutex> lock(mu_);
    i.waiting = static_cast<int>(waiting_.size());
  }
  i.running = n_running_;
  i.kept = n_kept_;
  i.slots_total = opts_.max_running + opts_.max_kept;
  i.workers = static_cast<int>(workers_.size());
  i.workers_up = workers_up_;
  i.uptime_s = Now() - start_;
  return i;
}

// ---- scheduler ----------------------------------------------------------------------------------

void Engine::Loop() {
  while (!stop_) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(50), [&] {
        return stop_ || regroup_ || !waiting_.empty() || !running_.empty() || !pending_free_.empty();
      });
      if (stop_) break;
    }
    if (regroup_.exchange(false) && healthy_) {
      std::string why;
      int slot = -1;
      uint64_t gen = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        why = regroup_why_;
        slot = regroup_slot_;
        gen = regroup_gen_;
      }
      // A recovery already formed the group with the slot's new worker: re-forming again
      // would only fail the requests admitted since.
      if (slot >= 0 && slot < static_cast<int>(formed_gen_.size()) && formed_gen_[slot] >= gen) {
        std::fprintf(stderr, "rigserve: %s; the group already re-formed with it\n", why.c_str());
        continue;
      }
      healthy_ = false;
      workers_up_ = 0;
      next_recovery_ = 0;
      std::fprintf(stderr, "rigserve: %s; failing the running requests, re-forming the group\n", why.c_str());
      Drain();
      FailAll(absl::UnavailableError(why));
    }
    if (!healthy_) {
      // Requests that arrived meanwhile were refused; wait for the workers to come back.
      TryRecover();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    StepOnce();
  }
}

void Engine::AddKept(std::vector<int32_t> tokens, uint64_t seq_id) {
  if (opts_.max_kept <= 0 || tokens.empty()) return;
  // Forgets a kept entry. One whose keep has not reached the workers yet is cancelled instead of
  // dropped: workers apply a plan's drops before its keeps, so a drop would miss it and leak its
  // copy (several sequences finishing in one step overflowed the worker's state slots).
  auto forget = [&](uint64_t keep_id) {
    auto p = std::find_if(pending_keep_.begin(), pending_keep_.end(),
                          [&](const auto& k) { return k.second == keep_id; });
    if (p != pending_keep_.end()) pending_keep_.erase(p);
    else pending_drop_.push_back(keep_id);
  };
  // An identical entry is replaced.
  for (auto it = kept_.begin(); it != kept_.end(); ++it)
    if (it->tokens == tokens) {
      forget(it->keep_id);
      kept_.erase(it);
      break;
    }
  while (static_cast<int>(kept_.size()) >= opts_.max_kept) {
    forget(kept_.back().keep_id);
    kept_.pop_back();
  }
  const uint64_t id = next_keep_++;
  kept_.push_front({id, std::move(tokens)});
  pending_keep_.emplace_back(seq_id, id);
  n_kept_ = static_cast<int>(kept_.size());
}

void Engine::Admit() {
  std::lock_guard<std::mutex> lock(mu_);
  while (!waiting_.empty() && static_cast<int>(running_.size()) < opts_.max_running) {
    auto r = waiting_.front();
    waiting_.pop_front();
    if (r->cancelled()) {
      OutputChunk c;
      c.finished = true;
      c.finish_reason = "abort";
      c.error = absl::CancelledError("request aborted");
      r->Push(std::move(c));
      by_id_.erase(r->id_);
      continue;
    }
    r->seq_id_ = next_seq_++;
    // The longest kept state whose tokens prefix the prompt (leaving at least one to feed).
    size_t best = 0;
    auto best_it = kept_.end();
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      const auto& t = it->tokens;
      if (t.size() > best && t.size() < r->prompt_.size() &&
          std::equal(t.begin(), t.end(), r->prompt_.begin())) {
        best = t.size();
        best_it = it;
      }
    }
    if (metrics_) metrics_->prefix_cache_queries_total->Increment(r->prompt_.size());
    if (best_it != kept_.end()) {
      r->restore_from_ = best_it->keep_id;
      r->n_fed_ = best;
      r->cached_ = static_cast<int>(best);
      kept_.splice(kept_.begin(), kept_, best_it);  // most recently used
      if (metrics_) {
        metrics_->prefix_cache_hits_total->Increment(best);
        metrics_->state_reuse_hits_total->Increment();
      }
    }
    if (r->snapshot_at_ <= r->n_fed_) r->snapshot_at_ = 0;
    running_.push_back(std::move(r));
  }
  n_running_ = static_cast<int>(running_.size());
  if (metrics_) {
    metrics_->num_requests_waiting->Set(waiting_.size());
    metrics_->num_requests_running->Set(running_.size());
    metrics_->state_slots_used->Set(running_.size() + kept_.size());
    metrics_->kv_cache_usage_perc->Set(
        static_cast<double>(running_.size() + kept_.size()) / (opts_.max_running + opts_.max_kept));
  }
}

void Engine::Finish(Request& r, OutputChunk c, bool keep_state) {
  c.finished = true;
  c.prompt_tokens = static_cast<int>(r.prompt_.size());
  c.completion_tokens = static_cast<int>(r.generated_.size());
  c.cached_tokens = r.cached_;
  if (r.parser_) c.reasoning_tokens = static_cast<int>(r.parser_->reasoning_tokens());
  if (r.started_) {
    if (keep_state && c.error.ok()) {
      // The state holds the prompt and every generated token but the last (never fed).
      std::vector<int32_t> fed = r.prompt_;
      if (!r.generated_.empty()) fed.insert(fed.end(), r.generated_.begin(), r.generated_.end() - 1);
      AddKept(std::move(fed), r.seq_id_);
    }
    pending_free_.push_back(r.seq_id_);
  }
  if (metrics_) {
    const double now = Now();
    if (c.error.ok()) {
      metrics_->request_success(c.finish_reason).Increment();
      metrics_->e2e_request_latency->Observe(now - r.arrival_);
    } else {
      metrics_->requests_failed_total->Increment();
    }
    if (r.parser_) {
      metrics_->reasoning_tokens_total->Increment(r.parser_->reasoning_tokens());
      metrics_->tool_call_parse_failures_total->Increment(r.parser_->parse_failures());
    }
    if (r.budget_ && r.budget_->cut_off()) metrics_->thinking_budget_cutoffs_total->Increment();
  }
  r.Push(std::move(c));
  std::lock_guard<std::mutex> lock(mu_);
  by_id_.erase(r.id_);
}

void Engine::FailAll(const absl::Status& st) {
  for (auto& r : running_) {
    OutputChunk c;
    c.error = st;
    c.finish_reason = "abort";
    r->started_ = false;  // the worker state is gone
    Finish(*r, std::move(c), false);
  }
  running_.clear();
  kept_.clear();
  n_kept_ = 0;
  pending_keep_.clear();
  pending_free_.clear();
  pending_drop_.clear();
  pending_reset_ = true;
  n_running_ = 0;
}

void Engine::StepOnce() {
  // Cancellations and deadlines.
  const double now = Now();
  for (auto it = running_.begin(); it != running_.end();) {
    Request& r = **it;
    OutputChunk c;
    if (r.cancelled()) {
      c.finish_reason = "abort";
      c.error = absl::CancelledError("request aborted");
    } else if (r.deadline_ > 0 && now > r.deadline_) {
      c.finish_reason = "abort";
      c.error = absl::DeadlineExceededError(absl::StrFormat("deadline of %.3f s exceeded", r.params_.deadline_s));
    } else {
      ++it;
      continue;
    }
    Finish(r, std::move(c), false);
    it = running_.erase(it);
  }
  {
    // Queued requests past their deadline fail now, not once a running slot frees.
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      Request& r = **it;
      if (!(r.deadline_ > 0 && now > r.deadline_)) {
        ++it;
        continue;
      }
      OutputChunk c;
      c.finished = true;
      c.finish_reason = "abort";
      c.error = absl::DeadlineExceededError(
          absl::StrFormat("deadline of %.3f s exceeded while queued", r.params_.deadline_s));
      if (metrics_) metrics_->requests_failed_total->Increment();
      r.Push(std::move(c));
      by_id_.erase(r.id_);
      it = waiting_.erase(it);
    }
  }
  Admit();

  pb::StepPlan plan;
  plan.set_step_id(++step_id_);
  plan.set_reset_all(pending_reset_);
  for (auto& [s, k] : pending_keep_) {
    auto* kp = plan.add_keep();
    kp->set_seq_id(s);
    kp->set_keep_id(k);
  }
  for (auto id : pending_free_) plan.add_free_seqs(id);
  for (auto id : pending_drop_) plan.add_drop_kept(id);
  pending_keep_.clear();
  pending_free_.clear();
  pending_drop_.clear();
  const bool was_reset = pending_reset_;
  pending_reset_ = false;

  int budget = opts_.step_token_budget;
  std::vector<Request*> in_step;
  std::vector<size_t> prefill_n;
  // Decodes first (one token each, or a forced token), then prefill chunks.
  for (auto& rp : running_) {
    Request& r = *rp;
    if (r.n_fed_ < r.prompt_.size()) continue;
    auto* s = plan.add_seqs();
    s->set_seq_id(r.seq_id_);
    for (int32_t t : r.to_feed_) s->add_tokens(t);
    s->set_sample(true);
    budget -= static_cast<int>(r.to_feed_.size());
    in_step.push_back(&r);
    prefill_n.push_back(0);
  }
  for (auto& rp : running_) {
    Request& r = *rp;
    if (r.n_fed_ >= r.prompt_.size() || budget <= 0) continue;
    size_t end = r.prompt_.size();
    if (r.snapshot_at_ > r.n_fed_) end = r.snapshot_at_;
    const size_t n = std::min<size_t>({end - r.n_fed_, static_cast<size_t>(budget),
                                       static_cast<size_t>(opts_.prefill_chunk)});
    auto* s = plan.add_seqs();
    s->set_seq_id(r.seq_id_);
    for (size_t i = r.n_fed_; i < r.n_fed_ + n; ++i) s->add_tokens(r.prompt_[i]);
    s->set_tokens_are_prompt(true);
    s->set_sample(r.n_fed_ + n == r.prompt_.size());
    if (!r.started_) {
      s->set_start(true);
      s->set_restore_from(r.restore_from_);
      auto* p = s->mutable_sampling();
      const SamplerParams& sp = r.params_.sampling;
      p->set_temperature(sp.temperature);
      p->set_top_p(sp.top_p);
      p->set_top_k(sp.top_k);
      p->set_min_p(sp.min_p);
      p->set_presence_penalty(sp.presence_penalty);
      p->set_frequency_penalty(sp.frequency_penalty);
      p->set_repetition_penalty(sp.repetition_penalty);
      for (const auto& b : sp.logit_bias) (*p->mutable_logit_bias())[b.token] = b.bias;
      p->set_seed(sp.seed);
      p->set_logprobs(sp.top_logprobs);
      r.started_ = true;
    }
    budget -= static_cast<int>(n);
    in_step.push_back(&r);
    prefill_n.push_back(n);
  }
  if (plan.seqs_size() == 0 && plan.free_seqs_size() == 0 && plan.keep_size() == 0 &&
      plan.drop_kept_size() == 0 && !was_reset)
    return;

  // The same plan to every worker; the last one samples.
  int failed = -1;
  auto result = RunPlan(plan, &failed);
  if (!result.ok()) {
    absl::Status st = result.status();
    if (absl::IsUnavailable(st)) {
      healthy_ = false;
      if (failed >= 0) {
        workers_up_ = static_cast<int>(workers_.size()) - 1;
        if (metrics_) metrics_->worker_up(workers_[failed]->name()).Set(0);
      }
      std::fprintf(stderr, "rigserve: %s; failing the running requests, waiting for the worker\n",
                   std::string(st.message()).c_str());
    }
    FailAll(absl::IsUnavailable(st) ? st : absl::InternalError(st.message()));
    return;
  }
  const pb::StepResult& last = *result;
  std::unordered_map<uint64_t, const pb::SeqResult*> by_seq;
  for (const auto& s : last.seqs()) by_seq[s.seq_id()] = &s;

  std::vector<uint64_t> done;
  for (size_t i = 0; i < in_step.size(); ++i) {
    Request& r = *in_step[i];
    if (prefill_n[i] > 0) {
      r.n_fed_ += prefill_n[i];
      if (metrics_) metrics_->prompt_tokens_total->Increment(prefill_n[i]);
      if (r.snapshot_at_ && r.n_fed_ == r.snapshot_at_)
        AddKept(std::vector<int32_t>(r.prompt_.begin(), r.prompt_.begin() + r.n_fed_), r.seq_id_);
    }
    auto it = by_seq.find(r.seq_id_);
    if (it != by_seq.end()) ProcessToken(r, *it->second, &done);
  }
  if (!done.empty()) {
    running_.erase(std::remove_if(running_.begin(), running_.end(),
                                  [&](const auto& r) {
                                    return std::find(done.begin(), done.end(), r->seq_id_) != done.end();
                                  }),
                   running_.end());
  }
  n_running_ = static_cast<int>(running_.size());
}

void Engine::ProcessToken(Request& r, const pb::SeqResult& res, std::vector<uint64_t>* done) {
  const double now = Now();
  int32_t tok = res.token();
  bool forced = false;
  if (r.budget_) {
    if (auto f = r.budget_->Forced()) {
      tok = *f;
      forced = true;
    }
    r.budget_->Observe(tok);
  }
  if (metrics_) {
    metrics_->generation_tokens_total->Increment();
    if (r.generated_.empty()) metrics_->time_to_first_token->Observe(now - r.arrival_);
    else metrics_->inter_token_latency->Observe(now - r.last_token_);
  }
  if (r.generated_.empty()) r.first_token_ = now;
  r.last_token_ = now;
  r.generated_.push_back(tok);
  r.to_feed_.assign(1, tok);

  OutputChunk c;
  TokenInfo ti{tok, forced ? 0.0f : res.logprob(), {}};
  for (int i = 0; i < res.top_ids_size() && !forced; ++i)
    ti.top.push_back({res.top_ids(i), res.top_logprobs(i)});
  const bool may_stop = static_cast<int>(r.generated_.size()) >= r.params_.min_tokens;
  const bool is_eog = std::binary_search(eog_ids_.begin(), eog_ids_.end(), tok);
  std::string stop_reason;
  bool stop = false;
  if (may_stop && !forced) {
    if (is_eog && !r.params_.ignore_eos) {
      stop = true;
    } else if (std::find(r.params_.stop_ids.begin(), r.params_.stop_ids.end(), tok) != r.params_.stop_ids.end()) {
      stop = true;
      stop_reason = std::to_string(tok);
    }
  }
  c.tokens.push_back(std::move(ti));
  const bool length = static_cast<int>(r.generated_.size()) >= r.params_.max_tokens ||
                      static_cast<int64_t>(r.prompt_.size() + r.generated_.size()) >= max_context_;
  if (!stop) {
    auto piece = r.decoder_->Push(tok);
    std::string text = piece.ok() ? *piece : std::string();
    // The last token carries what the decoder still holds (an incomplete UTF-8 tail): fed
    // separately, the parser would count it as one more (reasoning) token than was generated.
    if (length && r.parser_) text += r.decoder_->Flush();
    if (r.parser_) {
      auto ev = r.parser_->Feed(tok, text);
      for (auto& e : ev) {
        if (e.kind == OutputEvent::Kind::kToolCall) r.saw_tool_call_ = true;
        c.events.push_back(std::move(e));
      }
    } else {
      r.held_text_ += text;
      // Stop strings: emit everything that cannot be the start of one.
      size_t cut = std::string::npos;
      std::string found;
      if (may_stop)
        for (const auto& s : r.params_.stop) {
          size_t p = r.held_text_.find(s);
          if (p != std::string::npos && p < cut) { cut = p; found = s; }
        }
      if (cut != std::string::npos) {
        c.text = r.held_text_.substr(0, cut);
        r.held_text_.clear();
        stop = true;
        stop_reason = found;
      } else {
        size_t keep = 0;
        for (const auto& s : r.params_.stop)
          for (size_t k = std::min(s.size() - 1, r.held_text_.size()); k > keep; --k)
            if (r.held_text_.compare(r.held_text_.size() - k, k, s, 0, k) == 0) { keep = k; break; }
        c.text = r.held_text_.substr(0, r.held_text_.size() - keep);
        r.held_text_.erase(0, r.held_text_.size() - keep);
      }
    }
  }
  if (stop || length) {
    std::string tail = r.decoder_->Flush();
    if (r.parser_) {
      if (!tail.empty()) for (auto& e : r.parser_->Feed(-1, tail)) c.events.push_back(std::move(e));
      for (auto& e : r.parser_->Finish()) c.events.push_back(std::move(e));
      c.finish_reason = stop ? (r.saw_tool_call_ || r.parser_->tool_calls() > 0 ? "tool_calls" : "stop") : "length";
    } else {
      if (!stop) c.text += r.held_text_ + tail;
      c.finish_reason = stop ? "stop" : "length";
    }
    c.stop_reason = stop_reason;
    Finish(r, std::move(c), true);
    done->push_back(r.seq_id_);
    return;
  }
  c.prompt_tokens = static_cast<int>(r.prompt_.size());
  c.completion_tokens = static_cast<int>(r.generated_.size());
  c.cached_tokens = r.cached_;
  r.Push(std::move(c));
}

}  // namespace rs
