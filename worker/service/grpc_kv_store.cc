#include "worker/service/grpc_kv_store.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "rigserve/v1/worker.grpc.pb.h"

namespace rs {
namespace {

namespace pb = rigserve::v1;

class GrpcKvStore : public par::KvStore {
 public:
  explicit GrpcKvStore(const std::string& address)
      : address_(address),
        stub_(pb::Rendezvous::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))) {}

  absl::Status Set(const std::string& key, const std::vector<char>& value) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    pb::KvSetRequest req;
    req.set_key(key);
    req.set_value(std::string(value.begin(), value.end()));
    pb::KvSetResponse resp;
    grpc::Status st = stub_->KvSet(&ctx, req, &resp);
    if (!st.ok())
      return absl::UnavailableError(absl::StrCat("rendezvous at ", address_, ": set '", key, "': ", st.error_message()));
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<char>> Get(const std::string& key,
                                        std::chrono::milliseconds timeout) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout + std::chrono::seconds(2));
    pb::KvGetRequest req;
    req.set_key(key);
    req.set_timeout_ms(static_cast<int32_t>(timeout.count()));
    pb::KvGetResponse resp;
    grpc::Status st = stub_->KvGet(&ctx, req, &resp);
    if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
      return absl::DeadlineExceededError(absl::StrCat("rendezvous key '", key, "' not set within ", timeout.count(), " ms"));
    if (!st.ok())
      return absl::UnavailableError(absl::StrCat("rendezvous at ", address_, ": get '", key, "': ", st.error_message()));
    return std::vector<char>(resp.value().begin(), resp.value().end());
  }

 private:
  std::string address_;
  std::unique_ptr<pb::Rendezvous::Stub> stub_;
};

}  // namespace

std::unique_ptr<par::KvStore> MakeGrpcKvStore(const std::string& coordinator_address) {
  return std::make_unique<GrpcKvStore>(coordinator_address);
}

}  // namespace rs
