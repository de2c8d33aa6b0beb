// The coordinator's handle on one worker: Describe, and the step stream (one StepResult per
// StepPlan, with a timeout). In-process for `rigserve serve`, gRPC for remote workers.
#pragma once

#include <memory>
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
};

std::unique_ptr<WorkerLink> MakeLocalLink(WorkerServiceImpl* service);
std::unique_ptr<WorkerLink> MakeRemoteLink(const std::string& address, double step_timeout_s);

}  // namespace rs
