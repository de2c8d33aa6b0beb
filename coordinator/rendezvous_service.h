// rigserve.v1.Rendezvous on the coordinator: the key-value store through which workers find
// each other (Gloo's store, the NCCL unique id), and the registration of workers started by
// hand (`rigserve worker --coordinator HOST:PORT`). Keys live in memory; KvGet waits for a key.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/worker_link.h"
#include "rigserve/v1/worker.grpc.pb.h"

namespace rs {

// The workers a coordinator started with `--expect-workers N` waits for, and their slots.
//
// Until N workers have registered, registrations are collected: one that comes again from the
// same address, or asks for the same --rank, replaces the earlier one. At N the pipeline order
// is fixed: workers that asked for a rank take that position, the others fill the remaining
// positions in registration order. From then on a registration is either a heartbeat (same
// address, same process: nothing changes), or a worker taking over a slot: the slot of its
// address, of its rank, or else the first slot whose worker does not answer. A slot that is
// taken over is rebound to the new address and `on_rebind` is called (the engine re-forms the
// group). Thread-safe.
class WorkerRegistry {
 public:
  WorkerRegistry(int expected, double step_timeout_s);

  // Handles one registration; the slot (-1 while fewer than N have registered) or an error:
  // InvalidArgument (no address, rank outside 0..N-1), AlreadyExists (the rank's slot is held by
  // another live worker), ResourceExhausted (every slot is held by a live worker).
  absl::StatusOr<int> Register(const rigserve::v1::RegisterRequest& req);
  // Blocks until N workers have registered (or `stop`); then the slots in pipeline order.
  absl::StatusOr<std::vector<std::shared_ptr<WorkerSlot>>> WaitForAll(const std::atomic<bool>& stop);

  void set_on_rebind(std::function<void(int slot, const std::string& address)> f);
  int expected() const { return expected_; }
  // Whether every slot's worker answers a ping (false before the order is fixed).
  bool AllAlive() const;
  int registered() const;
  // One line per registration: address, device, memory (for the log).
  static std::string Describe(const rigserve::v1::RegisterRequest& r);

 private:
  const int expected_;
  const double step_timeout_s_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<rigserve::v1::RegisterRequest> pending_;  // before the order is fixed
  std::vector<rigserve::v1::RegisterRequest> held_;     // after: the registration of each slot
  std::vector<std::shared_ptr<WorkerSlot>> slots_;
  std::function<void(int, const std::string&)> on_rebind_;
};

class RendezvousServiceImpl final : public rigserve::v1::Rendezvous::Service {
 public:
  grpc::Status KvSet(grpc::ServerContext*, const rigserve::v1::KvSetRequest* req,
                     rigserve::v1::KvSetResponse*) override;
  grpc::Status KvGet(grpc::ServerContext* ctx, const rigserve::v1::KvGetRequest* req,
                     rigserve::v1::KvGetResponse* resp) override;
  grpc::Status Register(grpc::ServerContext*, const rigserve::v1::RegisterRequest* req,
                        rigserve::v1::RegisterResponse* resp) override;
  // Drops the keys of an old connection generation.
  void DropPrefix(const std::string& prefix);
  // Registrations go to `r` (nullptr: refused, the coordinator dials its workers itself).
  void set_registry(WorkerRegistry* r) { registry_ = r; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> kv_;
  std::atomic<WorkerRegistry*> registry_{nullptr};
};

}  // namespace rs
