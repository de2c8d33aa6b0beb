#include "coordinator/rendezvous_service.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace rs {

namespace pb = rigserve::v1;

namespace {

std::string GiB(uint64_t b) { return absl::StrFormat("%.2f GiB", b / 1073741824.0); }

}  // namespace

// ---- WorkerRegistry -----------------------------------------------------------------------------

WorkerRegistry::WorkerRegistry(int expected, double step_timeout_s)
    : expected_(expected), step_timeout_s_(step_timeout_s) {}

std::string WorkerRegistry::Describe(const pb::RegisterRequest& r) {
  std::string s = absl::StrCat(r.address(), ", device ", r.device().empty() ? "cpu" : r.device());
  if (r.device() != "cpu" && !r.device().empty())
    absl::StrAppend(&s, " (", r.device_name().empty() ? "GPU" : r.device_name(), ", ",
                    GiB(r.device_memory_free()), " free of ", GiB(r.device_memory_total()), ")");
  absl::StrAppend(&s, ", host RAM ", GiB(r.host_memory_total()), " (", GiB(r.host_memory_available()),
                  " available), host ", r.host_id().substr(0, 8));
  if (r.has_rank()) absl::StrAppend(&s, ", rank ", r.rank());
  if (r.threads() > 0) absl::StrAppend(&s, ", ", r.threads(), " threads");
  if (!r.model().empty()) absl::StrAppend(&s, ", model ", r.model());
  return s;
}

int WorkerRegistry::registered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return slots_.empty() ? static_cast<int>(pending_.size()) : static_cast<int>(slots_.size());
}

bool WorkerRegistry::AllAlive() const {
  std::vector<std::shared_ptr<WorkerSlot>> slots;
  {
    std::lock_guard<std::mutex> lock(mu_);
    slots = slots_;
  }
  if (slots.empty()) return false;
  for (auto& s : slots)
    if (!s->link()->Alive()) return false;
  return true;
}

void WorkerRegistry::set_on_rebind(std::function<void(int, const std::string&)> f) {
  std::lock_guard<std::mutex> lock(mu_);
  on_rebind_ = std::move(f);
}

absl::StatusOr<int> WorkerRegistry::Register(const pb::RegisterRequest& req) {
  if (req.address().empty()) return absl::InvalidArgumentError("registration without an address");
  if (req.has_rank() && (req.rank() < 0 || req.rank() >= expected_))
    return absl::InvalidArgumentError(absl::StrCat("--rank ", req.rank(), " is outside 0..", expected_ - 1,
                                                   " (the coordinator expects ", expected_, " workers)"));
  std::unique_lock<std::mutex> lock(mu_);
  if (slots_.empty()) {
    // Collecting: the same address or the same rank replaces an earlier registration.
    auto same = std::find_if(pending_.begin(), pending_.end(), [&](const pb::RegisterRequest& p) {
      return p.address() == req.address() || (req.has_rank() && p.has_rank() && p.rank() == req.rank());
    });
    if (same != pending_.end()) {
      if (same->address() != req.address() || same->instance() != req.instance())
        std::fprintf(stderr, "rigserve: worker %s replaces the registration of %s\n",
                     Describe(req).c_str(), same->address().c_str());
      *same = req;
    } else {
      pending_.push_back(req);
      std::fprintf(stderr, "rigserve: worker %zu/%d registered: %s\n", pending_.size(), expected_,
                   Describe(req).c_str());
    }
    if (static_cast<int>(pending_.size()) < expected_) return -1;
    // All here: the pipeline order. Ranked workers take their positions, the others fill the
    // rest in registration order.
    std::vector<const pb::RegisterRequest*> order(expected_, nullptr);
    for (const auto& p : pending_)
      if (p.has_rank()) order[p.rank()] = &p;
    size_t next = 0;
    for (const auto& p : pending_) {
      if (p.has_rank()) continue;
      while (order[next]) ++next;
      order[next] = &p;
    }
    std::string list;
    for (int i = 0; i < expected_; ++i) {
      held_.push_back(*order[i]);
      slots_.push_back(std::make_shared<WorkerSlot>(order[i]->address(), step_timeout_s_));
      absl::StrAppend(&list, i ? ", " : "", i, ": ", order[i]->address());
    }
    pending_.clear();
    std::fprintf(stderr, "rigserve: all %d workers registered; pipeline order %s\n", expected_, list.c_str());
    cv_.notify_all();
    for (int i = 0; i < expected_; ++i)
      if (held_[i].address() == req.address()) return i;
    return -1;
  }
  // The order is fixed: a heartbeat, or a worker taking over a slot.
  int slot = -1;
  for (int i = 0; i < expected_; ++i)
    if (held_[i].address() == req.address()) slot = i;
  if (slot >= 0 && held_[slot].instance() == req.instance()) {
    held_[slot] = req;  // heartbeat
    return slot;
  }
  std::string why;
  if (slot >= 0) {
    why = "restarted at the same address";
  } else if (req.has_rank()) {
    slot = req.rank();
    if (slots_[slot]->link()->Alive())
      return absl::AlreadyExistsError(absl::StrCat("rank ", slot, " is held by the live worker at ",
                                                   held_[slot].address()));
    why = absl::StrCat("takes over rank ", slot, " from ", held_[slot].address(), " (not answering)");
  } else {
    std::vector<std::string> live;
    for (int i = 0; i < expected_ && slot < 0; ++i) {
      if (!slots_[i]->link()->Alive()) slot = i;
      else live.push_back(held_[i].address());
    }
    if (slot < 0)
      return absl::ResourceExhaustedError(absl::StrCat("all ", expected_, " worker slots are held by live workers (",
                                                       absl::StrJoin(live, ", "), ")"));
    why = absl::StrCat("takes over slot ", slot, " from ", held_[slot].address(), " (not answering)");
  }
  std::fprintf(stderr, "rigserve: worker %s %s; the group re-forms\n", Describe(req).c_str(), why.c_str());
  held_[slot] = req;
  slots_[slot]->Rebind(req.address());
  auto cb = on_rebind_;
  lock.unlock();
  if (cb) cb(slot, req.address());
  return slot;
}

