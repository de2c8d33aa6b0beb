#include "coordinator/rendezvous_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace rs {

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

void RendezvousServiceImpl::DropPrefix(const std::string& prefix) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = kv_.lower_bound(prefix); it != kv_.end() && it->first.compare(0, prefix.size(), prefix) == 0;)
    it = kv_.erase(it);
}

}  // namespace rs
