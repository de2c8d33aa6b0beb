#include "worker/service/worker_service.h"

#include <chrono>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "worker/service/grpc_kv_store.h"
#ifdef RIGSERVE_HAVE_NCCL
#include "parallel/nccl/nccl_comm.h"
#endif

namespace rs {

namespace pb = rigserve::v1;

WorkerInventory HostInventory() {
  WorkerInventory inv;
  std::ifstream mi("/proc/meminfo");
  std::string key, unit;
  uint64_t kb = 0;
  while (mi >> key >> kb) {
    std::getline(mi, unit);
    if (key == "MemTotal:") inv.host_total = kb * 1024;
    if (key == "MemAvailable:") inv.host_available = kb * 1024;
  }
  std::ifstream bi("/proc/sys/kernel/random/boot_id");
  std::getline(bi, inv.host_id);
  return inv;
}

WorkerServiceImpl::WorkerServiceImpl(std::shared_ptr<const gguf::File> file,
                                     std::unique_ptr<Model> model, int max_states,
                                     std::string device)
    : file_(std::move(file)), model_(std::move(model)), exec_(model_.get(), max_states),
      device_(std::move(device)), inv_(HostInventory()) {
  inv_.device = device_;
}

void WorkerServiceImpl::DescribeTo(bool include_vocab, pb::DescribeResponse* r) const {
  const ModelConfig& c = model_->config();
  r->set_architecture(c.arch);
  if (auto n = file_->get_string("general.name"); n.ok()) r->set_name(*n);
  r->set_summary(c.summary());
  r->set_n_vocab(c.n_vocab);
  r->set_n_layer(c.n_layer);
  r->set_n_embd(c.n_embd);
  r->set_context_length(c.context_length);
  r->set_n_expert(c.n_expert);
  r->set_n_expert_used(c.n_expert_used);
  for (auto k : c.layers) r->add_layer_is_attention(k == LayerKind::kAttention);
  for (const auto& t : file_->tensors()) {
    auto* e = r->add_tensors();
    e->set_name(t.name);
    e->set_type(type_name(t.type));
    for (auto n : t.ne) e->add_shape(n);
    e->set_size(t.size);
  }
  if (auto tpl = file_->get_string("tokenizer.chat_template"); tpl.ok()) r->set_chat_template(*tpl);
  r->set_device(device_);
  r->set_device_memory_free(inv_.device_free);
  r->set_device_memory_total(inv_.device_total);
  r->set_host_memory_total(inv_.host_total);
  r->set_host_memory_available(inv_.host_available);
  r->set_host_id(inv_.host_id);
  r->set_kv_type(type_name(model_->kv_type()));
  if (!include_vocab) return;
  auto* v = r->mutable_vocab();
  if (auto s = file_->get_string("tokenizer.ggml.model"); s.ok()) v->set_model(*s);
  if (auto s = file_->get_string("tokenizer.ggml.pre"); s.ok()) v->set_pre(*s);
  if (const gguf::Value* a = file_->find("tokenizer.ggml.tokens"))
    for (const auto& x : a->array) v->add_tokens(x.s);
  if (const gguf::Value* a = file_->find("tokenizer.ggml.token_type"))
    for (const auto& x : a->array) v->add_token_types(static_cast<int32_t>(x.i ? x.i : x.u));
  if (const gguf::Value* a = file_->find("tokenizer.ggml.merges"))
    for (const auto& x : a->array) v->add_merges(x.s);
  auto id = [&](const char* key) -> int32_t {
    auto u = file_->get_int(key);
    return u.ok() ? static_cast<int32_t>(*u) : -1;
  };
  v->set_bos_id(id("tokenizer.ggml.bos_token_id"));
  v->set_eos_id(id("tokenizer.ggml.eos_token_id"));
  v->set_pad_id(id("tokenizer.ggml.padding_token_id"));
  if (auto b = file_->get_bool("tokenizer.ggml.add_bos_token"); b.ok()) v->set_add_bos(*b);
}

grpc::Status WorkerServiceImpl::Describe(grpc::ServerContext*, const pb::DescribeRequest* req,
                                         pb::DescribeResponse* resp) {
  DescribeTo(req->include_vocab(), resp);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Load(grpc::ServerContext*, const pb::LoadRequest* req,
                                     pb::LoadResponse* resp) {
  const ModelConfig& c = model_->config();
  const auto t0 = std::chrono::steady_clock::now();
  resp->set_weight_bytes(file_->data_size());
  resp->set_state_bytes_per_slot(
      static_cast<uint64_t>((c.layers.size() - c.n_attn_layers()) *
                            ((c.conv_kernel - 1) * c.conv_dim() + c.Hv * c.dk * c.dv) * 4));
  if (req->world_size() <= 1) {
    std::lock_guard<std::mutex> lock(mu_);
    exec_.SetDistributed(nullptr, {});  // also drops the sequences (and their device states)
    if (auto st = model_->ShardCuda({}); !st.ok())  // the whole model on this worker's GPU
      return grpc::Status(st.code() == absl::StatusCode::kResourceExhausted
                              ? grpc::StatusCode::RESOURCE_EXHAUSTED
                              : grpc::StatusCode::FAILED_PRECONDITION,
                          std::string(st.message()));
    return grpc::Status::OK;
  }
  // A rank of a group: check the placement, then meet the others through the coordinator.
  Model::Placement pl;
  pl.layer_owner.assign(req->layer_owner().begin(), req->layer_owner().end());
  if (static_cast<int64_t>(pl.layer_owner.size()) != c.n_layer)
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("layer_owner has ", pl.layer_owner.size(), " entries, the model has ", c.n_layer, " layers"));
  for (int r : pl.layer_owner)
    if (r < 0 || r >= req->world_size())
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, absl::StrCat("layer owner ", r, " outside the group"));
  if (c.moe) {
    if (req->expert_owner_size() != c.n_layer)
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "expert_owner must list every layer");
    for (const auto& eo : req->expert_owner()) {
      if (eo.rank_size() != c.n_expert)
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            absl::StrCat("expert_owner lists ", eo.rank_size(), " experts, the model has ", c.n_expert));
      pl.expert_owner.emplace_back(eo.rank().begin(), eo.rank().end());
    }
    if (req->expert_device_size() > 0) {
      if (req->expert_device_size() != c.n_layer)
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "expert_device must list every layer");
      for (const auto& ed : req->expert_device()) {
        if (ed.device_size() != c.n_expert)
          return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              absl::StrCat("expert_device lists ", ed.device_size(), " experts, the model has ", c.n_expert));
        pl.expert_device.emplace_back(ed.device().begin(), ed.device().end());
      }
    }
  }
  store_ = MakeGrpcKvStore(req->coordinator());
  const auto timeout = std::chrono::milliseconds(req->collective_timeout_ms() > 0 ? req->collective_timeout_ms() : 10000);
  auto comm = par::CreateGlooCommunicator(req->rank(), req->world_size(), store_.get(),
                                          req->rendezvous_prefix(),
                                          req->bind_address().empty() ? "127.0.0.1" : req->bind_address(),
                                          timeout);
  if (!comm.ok())
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        absl::StrCat("rank ", req->rank(), " of ", req->world_size(), ": ", comm.status().message()));
  // The rows' communicator: NCCL between the GPUs when the coordinator asks for it and every
  // rank can make it; the ranks agree over Gloo so that all take the same path.
  std::unique_ptr<par::Communicator> data;
  if (req->data_plane() == "nccl") {
    std::string why;
#ifdef RIGSERVE_HAVE_NCCL
    if (model_->backend() == Backend::kCuda) {
      auto nc = par::CreateNcclCommunicator(req->rank(), req->world_size(), store_.get(),
                                            req->rendezvous_prefix() + "nccl/",
                                            model_->cuda_device(), timeout);
      if (nc.ok())
        data = std::move(*nc);
      else
        why = std::string(nc.status().message());
    } else {
      why = "this worker runs on the cpu";
    }
#else
    why = "this rigserve was built without NCCL";
#endif
    float missing = data ? 0.0f : 1.0f;
    if (absl::Status st = (*comm)->AllReduceSum(&missing, 1); !st.ok())
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          absl::StrCat("rank ", req->rank(), ": agreeing on the data plane: ",
                                       st.message()));
    if (missing > 0) {
      data.reset();
      std::fprintf(stderr,
                   "rigserve worker: NCCL not used (%d of %d ranks could not create it%s%s); "
                   "activations go over Gloo in host memory\n",
                   static_cast<int>(missing), req->world_size(), why.empty() ? "" : "; here: ",
                   why.c_str());
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A CUDA worker keeps only its own layers on the device (no-op on the CPU).
    std::vector<char> mine(c.n_layer, 0);
    for (int64_t l = 0; l < c.n_layer; ++l) mine[l] = pl.layer_owner[l] == req->rank();
    // ... and the routed experts the plan puts on its GPU; its host-RAM experts run on its CPU.
    std::vector<std::vector<int32_t>> gpu_experts;
    if (!pl.expert_device.empty()) {
      gpu_experts.resize(c.n_layer);
      for (int64_t l = 0; l < c.n_layer; ++l)
        for (int64_t e = 0; e < c.n_expert; ++e)
          if (pl.expert_owner[l][e] == req->rank() && pl.expert_device[l][e] >= 0)
            gpu_experts[l].push_back(static_cast<int32_t>(e));
    }
    exec_.Reset();  // the sequences' device states go before the device copy is re-made
    if (auto st = model_->ShardCuda(mine, gpu_experts); !st.ok())
      return grpc::Status(st.code() == absl::StatusCode::kResourceExhausted
                              ? grpc::StatusCode::RESOURCE_EXHAUSTED
                              : grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat("rank ", req->rank(), ": ", st.message()));
    if (data)
      if (auto st = model_->ReserveDeviceRows(req->world_size()); !st.ok())
        return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            absl::StrCat("rank ", req->rank(), ": the dispatch buffers: ",
                                         st.message()));
    exec_.SetDistributed(std::move(*comm), std::move(pl), std::move(data));
  }
  resp->set_load_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  std::fprintf(stderr, "rigserve worker: joined the group as rank %d of %d (%s, activations over %s)\n",
               req->rank(), req->world_size(), req->rendezvous_prefix().c_str(),
               exec_.data_plane());
  return grpc::Status::OK;
}