absl::StatusOr<std::vector<std::shared_ptr<WorkerSlot>>> WorkerRegistry::WaitForAll(
    const std::atomic<bool>& stop) {
  std::unique_lock<std::mutex> lock(mu_);
  while (slots_.empty()) {
    if (stop) return absl::CancelledError("interrupted while waiting for workers to register");
    cv_.wait_for(lock, std::chrono::milliseconds(100));
  }
  return slots_;
}

// ---- RendezvousServiceImpl ----------------------------------------------------------------------

grpc::Status RendezvousServiceImpl::KvSet(grpc::ServerContext*, const rigserve::v1::KvSetRequest* req,
                                          rigserve::v1::KvSetResponse*) {
  std::lock_guard<std::mutex> lock(mu_);
  kv_[req->key()] = req->value();
  cv_.notify_all();
  return grpc::Status::OK;
}

grpc::Status RendezvousServiceImpl::KvGet(grpc::ServerContext* ctx,
                                          const rigserve::v1::KvGetRequest* req,
                                          rigserve::v1::KvGetResponse* resp) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(std::max(0, req->timeout_ms()));
  std::unique_lock<std::mutex> lock(mu_);
  while (!kv_.count(req->key())) {
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    if (std::chrono::steady_clock::now() >= deadline)
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          absl::StrCat("key '", req->key(), "' not set within ", req->timeout_ms(), " ms"));
    cv_.wait_for(lock, std::chrono::milliseconds(50));
  }
  resp->set_value(kv_[req->key()]);
  return grpc::Status::OK;
}

grpc::Status RendezvousServiceImpl::Register(grpc::ServerContext*, const pb::RegisterRequest* req,
                                             pb::RegisterResponse* resp) {
  WorkerRegistry* r = registry_.load();
  if (!r)
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "this coordinator dials its workers (--workers / --local-workers); start it "
                        "with --expect-workers N to accept registrations");
  auto slot = r->Register(*req);
  if (!slot.ok())
    return grpc::Status(static_cast<grpc::StatusCode>(slot.status().code()),
                        std::string(slot.status().message()));
  resp->set_slot(*slot);
  resp->set_expected(r->expected());
  resp->set_registered(r->registered());
  resp->set_message(*slot >= 0 ? absl::StrCat("rank ", *slot, " of ", r->expected())
                               : absl::StrCat(r->registered(), " of ", r->expected(),
                                              " workers registered; waiting for the rest"));
  return grpc::Status::OK;
}

void RendezvousServiceImpl::DropPrefix(const std::string& prefix) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = kv_.lower_bound(prefix); it != kv_.end() && it->first.compare(0, prefix.size(), prefix) == 0;)
    it = kv_.erase(it);
}

}  // namespace rs
