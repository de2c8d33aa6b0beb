// The Gloo backend: a full mesh of TCP pairs (one per peer) set up through our KvStore, then
// point-to-point messages on Gloo's unbound buffers (the tag picks the slot) and Gloo's own
// collectives for broadcast, reduce, all-reduce and barrier. AllToAllV is pairwise sends and
// receives so that arbitrary offsets work.
//
// Failure model. Gloo reports errors by throwing (gloo::IoException for a peer that closed or a
// wait that timed out, gloo::EnforceNotMet for a broken invariant); none escapes this file.
// Every op passes an explicit timeout to Gloo. When any op fails, Gloo has already closed every
// pair of the context (an application timeout closes all of them on purpose, so that buffers
// that may still be referenced are never written), so this communicator is broken from then
// on: every later call returns FailedPrecondition naming the first error. The caller builds a
// new communicator under a new store prefix.
//
// Sizes must agree. A message longer than the receive posted for it trips an assertion in
// Gloo's transport thread, which ends the process; the collectives here only ever post sizes
// both sides computed from the same arguments, and callers of Send/Recv/AllToAllV must
// exchange sizes first (moe_dispatch.cc and SendHidden/RecvHidden do).
#include <atomic>
#include <csignal>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/common/error.h"
#include "gloo/math.h"
#include "gloo/reduce.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/attr.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/unbound_buffer.h"
#include "gloo/types.h"
#include "parallel/communicator.h"

namespace rs::par {
namespace {

using Ms = std::chrono::milliseconds;

// Slot prefixes for our own traffic; Gloo's collectives use 0x01..0x08.
constexpr uint8_t kP2pSlotPrefix = 0x21;
constexpr uint8_t kAllToAllVSlotPrefix = 0x22;

// Thrown by the store adapter inside Gloo's connectFullMesh; carries our status.
struct StoreError : std::runtime_error {
  explicit StoreError(absl::Status s) : std::runtime_error(s.ToString()), status(std::move(s)) {}
  absl::Status status;
};

// gloo::rendezvous::Store over our KvStore, every key under `prefix`.
class StoreAdapter : public gloo::rendezvous::Store {
 public:
  StoreAdapter(KvStore* store, std::string prefix, Ms timeout)
      : store_(store), prefix_(std::move(prefix)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    absl::Status s = store_->Set(Key(key), data);
    if (!s.ok()) throw StoreError(s);
  }
  std::vector<char> get(const std::string& key) override {
    auto v = store_->Get(Key(key), timeout_);
    if (!v.ok()) throw StoreError(v.status());
    return *std::move(v);
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const Ms& timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (const std::string& key : keys) {
      Ms left = std::chrono::duration_cast<Ms>(deadline - std::chrono::steady_clock::now());
      auto v = store_->Get(Key(key), std::max(left, Ms(0)));
      if (!v.ok()) throw StoreError(v.status());
    }
  }

 private:
  std::string Key(const std::string& key) const { return absl::StrCat(prefix_, "/", key); }
  KvStore* store_;
  std::string prefix_;
  Ms timeout_;
};

// Gloo writes to sockets with writev(); a peer that went away would raise SIGPIPE and end this
// process. Ignore it (once, only if nobody installed a handler) so that it is an EPIPE error.
void IgnoreSigpipeOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction old {};
    if (sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
      std::signal(SIGPIPE, SIG_IGN);
    }
  });
}

