// The group of one and the in-process KvStore.
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "parallel/communicator.h"

namespace rs::par {
namespace {

class SoloCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const char* backend() const override { return "solo"; }
  void set_timeout(std::chrono::milliseconds) override {}
  absl::Status Send(int dst, const void*, size_t, uint32_t) override {
    return absl::InvalidArgumentError(absl::StrCat("send to rank ", dst, " in a group of one"));
  }
  absl::Status Recv(int src, void*, size_t, uint32_t) override {
    return absl::InvalidArgumentError(absl::StrCat("recv from rank ", src, " in a group of one"));
  }
  absl::Status Broadcast(void*, size_t, int) override { return absl::OkStatus(); }
  absl::Status ReduceSum(float*, size_t, int) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(float*, size_t) override { return absl::OkStatus(); }
  absl::Status AllToAllV(const void* send, const std::vector<size_t>& so,
                         const std::vector<size_t>& sb, void* recv,
                         const std::vector<size_t>& ro, const std::vector<size_t>& rb) override {
    if (sb.size() != 1 || rb.size() != 1 || sb[0] != rb[0])
      return absl::InvalidArgumentError("all-to-all sizes do not match a group of one");
    std::memcpy(static_cast<char*>(recv) + ro[0], static_cast<const char*>(send) + so[0], sb[0]);
    return absl::OkStatus();
  }
  absl::Status Barrier() override { return absl::OkStatus(); }
};

class MemoryKvStore : public KvStore {
 public:
  absl::Status Set(const std::string& key, const std::vector<char>& value) override {
    std::lock_guard<std::mutex> lock(mu_);
    kv_[key] = value;
    cv_.notify_all();
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<char>> Get(const std::string& key,
                                        std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return kv_.count(key) > 0; }))
      return absl::DeadlineExceededError(absl::StrCat("rendezvous key '", key, "' not set within ",
                                                      timeout.count(), " ms"));
    return kv_[key];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<char>> kv_;
};

}  // namespace

std::unique_ptr<Communicator> MakeSoloCommunicator() { return std::make_unique<SoloCommunicator>(); }
std::unique_ptr<KvStore> MakeMemoryKvStore() { return std::make_unique<MemoryKvStore>(); }

}  // namespace rs::par
