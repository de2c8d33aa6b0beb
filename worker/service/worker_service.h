// The worker's gRPC face: rigserve.v1.Worker over a Model and its StepExecutor. The same
// object serves remote coordinators (gRPC) and the in-process coordinator of `rigserve serve`
// (HandleStep called directly), so both paths run the same code.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "rigserve/v1/worker.grpc.pb.h"
#include "worker/gguf.h"
#include "worker/model.h"
#include "worker/step_executor.h"

namespace rs {

// What a worker has to hold the model with, as Describe (and a registration) reports it to the
// coordinator's placement planner.
struct WorkerInventory {
  std::string device = "cpu";          // "cpu" or "cuda:N"
  std::string device_name;             // the GPU's name (cuda)
  uint64_t device_free = 0;            // GPU bytes free before the model loaded (cuda)
  uint64_t device_total = 0;
  uint64_t host_total = 0;             // host RAM (MemTotal)
  uint64_t host_available = 0;         // MemAvailable when the worker started
  std::string host_id;                 // boot id: workers with the same id share the host's RAM
};

// The host part of the inventory: /proc/meminfo and the boot id (zeros / "" when unreadable).
WorkerInventory HostInventory();

// What one executed step plan did (for the worker's metrics).
struct WorkerStepStats {
  double seconds = 0;
  bool ok = true;
  int64_t tokens = 0;   // tokens run through the model
  int64_t sampled = 0;  // tokens sampled here
  int64_t running = 0, kept = 0;
};

class WorkerServiceImpl final : public rigserve::v1::Worker::Service {
 public:
  WorkerServiceImpl(std::shared_ptr<const gguf::File> file, std::unique_ptr<Model> model,
                    int max_states, std::string device);

  grpc::Status Describe(grpc::ServerContext*, const rigserve::v1::DescribeRequest* req,
                        rigserve::v1::DescribeResponse* resp) override;
  grpc::Status Load(grpc::ServerContext*, const rigserve::v1::LoadRequest* req,
                    rigserve::v1::LoadResponse* resp) override;
  grpc::Status Step(grpc::ServerContext* ctx,
                    grpc::ServerReaderWriter<rigserve::v1::StepResult, rigserve::v1::StepPlan>*
                        stream) override;
  grpc::Status Free(grpc::ServerContext*, const rigserve::v1::FreeRequest* req,
                    rigserve::v1::FreeResponse*) override;
  grpc::Status Ping(grpc::ServerContext*, const rigserve::v1::PingRequest*,
                    rigserve::v1::PingResponse* resp) override;

  // Executes one plan (thread-safe; plans are executed one at a time).
  rigserve::v1::StepResult HandleStep(const rigserve::v1::StepPlan& plan);
  void DescribeTo(bool include_vocab, rigserve::v1::DescribeResponse* resp) const;
  // Sets the inventory Describe reports (default: HostInventory() with the constructor's device).
  void set_inventory(WorkerInventory inv) { inv_ = std::move(inv); }
  const WorkerInventory& inventory() const { return inv_; }
  // Called after every step plan (on the stepping thread).
  void set_step_observer(std::function<void(const WorkerStepStats&)> f) { observer_ = std::move(f); }

 private:
  std::shared_ptr<const gguf::File> file_;
  std::unique_ptr<Model> model_;
  StepExecutor exec_;
  std::string device_;
  WorkerInventory inv_;
  std::unique_ptr<par::KvStore> store_;
  std::function<void(const WorkerStepStats&)> observer_;
  // Ping answers from these without the step lock: a worker blocked in a collective (a peer
  // died) is alive, and must say so, or a restarted peer would take the wrong slot.
  std::atomic<int> running_now_{0}, kept_now_{0};
  std::mutex mu_;
};

}  // namespace rs