bool LooksLikeTimeout(const std::string& what) {
  return what.find("imed out") != std::string::npos || what.find("timeout") != std::string::npos;
}

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<gloo::rendezvous::Context> ctx, Ms timeout)
      : ctx_(std::move(ctx)), timeout_ms_(timeout.count()) {}

  int rank() const override { return ctx_->rank; }
  int size() const override { return ctx_->size; }
  const char* backend() const override { return "gloo"; }
  void set_timeout(Ms t) override { timeout_ms_.store(std::max<int64_t>(1, t.count())); }

  absl::Status Send(int dst, const void* data, size_t bytes, uint32_t tag) override {
    const std::string op = absl::StrCat("send of ", bytes, " bytes to rank ", dst, " (tag ", tag, ")");
    if (absl::Status s = CheckPeer(dst, op); !s.ok()) return s;
    if (bytes == 0) return absl::OkStatus();
    return Guard(op, [&] {
      auto buf = ctx_->createUnboundBuffer(const_cast<void*>(data), bytes);
      buf->send(dst, P2pSlot(tag));
      buf->waitSend(timeout());
    });
  }

  absl::Status Recv(int src, void* data, size_t bytes, uint32_t tag) override {
    const std::string op =
        absl::StrCat("recv of ", bytes, " bytes from rank ", src, " (tag ", tag, ")");
    if (absl::Status s = CheckPeer(src, op); !s.ok()) return s;
    if (bytes == 0) return absl::OkStatus();
    return Guard(op, [&] {
      auto buf = ctx_->createUnboundBuffer(data, bytes);
      buf->recv(src, P2pSlot(tag));
      buf->waitRecv(timeout());
    });
  }

  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    const std::string op = absl::StrCat("broadcast of ", bytes, " bytes from rank ", root);
    if (root < 0 || root >= size())
      return absl::InvalidArgumentError(absl::StrCat(op, ": root outside group of ", size()));
    if (bytes == 0 || size() == 1) return Broken(op);
    std::lock_guard<std::mutex> lock(collective_mu_);
    return Guard(op, [&] {
      gloo::BroadcastOptions opts(ctx_);
      opts.setOutput(static_cast<uint8_t*>(data), bytes);
      opts.setRoot(root);
      opts.setTimeout(timeout());
      gloo::broadcast(opts);
    });
  }

  absl::Status ReduceSum(float* data, size_t n, int root) override {
    const std::string op = absl::StrCat("reduce-sum of ", n, " floats to rank ", root);
    if (root < 0 || root >= size())
      return absl::InvalidArgumentError(absl::StrCat(op, ": root outside group of ", size()));
    if (n == 0 || size() == 1) return Broken(op);
    std::lock_guard<std::mutex> lock(collective_mu_);
    return Guard(op, [&] {
      gloo::ReduceOptions opts(ctx_);
      // Gloo's ring reduce leaves partial sums in the buffer of a non-root rank when it runs in
      // place; keep the caller's data intact there and reduce into scratch instead.
      if (rank() != root) {
        scratch_.resize(n);
        opts.setInput(data, n);
        opts.setOutput(scratch_.data(), n);
      } else {
        opts.setOutput(data, n);
      }
      opts.setRoot(root);
      opts.setReduceFunction(SumFn());
      opts.setTimeout(timeout());
      gloo::reduce(opts);
    });
  }

  absl::Status AllReduceSum(float* data, size_t n) override {
    const std::string op = absl::StrCat("all-reduce-sum of ", n, " floats");
    if (n == 0 || size() == 1) return Broken(op);
    std::lock_guard<std::mutex> lock(collective_mu_);
    return Guard(op, [&] {
      gloo::AllreduceOptions opts(ctx_);
      opts.setOutput(data, n);
      opts.setReduceFunction(SumFn());
      opts.setTimeout(timeout());
      gloo::allreduce(opts);
    });
  }

  absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_offsets,
                         const std::vector<size_t>& send_bytes, void* recv,
                         const std::vector<size_t>& recv_offsets,
                         const std::vector<size_t>& recv_bytes) override {
    const size_t n = static_cast<size_t>(size());
    std::string op = absl::StrCat("all-to-all-v (send bytes [", absl::StrJoin(send_bytes, ","),
                                  "], recv bytes [", absl::StrJoin(recv_bytes, ","), "])");
    if (send_offsets.size() != n || send_bytes.size() != n || recv_offsets.size() != n ||
        recv_bytes.size() != n)
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": offset/size vectors have ", send_offsets.size(), ",",
                       send_bytes.size(), ",", recv_offsets.size(), ",", recv_bytes.size(),
                       " entries, the group has ", n));
    const int me = rank();
    if (send_bytes[me] != recv_bytes[me])
      return absl::InvalidArgumentError(absl::StrCat(op, ": rank ", me, " sends ", send_bytes[me],
                                                     " bytes to itself but expects ",
                                                     recv_bytes[me]));
    std::lock_guard<std::mutex> lock(collective_mu_);
    if (absl::Status s = Broken(op); !s.ok()) return s;
    if (send_bytes[me] > 0)
      std::memmove(static_cast<char*>(recv) + recv_offsets[me],
                   static_cast<const char*>(send) + send_offsets[me], send_bytes[me]);
    if (n == 1) return absl::OkStatus();
    std::string stage;
    return Guard(op, &stage, [&] {
      const uint64_t slot = gloo::Slot::build(kAllToAllVSlotPrefix, 0);
      std::vector<std::unique_ptr<gloo::transport::UnboundBuffer>> recvs, sends;
      std::vector<int> recv_from, send_to;
      // Receives first (a send moves only once the peer's receive is posted), in ring order
      // starting after this rank so that peers do not all start on the same rank.
      for (size_t i = 1; i < n; ++i) {
        const int r = static_cast<int>((me + i) % n);
        if (recv_bytes[r] == 0) continue;
        recvs.push_back(
            ctx_->createUnboundBuffer(static_cast<char*>(recv) + recv_offsets[r], recv_bytes[r]));
        recvs.back()->recv(r, slot);
        recv_from.push_back(r);
      }
      for (size_t i = 1; i < n; ++i) {
        const int r = static_cast<int>((me + n - i) % n);
        if (send_bytes[r] == 0) continue;
        sends.push_back(ctx_->createUnboundBuffer(
            const_cast<char*>(static_cast<const char*>(send)) + send_offsets[r], send_bytes[r]));
        sends.back()->send(r, slot);
        send_to.push_back(r);
      }
      const auto deadline = std::chrono::steady_clock::now() + timeout();
      for (size_t i = 0; i < recvs.size(); ++i) {
        stage = absl::StrCat("waiting for ", recv_bytes[recv_from[i]], " bytes from rank ",
                              recv_from[i]);
        recvs[i]->waitRecv(Left(deadline));
      }
      for (size_t i = 0; i < sends.size(); ++i) {
        stage = absl::StrCat("sending ", send_bytes[send_to[i]], " bytes to rank ", send_to[i]);
        sends[i]->waitSend(Left(deadline));
      }
    });
  }

  absl::Status Barrier() override {
    const std::string op = "barrier";
    if (size() == 1) return Broken(op);
    std::lock_guard<std::mutex> lock(collective_mu_);
    return Guard(op, [&] {
      gloo::BarrierOptions opts(ctx_);
      opts.setTimeout(timeout());
      gloo::barrier(opts);
    });
  }

 private:
  Ms timeout() const { return Ms(timeout_ms_.load()); }
  static Ms Left(std::chrono::steady_clock::time_point deadline) {
    auto left = std::chrono::duration_cast<Ms>(deadline - std::chrono::steady_clock::now());
    return std::max(left, Ms(1));
  }
  static uint64_t P2pSlot(uint32_t tag) { return gloo::Slot::build(kP2pSlotPrefix, tag); }
  static gloo::ReduceOptions::Func SumFn() {
    return static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>);
  }

  absl::Status CheckPeer(int peer, const std::string& op) const {
    if (peer < 0 || peer >= size() || peer == rank())
      return absl::InvalidArgumentError(absl::StrCat(op, ": rank ", rank(), " of a group of ",
                                                     size(), " cannot address rank ", peer));
    return Broken(op);
  }

  // OK unless an earlier op broke this communicator.
  absl::Status Broken(const std::string& op) const {
    std::lock_guard<std::mutex> lock(err_mu_);
    if (first_error_.ok()) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("gloo ", op, " on rank ", rank(),
                     ": the communicator is broken by an earlier error (reconnect under a new "
                     "prefix): ",
                     first_error_.message()));
  }

  // Runs `fn`, turning every exception into a status that names the op, this rank and the
  // timeout; the first failure marks the communicator broken.
  template <typename Fn>
  absl::Status Guard(const std::string& op, Fn&& fn) {
    return Guard(op, nullptr, std::forward<Fn>(fn));
  }
  // `stage`, if given, says what the op was waiting for when it failed.
  template <typename Fn>
  absl::Status Guard(const std::string& op, const std::string* stage_ptr, Fn&& fn) {
    if (absl::Status s = Broken(op); !s.ok()) return s;
    absl::Status status;
    const std::string where = absl::StrCat("gloo ", op, " on rank ", rank(), " of ", size());
    try {
      fn();
      return absl::OkStatus();
    } catch (const gloo::IoException& e) {
      std::string what = e.what();
      std::string stage =
          stage_ptr == nullptr || stage_ptr->empty() ? "" : absl::StrCat(" (", *stage_ptr, ")");
      if (LooksLikeTimeout(what)) {
        status = absl::DeadlineExceededError(absl::StrCat(
            where, stage, ": no answer within the ", timeout().count(), " ms timeout: ", what));
      } else {
        status = absl::UnavailableError(
            absl::StrCat(where, stage, ": connection to a peer failed: ", what));
      }
    } catch (const gloo::EnforceNotMet& e) {
      status = absl::InternalError(absl::StrCat(where, ": gloo check failed: ", e.what()));
    } catch (const std::exception& e) {
      status = absl::InternalError(absl::StrCat(where, ": ", e.what()));
    } catch (...) {
      status = absl::InternalError(absl::StrCat(where, ": unknown exception"));
    }
    std::lock_guard<std::mutex> lock(err_mu_);
    if (first_error_.ok()) first_error_ = status;
    return status;
  }

  std::shared_ptr<gloo::rendezvous::Context> ctx_;
  std::atomic<int64_t> timeout_ms_;
  std::mutex collective_mu_;  // collectives run one at a time
  std::vector<float> scratch_;
  mutable std::mutex err_mu_;
  absl::Status first_error_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(
    int rank, int size, KvStore* store, const std::string& prefix, const std::string& bind_address,
    std::chrono::milliseconds timeout) {
  if (size < 1 || rank < 0 || rank >= size)
    return absl::InvalidArgumentError(
        absl::StrCat("gloo: rank ", rank, " is not inside a group of ", size));
  if (store == nullptr) return absl::InvalidArgumentError("gloo: no rendezvous store");
  if (timeout.count() <= 0)
    return absl::InvalidArgumentError(
        absl::StrCat("gloo: timeout must be positive, got ", timeout.count(), " ms"));
  IgnoreSigpipeOnce();
  const std::string where =
      absl::StrCat("gloo connect of rank ", rank, " of ", size, " on ", bind_address,
                   " (store prefix '", prefix, "', timeout ", timeout.count(), " ms)");
  try {
    gloo::transport::tcp::attr attr(bind_address.c_str());
    auto device = gloo::transport::tcp::CreateDevice(attr);
    auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
    ctx->setTimeout(timeout);
    StoreAdapter adapter(store, prefix, timeout);
    ctx->connectFullMesh(adapter, device);
    return std::unique_ptr<Communicator>(new GlooCommunicator(std::move(ctx), timeout));
  } catch (const StoreError& e) {
    absl::Status s = e.status;
    const std::string msg =
        absl::StrCat(where, ": rendezvous failed (a peer did not show up?): ", s.message());
    if (absl::IsDeadlineExceeded(s)) return absl::DeadlineExceededError(msg);
    return absl::Status(s.code(), msg);
  } catch (const gloo::IoException& e) {
    std::string what = e.what();
    if (LooksLikeTimeout(what))
      return absl::DeadlineExceededError(absl::StrCat(where, ": ", what));
    return absl::UnavailableError(absl::StrCat(where, ": ", what));
  } catch (const gloo::EnforceNotMet& e) {
    return absl::InternalError(absl::StrCat(where, ": gloo check failed: ", e.what()));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(where, ": ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat(where, ": unknown exception"));
  }
}

}  // namespace rs::par
