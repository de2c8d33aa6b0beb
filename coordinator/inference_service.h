// rigserve.v1.Inference over the Engine: validation (INVALID_ARGUMENT naming the field),
// streaming, cancellation when the client goes away, absl::Status -> grpc::Status at the edge.
#pragma once

#include <atomic>

#include "coordinator/engine.h"
#include "rigserve/v1/inference.grpc.pb.h"

namespace rs {

class InferenceServiceImpl final : public rigserve::v1::Inference::Service {
 public:
  // The engine arrives once the model is loaded; until then every call is UNAVAILABLE.
  explicit InferenceServiceImpl(Engine* engine = nullptr) : engine_(engine) {}
  void set_engine(Engine* e) { engine_ = e; }

  grpc::Status Generate(grpc::ServerContext* ctx, const rigserve::v1::GenerateRequest* req,
                        grpc::ServerWriter<rigserve::v1::GenerateResponse>* writer) override;
  grpc::Status Chat(grpc::ServerContext* ctx, const rigserve::v1::ChatRequest* req,
                    grpc::ServerWriter<rigserve::v1::ChatResponse>* writer) override;
  grpc::Status Abort(grpc::ServerContext*, const rigserve::v1::AbortRequest* req,
                     rigserve::v1::AbortResponse* resp) override;
  grpc::Status Tokenize(grpc::ServerContext*, const rigserve::v1::TokenizeRequest* req,
                        rigserve::v1::TokenizeResponse* resp) override;
  grpc::Status ModelInfo(grpc::ServerContext*, const rigserve::v1::ModelInfoRequest*,
                         rigserve::v1::ModelInfoResponse* resp) override;
  grpc::Status ServerInfo(grpc::ServerContext*, const rigserve::v1::ServerInfoRequest*,
                          rigserve::v1::ServerInfoResponse* resp) override;

 private:
  grpc::Status NotReady() const;
  std::atomic<Engine*> engine_;
};

grpc::Status ToGrpc(const absl::Status& st);

}  // namespace rs
