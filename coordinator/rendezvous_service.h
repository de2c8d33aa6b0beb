// rigserve.v1.Rendezvous on the coordinator: the key-value store through which workers find
// each other (Gloo's store, the NCCL unique id). Keys live in memory; KvGet waits for a key.
#pragma once

#include <condition_variable>
#include <map>
#include <mutex>
#include <string>

#include "rigserve/v1/worker.grpc.pb.h"

namespace rs {

class RendezvousServiceImpl final : public rigserve::v1::Rendezvous::Service {
 public:
  grpc::Status KvSet(grpc::ServerContext*, const rigserve::v1::KvSetRequest* req,
                     rigserve::v1::KvSetResponse*) override;
  grpc::Status KvGet(grpc::ServerContext* ctx, const rigserve::v1::KvGetRequest* req,
                     rigserve::v1::KvGetResponse* resp) override;
  // Drops the keys of an old connection generation.
  void DropPrefix(const std::string& prefix);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> kv_;
};

}  // namespace rs