pb::StepResult WorkerServiceImpl::HandleStep(const pb::StepPlan& plan) {
  StepRequest req;
  req.step_id = plan.step_id();
  req.reset_all = plan.reset_all();
  for (const auto& k : plan.keep()) req.keep.emplace_back(k.seq_id(), k.keep_id());
  req.free_seqs.assign(plan.free_seqs().begin(), plan.free_seqs().end());
  req.drop_kept.assign(plan.drop_kept().begin(), plan.drop_kept().end());
  for (const auto& s : plan.seqs()) {
    SeqStep q;
    q.seq_id = s.seq_id();
    q.tokens.assign(s.tokens().begin(), s.tokens().end());
    q.sample = s.sample();
    q.start = s.start();
    q.restore_from = s.restore_from();
    q.tokens_are_prompt = s.tokens_are_prompt();
    if (s.has_sampling()) {
      const auto& p = s.sampling();
      q.sampling.temperature = p.temperature();
      q.sampling.top_p = p.top_p();
      q.sampling.top_k = p.top_k();
      q.sampling.min_p = p.min_p();
      q.sampling.presence_penalty = p.presence_penalty();
      q.sampling.frequency_penalty = p.frequency_penalty();
      q.sampling.repetition_penalty = p.repetition_penalty();
      for (const auto& [tok, bias] : p.logit_bias()) q.sampling.logit_bias.push_back({tok, bias});
      q.sampling.seed = p.seed();
      q.sampling.top_logprobs = p.logprobs() > 0 ? p.logprobs() : -1;
    }
    req.seqs.push_back(std::move(q));
  }
  pb::StepResult res;
  res.set_step_id(plan.step_id());
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::vector<SeqOutput>> out;
  WorkerStepStats stats;
  {
    std::lock_guard<std::mutex> lock(mu_);
    out = exec_.Execute(req);
    stats.running = exec_.running();
    stats.kept = exec_.kept();
    running_now_ = exec_.running();
    kept_now_ = exec_.kept();
  }
  res.set_step_seconds(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (observer_) {
    stats.seconds = res.step_seconds();
    stats.ok = out.ok();
    for (const auto& q : req.seqs) stats.tokens += static_cast<int64_t>(q.tokens.size());
    if (out.ok()) stats.sampled = static_cast<int64_t>(out->size());
    observer_(stats);
  }
  if (!out.ok()) {
    res.set_error(std::string(out.status().message()));
    return res;
  }
  for (const auto& o : *out) {
    auto* r = res.add_seqs();
    r->set_seq_id(o.seq_id);
    r->set_token(o.token);
    r->set_logprob(o.logprob);
    for (const auto& t : o.top) {
      r->add_top_ids(t.token);
      r->add_top_logprobs(t.logprob);
    }
  }
  return res;
}

grpc::Status WorkerServiceImpl::Step(
    grpc::ServerContext* ctx,
    grpc::ServerReaderWriter<pb::StepResult, pb::StepPlan>* stream) {
  pb::StepPlan plan;
  while (!ctx->IsCancelled() && stream->Read(&plan)) {
    if (!stream->Write(HandleStep(plan))) break;
  }
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Free(grpc::ServerContext*, const pb::FreeRequest* req,
                                     pb::FreeResponse*) {
  std::lock_guard<std::mutex> lock(mu_);
  if (req->reset()) {
    exec_.Reset();
  } else {
    StepRequest r;
    r.free_seqs.assign(req->seq_ids().begin(), req->seq_ids().end());
    (void)exec_.Execute(r);
  }
  running_now_ = exec_.running();
  kept_now_ = exec_.kept();
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Ping(grpc::ServerContext*, const pb::PingRequest*,
                                     pb::PingResponse* resp) {
  resp->set_running(running_now_.load());
  resp->set_kept(kept_now_.load());
  return grpc::Status::OK;
}

}  // namespace rs
