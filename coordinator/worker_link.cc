#include "coordinator/worker_link.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "worker/service/worker_service.h"

namespace rs {

namespace pb = rigserve::v1;

namespace {

class LocalLink : public WorkerLink {
 public:
  explicit LocalLink(WorkerServiceImpl* s) : s_(s) {}
  absl::StatusOr<pb::DescribeResponse> Describe(bool include_vocab) override {
    pb::DescribeResponse r;
    s_->DescribeTo(include_vocab, &r);
    return r;
  }
  absl::StatusOr<pb::StepResult> Step(const pb::StepPlan& plan) override {
    return s_->HandleStep(plan);
  }
  absl::StatusOr<pb::LoadResponse> Load(const pb::LoadRequest& req) override {
    grpc::ServerContext ctx;
    pb::LoadResponse resp;
    grpc::Status st = s_->Load(&ctx, &req, &resp);
    if (!st.ok()) return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
    return resp;
  }
  bool Alive() override { return true; }
  std::string name() const override { return "local"; }

 private:
  WorkerServiceImpl* s_;
};

// A long-lived bidirectional Step stream. A reader thread moves results into a queue so that
// Step can wait with a timeout; any failure breaks the stream, and the next Step reconnects.
class RemoteLink : public WorkerLink {
 public:
  RemoteLink(std::string address, double timeout_s)
      : address_(std::move(address)), timeout_s_(timeout_s) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(512 << 20);
    args.SetMaxSendMessageSize(512 << 20);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 1000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 1000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    channel_ = grpc::CreateCustomChannel(address_, grpc::InsecureChannelCredentials(), args);
    stub_ = pb::Worker::NewStub(channel_);
  }
  ~RemoteLink() override { Close(); }

  absl::StatusOr<pb::DescribeResponse> Describe(bool include_vocab) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    pb::DescribeRequest req;
    req.set_include_vocab(include_vocab);
    pb::DescribeResponse resp;
    grpc::Status st = stub_->Describe(&ctx, req, &resp);
    if (!st.ok())
      return absl::UnavailableError(absl::StrCat("worker ", address_, ": Describe failed: ",
                                                 st.error_message()));
    return resp;
  }

  absl::StatusOr<pb::LoadResponse> Load(const pb::LoadRequest& req) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    pb::LoadResponse resp;
    grpc::Status st = stub_->Load(&ctx, req, &resp);
    if (!st.ok())
      return absl::UnavailableError(absl::StrCat("worker ", address_, ": Load failed: ", st.error_message()));
    return resp;
  }

  bool Alive() override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    pb::PingRequest req;
    pb::PingResponse resp;
    return stub_->Ping(&ctx, req, &resp).ok();
  }

  absl::StatusOr<pb::StepResult> Step(const pb::StepPlan& plan) override {
    if (!stream_ && !Open()) return Broken("cannot open the step stream");
    if (!stream_->Write(plan)) return Broken("the step stream broke while sending");
    std::unique_lock<std::mutex> lock(mu_);
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(static_cast<int64_t>(timeout_s_ * 1000));
    if (!cv_.wait_until(lock, deadline, [&] { return !results_.empty() || reader_done_; })) {
      lock.unlock();
      return Broken(absl::StrCat("no step result within ", timeout_s_, " s"));
    }
    if (results_.empty()) {
      lock.unlock();
      return Broken("the step stream ended");
    }
    pb::StepResult r = std::move(results_.front());
    results_.pop_front();
    return r;
  }

  std::string name() const override { return address_; }

 private:
  bool Open() {
    Close();
    ctx_ = std::make_unique<grpc::ClientContext>();
    stream_ = stub_->Step(ctx_.get());
    if (!stream_) return false;
    reader_done_ = false;
    reader_ = std::thread([this] {
      pb::StepResult r;
      while (stream_->Read(&r)) {
        std::lock_guard<std::mutex> lock(mu_);
        results_.push_back(std::move(r));
        cv_.notify_all();
      }
      std::lock_guard<std::mutex> lock(mu_);
      reader_done_ = true;
      cv_.notify_all();
    });
    return true;
  }
  void Close() {
    if (ctx_) ctx_->TryCancel();
    if (reader_.joinable()) reader_.join();
    stream_.reset();
    ctx_.reset();
    std::lock_guard<std::mutex> lock(mu_);
    results_.clear();
  }
  absl::Status Broken(const std::string& why) {
    Close();
    return absl::UnavailableError(absl::StrCat("worker ", address_, ": ", why));
  }

  std::string address_;
  double timeout_s_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::Worker::Stub> stub_;
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<pb::StepPlan, pb::StepResult>> stream_;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<pb::StepResult> results_;
  bool reader_done_ = false;
};

class SlotLink : public WorkerLink {
 public:
  explicit SlotLink(std::shared_ptr<WorkerSlot> slot) : slot_(std::move(slot)) {}
  absl::StatusOr<pb::DescribeResponse> Describe(bool include_vocab) override {
    return slot_->link()->Describe(include_vocab);
  }
  absl::StatusOr<pb::LoadResponse> Load(const pb::LoadRequest& req) override {
    return slot_->link()->Load(req);
  }
  absl::StatusOr<pb::StepResult> Step(const pb::StepPlan& plan) override {
    return slot_->link()->Step(plan);
  }
  bool Alive() override { return slot_->link()->Alive(); }
  std::string name() const override { return slot_->address(); }
  uint64_t generation() const override { return slot_->generation(); }

 private:
  std::shared_ptr<WorkerSlot> slot_;
};

}  // namespace

WorkerSlot::WorkerSlot(std::string address, double step_timeout_s)
    : address_(std::move(address)), timeout_s_(step_timeout_s),
      link_(MakeRemoteLink(address_, step_timeout_s)) {}

uint64_t WorkerSlot::generation() const {
  std::lock_guard<std::mutex> lock(mu_);
  return generation_;
}

void WorkerSlot::Rebind(const std::string& address) {
  std::shared_ptr<WorkerLink> old = MakeRemoteLink(address, timeout_s_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    address_ = address;
    ++generation_;
    link_.swap(old);
  }
  // `old` closes here, outside the lock (or later, when a call in flight on it returns).
}

std::string WorkerSlot::address() const {
  std::lock_guard<std::mutex> lock(mu_);
  return address_;
}

std::shared_ptr<WorkerLink> WorkerSlot::link() const {
  std::lock_guard<std::mutex> lock(mu_);
  return link_;
}

std::unique_ptr<WorkerLink> MakeSlotLink(std::shared_ptr<WorkerSlot> slot) {
  return std::make_unique<SlotLink>(std::move(slot));
}

std::unique_ptr<WorkerLink> MakeLocalLink(WorkerServiceImpl* service) {
  return std::make_unique<LocalLink>(service);
}

std::unique_ptr<WorkerLink> MakeRemoteLink(const std::string& address, double step_timeout_s) {
  return std::make_unique<RemoteLink>(address, step_timeout_s);
}

}  // namespace rs
