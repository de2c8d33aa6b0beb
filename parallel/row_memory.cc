// The host RowMemory and the staged communicator; see moe_dispatch.h.
#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/moe_dispatch.h"

namespace rs::par {
namespace {

class HostRowMemory : public RowMemory {
 public:
  absl::StatusOr<void*> Scratch(int slot, size_t bytes) override {
    if (slot < 0 || slot >= 8)
      return absl::InvalidArgumentError(absl::StrCat("row memory: scratch slot ", slot, " (0..7)"));
    auto& b = bufs_[slot];
    const size_t n = (bytes + sizeof(float) - 1) / sizeof(float);
    if (b.size() < n) b.resize(n);
    return static_cast<void*>(b.data());
  }
  absl::Status Upload(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memmove(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status Download(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memmove(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status GatherRows(float* dst, const float* src, const int32_t* rows, size_t n,
                          size_t width) override {
    for (size_t i = 0; i < n; ++i)
      std::memcpy(dst + i * width, src + static_cast<size_t>(rows[i]) * width,
                  width * sizeof(float));
    return absl::OkStatus();
  }
  const char* name() const override { return "host"; }

 private:
  std::vector<float> bufs_[8];
};

class StagedCommunicator : public Communicator {
 public:
  StagedCommunicator(Communicator* host, RowMemory* mem) : host_(host), mem_(mem) {}
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  const char* backend() const override { return host_->backend(); }
  void set_timeout(std::chrono::milliseconds t) override { host_->set_timeout(t); }

  absl::Status Send(int dst, const void* data, size_t bytes, uint32_t tag) override {
    a_.resize(bytes);
    if (auto s = mem_->Download(a_.data(), data, bytes); !s.ok()) return Staging(s);
    return host_->Send(dst, a_.data(), bytes, tag);
  }
  absl::Status Recv(int src, void* data, size_t bytes, uint32_t tag) override {
    a_.resize(bytes);
    if (auto s = host_->Recv(src, a_.data(), bytes, tag); !s.ok()) return s;
    return Staging(mem_->Upload(data, a_.data(), bytes));
  }
  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    a_.resize(bytes);
    if (rank() == root)
      if (auto s = mem_->Download(a_.data(), data, bytes); !s.ok()) return Staging(s);
    if (auto s = host_->Broadcast(a_.data(), bytes, root); !s.ok()) return s;
    return Staging(mem_->Upload(data, a_.data(), bytes));
  }
  absl::Status ReduceSum(float* data, size_t n, int root) override {
    return Reduce(data, n, [&](float* h) { return host_->ReduceSum(h, n, root); });
  }
  absl::Status AllReduceSum(float* data, size_t n) override {
    return Reduce(data, n, [&](float* h) { return host_->AllReduceSum(h, n); });
  }
  absl::Status AllToAllV(const void* send, const std::vector<size_t>& so,
                         const std::vector<size_t>& sb, void* recv,
                         const std::vector<size_t>& ro, const std::vector<size_t>& rb) override {
    if (so.size() != sb.size() || ro.size() != rb.size())
      return absl::InvalidArgumentError("staged all-to-all-v: offsets and sizes differ in length");
    size_t send_end = 0, recv_end = 0;
    for (size_t i = 0; i < sb.size(); ++i)
      if (sb[i] > 0) send_end = std::max(send_end, so[i] + sb[i]);
    for (size_t i = 0; i < rb.size(); ++i)
      if (rb[i] > 0) recv_end = std::max(recv_end, ro[i] + rb[i]);
    a_.resize(send_end);
    b_.resize(recv_end);
    for (size_t i = 0; i < sb.size(); ++i)
      if (sb[i] > 0)
        if (auto s = mem_->Download(a_.data() + so[i], static_cast<const char*>(send) + so[i], sb[i]);
            !s.ok())
          return Staging(s);
    if (auto s = host_->AllToAllV(a_.data(), so, sb, b_.data(), ro, rb); !s.ok()) return s;
    for (size_t i = 0; i < rb.size(); ++i)
      if (rb[i] > 0)
        if (auto s = mem_->Upload(static_cast<char*>(recv) + ro[i], b_.data() + ro[i], rb[i]);
            !s.ok())
          return Staging(s);
    return absl::OkStatus();
  }
  absl::Status Barrier() override { return host_->Barrier(); }

 private:
  template <typename Op>
  absl::Status Reduce(float* data, size_t n, Op op) {
    a_.resize(n * sizeof(float));
    float* h = reinterpret_cast<float*>(a_.data());
    if (auto s = mem_->Download(h, data, n * sizeof(float)); !s.ok()) return Staging(s);
    if (auto s = op(h); !s.ok()) return s;
    return Staging(mem_->Upload(data, h, n * sizeof(float)));
  }
  absl::Status Staging(const absl::Status& s) const {
    if (s.ok()) return s;
    return absl::Status(s.code(), absl::StrCat("staging through ", mem_->name(), ": ", s.message()));
  }
  Communicator* host_;
  RowMemory* mem_;
  std::vector<char> a_, b_;  // float-aligned by std::allocator (new[] alignment)
};

}  // namespace

std::unique_ptr<RowMemory> MakeHostRowMemory() { return std::make_unique<HostRowMemory>(); }

std::unique_ptr<Communicator> MakeStagedCommunicator(Communicator* host, RowMemory* mem) {
  return std::make_unique<StagedCommunicator>(host, mem);
}

}  // namespace rs::par
