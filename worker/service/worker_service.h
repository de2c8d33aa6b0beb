// The worker's gRPC face: rigserve.v1.Worker over a Model and its StepExecutor. The same
// object serves remote coordinators (gRPC) and the in-process coordinator of `rigserve serve`
// (HandleStep called directly), so both paths run the same code.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "rigserve/v1/worker.grpc.pb.h"
#include "worker/gguf.h"
#include "worker/model.h"
#include "worker/step_executor.h"

namespace rs {

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

 private:
  std::shared_ptr<const gguf::File> file_;
  std::unique_ptr<Model> model_;
  StepExecutor exec_;
  std::string device_;
  std::unique_ptr<par::KvStore> store_;
  std::mutex mu_;
};

}  // namespace rs
