// The coordinator's handle on one worker: Describe, and the step stream (one StepResult per
// StepPlan, with a timeout). In-process for `rigserve serve`, gRPC for remote workers.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "rigserve/v1/worker.grpc.pb.h"

namespace rs {

class WorkerServiceImpl;

class WorkerLink {
 public:
  virtual ~WorkerLink() = default;
  virtual absl::StatusOr<rigserve::v1::DescribeResponse> Describe(bool include_vocab) = 0;
  virtual absl::StatusOr<rigserve::v1::LoadResponse> Load(const rigserve::v1::LoadRequest& req) = 0;
  // UNAVAILABLE when the worker is unreachable, died, or did not answer within the timeout.
  virtual absl::StatusOr<rigserve::v1::StepResult> Step(const rigserve::v1::StepPlan& plan) = 0;
  virtual bool Alive() = 0;
  virtual std::string name() const = 0;
  // Counts the times the worker behind this link was replaced (a slot taken over); 0 for a
  // fixed link.
  virtual uint64_t generation() const { return 0; }
};

std::unique_ptr<WorkerLink> MakeLocalLink(WorkerServiceImpl* service);
std::unique_ptr<WorkerLink> MakeRemoteLink(const std::string& address, double step_timeout_s);

// One position of the pipeline held by a registered worker (`rigserve worker --coordinator`).
// A worker that registers again after dying, at the same address or a new one, takes the slot
// over: Rebind points the slot at it (calls in flight finish on the old connection). Thread-safe.
class WorkerSlot {
 public:
  WorkerSlot(std::string address, double step_timeout_s);
  void Rebind(const std::string& address);
  std::string address() const;
  uint64_t generation() const;
  std::shared_ptr<WorkerLink> link() const;

 private:
  mutable std::mutex mu_;
  std::string address_;
  uint64_t generation_ = 0;
  double timeout_s_;
  std::shared_ptr<WorkerLink> link_;
};

// A WorkerLink that always talks to the slot's current worker; name() is its current address.
std::unique_ptr<WorkerLink> MakeSlotLink(std::shared_ptr<WorkerSlot> slot);

}  // namespace rs
