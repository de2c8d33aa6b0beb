// The NCCL backend; see nccl_comm.h. Compiled in CUDA builds that found NCCL
// (RIGSERVE_HAVE_NCCL).
#include "parallel/nccl/nccl_comm.h"

#include "parallel/nccl/nccl_api.h"

#include <cuda_runtime.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace rs::par {
namespace {

using Ms = std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

std::string CudaErr(cudaError_t e) {
  return absl::StrCat(cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
}

// Pauses between polls: spin briefly (latency), then sleep (CPU).
void PollPause(int iteration) {
  if (iteration < 200) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(const NcclApi& nc, ncclComm_t comm, cudaStream_t stream, cudaEvent_t done,
                   float* scratch, int rank, int size, int device, Ms timeout)
      : nc_(nc),
        comm_(comm),
        stream_(stream),
        done_(done),
        scratch_(scratch),
        rank_(rank),
        size_(size),
        device_(device),
        timeout_ms_(timeout.count()) {}

  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    if (comm_ != nullptr) {
      if (broken_.ok()) {
        nc_.ncclCommDestroy(comm_);
      } else {
        nc_.ncclCommAbort(comm_);
      }
    }
    cudaFree(scratch_);
    cudaEventDestroy(done_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "nccl"; }
  void set_timeout(Ms t) override { timeout_ms_.store(std::max<int64_t>(1, t.count())); }

  absl::Status Send(int dst, const void* data, size_t bytes, uint32_t tag) override {
    const std::string op = absl::StrCat("send of ", bytes, " bytes to rank ", dst, " (tag ", tag, ")");
    if (dst < 0 || dst >= size_ || dst == rank_) return BadPeer(op, dst);
    if (bytes == 0) return absl::OkStatus();
    return Run(op, [&] { return nc_.ncclSend(data, bytes, ncclInt8, dst, comm_, stream_); });
  }

  absl::Status Recv(int src, void* data, size_t bytes, uint32_t tag) override {
    const std::string op =
        absl::StrCat("recv of ", bytes, " bytes from rank ", src, " (tag ", tag, ")");
    if (src < 0 || src >= size_ || src == rank_) return BadPeer(op, src);
    if (bytes == 0) return absl::OkStatus();
    return Run(op, [&] { return nc_.ncclRecv(data, bytes, ncclInt8, src, comm_, stream_); });
  }

  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    const std::string op = absl::StrCat("broadcast of ", bytes, " bytes from rank ", root);
    if (root < 0 || root >= size_) return BadPeer(op, root);
    if (bytes == 0) return absl::OkStatus();
    return Run(op, [&] {
      return nc_.ncclBroadcast(data, data, bytes, ncclInt8, root, comm_, stream_);
    });
  }

  absl::Status ReduceSum(float* data, size_t n, int root) override {
    const std::string op = absl::StrCat("reduce-sum of ", n, " floats to rank ", root);
    if (root < 0 || root >= size_) return BadPeer(op, root);
    if (n == 0) return absl::OkStatus();
    return Run(op, [&] {
      return nc_.ncclReduce(data, data, n, ncclFloat32, ncclSum, root, comm_, stream_);
    });
  }

  absl::Status AllReduceSum(float* data, size_t n) override {
    const std::string op = absl::StrCat("all-reduce-sum of ", n, " floats");
    if (n == 0) return absl::OkStatus();
    return Run(op, [&] { return nc_.ncclAllReduce(data, data, n, ncclFloat32, ncclSum, comm_, stream_); });
  }

  absl::Status AllToAllV(const void* send, const std::vector<size_t>& so,
                         const std::vector<size_t>& sb, void* recv,
                         const std::vector<size_t>& ro,
                         const std::vector<size_t>& rb) override {
    const size_t n = static_cast<size_t>(size_);
    const std::string op = absl::StrCat("all-to-all-v (send bytes [", absl::StrJoin(sb, ","),
                                        "], recv bytes [", absl::StrJoin(rb, ","), "])");
    if (so.size() != n || sb.size() != n || ro.size() != n || rb.size() != n)
      return absl::InvalidArgumentError(absl::StrCat("nccl ", op, ": vectors do not have ", n,
                                                     " entries"));
    if (sb[rank_] != rb[rank_])
      return absl::InvalidArgumentError(absl::StrCat("nccl ", op, ": rank ", rank_, " sends ",
                                                     sb[rank_], " bytes to itself but expects ",
                                                     rb[rank_]));
    const char* s = static_cast<const char*>(send);
    char* r = static_cast<char*>(recv);
    return Run(op, [&]() -> ncclResult_t {
      if (sb[rank_] > 0) {
        cudaError_t e = cudaMemcpyAsync(r + ro[rank_], s + so[rank_], sb[rank_],
                                        cudaMemcpyDeviceToDevice, stream_);
        if (e != cudaSuccess) return ncclUnhandledCudaError;
      }
      ncclResult_t res = nc_.ncclGroupStart();
      if (res != ncclSuccess) return res;
      for (int p = 0; p < size_; ++p) {
        if (p == rank_) continue;
        if (sb[p] > 0 && (res = nc_.ncclSend(s + so[p], sb[p], ncclInt8, p, comm_, stream_)) != ncclSuccess)
          break;
        if (rb[p] > 0 && (res = nc_.ncclRecv(r + ro[p], rb[p], ncclInt8, p, comm_, stream_)) != ncclSuccess)
          break;
      }
      ncclResult_t end = nc_.ncclGroupEnd();
      return res != ncclSuccess ? res : end;
    });
  }

  absl::Status Barrier() override {
    return Run("barrier", [&] {
      return nc_.ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, stream_);
    });
  }

 private:
  Ms timeout() const { return Ms(timeout_ms_.load()); }

  absl::Status BadPeer(const std::string& op, int peer) const {
    return absl::InvalidArgumentError(absl::StrCat("nccl ", op, ": rank ", rank_,
                                                   " of a group of ", size_,
                                                   " cannot address rank ", peer));
  }

  // Enqueues through `enqueue`, then waits for the stream within the timeout while watching
  // NCCL's asynchronous error. Any failure aborts the communicator.
  template <typename Fn>
  absl::Status Run(const std::string& op, Fn&& enqueue) {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string where = absl::StrCat("nccl ", op, " on rank ", rank_, " of ", size_,
                                           " (device ", device_, ")");
    if (!broken_.ok())
      return absl::FailedPreconditionError(absl::StrCat(
          where, ": the communicator is broken by an earlier error (reconnect under a new "
                 "prefix): ",
          broken_.message()));
    cudaError_t ce = cudaSetDevice(device_);
    if (ce != cudaSuccess) return Fail(absl::InternalError(absl::StrCat(where, ": cudaSetDevice: ", CudaErr(ce))));
    const auto deadline = Clock::now() + timeout();
    ncclResult_t res = enqueue();
    if (res != ncclSuccess && res != ncclInProgress)
      return Fail(absl::InternalError(
          absl::StrCat(where, ": ", nc_.ncclGetErrorString(res), ": ", nc_.ncclGetLastError(comm_))));
    // Non-blocking communicator: the enqueue itself may still be in progress.
    for (int i = 0;; ++i) {
      ncclResult_t async = ncclSuccess;
      nc_.ncclCommGetAsyncError(comm_, &async);
      if (async == ncclSuccess) break;
      if (async != ncclInProgress)
        return Fail(absl::UnavailableError(absl::StrCat(where, ": ", nc_.ncclGetErrorString(async),
                                                        ": ", nc_.ncclGetLastError(comm_))));
      if (Clock::now() > deadline)
        return Fail(absl::DeadlineExceededError(absl::StrCat(
            where, ": not enqueued within the ", timeout().count(), " ms timeout")));
      PollPause(i);
    }
    ce = cudaEventRecord(done_, stream_);
    if (ce != cudaSuccess) return Fail(absl::InternalError(absl::StrCat(where, ": cudaEventRecord: ", CudaErr(ce))));
    for (int i = 0;; ++i) {
      ce = cudaEventQuery(done_);
      if (ce == cudaSuccess) return absl::OkStatus();
      if (ce != cudaErrorNotReady)
        return Fail(absl::InternalError(absl::StrCat(where, ": ", CudaErr(ce))));
      ncclResult_t async = ncclSuccess;
      nc_.ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress)
        return Fail(absl::UnavailableError(absl::StrCat(where, ": a peer failed: ",
                                                        nc_.ncclGetErrorString(async), ": ",
                                                        nc_.ncclGetLastError(comm_))));
      if (Clock::now() > deadline)
        return Fail(absl::DeadlineExceededError(absl::StrCat(
            where, ": no answer within the ", timeout().count(), " ms timeout")));
      PollPause(i);
    }
  }

  void Abort() override {
    std::lock_guard<std::mutex> lock(mu_);
    (void)Fail(absl::CancelledError("aborted: the group re-forms"));
  }

  absl::Status Fail(absl::Status s) {
    if (broken_.ok()) {
      broken_ = s;
      nc_.ncclCommAbort(comm_);  // also releases kernels stuck waiting for a peer
      comm_ = nullptr;
    }
    return s;
  }

  const NcclApi& nc_;
  ncclComm_t comm_;
  cudaStream_t stream_;
  cudaEvent_t done_;
  float* scratch_;  // one float for the barrier
  const int rank_, size_, device_;
  std::atomic<int64_t> timeout_ms_;
  std::mutex mu_;  // NCCL calls on one communicator are issued one at a time
  absl::Status broken_;
};

}  // namespace

bool NcclAvailable(std::string* why, int* version) {
  const NcclApi* api = LoadNccl(why);
  if (api == nullptr) return false;
  int v = 0;
  if (api->ncclGetVersion(&v) != ncclSuccess) {
    if (why) *why = "ncclGetVersion failed";
    return false;
  }
  if (version) *version = v;
  return true;
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    int rank, int size, KvStore* store, const std::string& prefix, int device,
    std::chrono::milliseconds timeout) {
  const std::string where = absl::StrCat("nccl connect of rank ", rank, " of ", size,
                                         " on device ", device, " (store prefix '", prefix,
                                         "', timeout ", timeout.count(), " ms)");
  if (size < 1 || rank < 0 || rank >= size)
    return absl::InvalidArgumentError(absl::StrCat(where, ": rank outside the group"));
  if (store == nullptr) return absl::InvalidArgumentError(absl::StrCat(where, ": no store"));
  if (timeout.count() <= 0)
    return absl::InvalidArgumentError(absl::StrCat(where, ": timeout must be positive"));
  int count = 0;
  cudaError_t ce = cudaGetDeviceCount(&count);
  if (ce != cudaSuccess || count == 0)
    return absl::UnavailableError(absl::StrCat(
        where, ": no CUDA device (cudaGetDeviceCount: ",
        ce == cudaSuccess ? std::string("0 devices") : CudaErr(ce), ")"));
  if (device < 0 || device >= count)
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": the host has ", count, " CUDA devices"));
  if ((ce = cudaSetDevice(device)) != cudaSuccess)
    return absl::UnavailableError(absl::StrCat(where, ": cudaSetDevice: ", CudaErr(ce)));
  std::string why;
  const NcclApi* api = LoadNccl(&why);
  if (api == nullptr) return absl::UnavailableError(absl::StrCat(where, ": ", why));
  const NcclApi& nc_ = *api;

  // The unique id, through the store.
  ncclUniqueId id;
  const std::string key = absl::StrCat(prefix, "/nccl_id");
  if (rank == 0) {
    ncclResult_t r = nc_.ncclGetUniqueId(&id);
    if (r != ncclSuccess)
      return absl::UnavailableError(absl::StrCat(where, ": ncclGetUniqueId: ", nc_.ncclGetErrorString(r)));
    std::vector<char> v(sizeof(id));
    std::memcpy(v.data(), &id, sizeof(id));
    if (absl::Status s = store->Set(key, v); !s.ok())
      return absl::Status(s.code(), absl::StrCat(where, ": publishing the unique id: ", s.message()));
  } else {
    auto v = store->Get(key, timeout);
    if (!v.ok())
      return absl::Status(v.status().code(), absl::StrCat(where, ": waiting for rank 0's unique id: ",
                                                          v.status().message()));
    if (v->size() != sizeof(id))
      return absl::DataLossError(absl::StrCat(where, ": the unique id under '", key, "' has ",
                                              v->size(), " bytes, expected ", sizeof(id)));
    std::memcpy(&id, v->data(), sizeof(id));
  }

  // A non-blocking communicator, so that a missing peer cannot hang us past the timeout.
  const auto deadline = Clock::now() + timeout;
  ncclComm_t comm = nullptr;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r = nc_.ncclCommInitRankConfig(&comm, size, id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    if (comm != nullptr) nc_.ncclCommAbort(comm);
    return absl::UnavailableError(absl::StrCat(where, ": ncclCommInitRankConfig: ", nc_.ncclGetErrorString(r)));
  }
  for (int i = 0;; ++i) {
    ncclResult_t async = ncclSuccess;
    nc_.ncclCommGetAsyncError(comm, &async);
    if (async == ncclSuccess) break;
    if (async != ncclInProgress) {
      std::string last = nc_.ncclGetLastError(comm);
      nc_.ncclCommAbort(comm);
      return absl::UnavailableError(
          absl::StrCat(where, ": initialisation failed: ", nc_.ncclGetErrorString(async), ": ", last));
    }
    if (Clock::now() > deadline) {
      nc_.ncclCommAbort(comm);
      return absl::DeadlineExceededError(absl::StrCat(
          where, ": the group did not form within the timeout (a peer did not join?)"));
    }
    PollPause(i + 200);
  }

  cudaStream_t stream = nullptr;
  cudaEvent_t done = nullptr;
  float* scratch = nullptr;
  if ((ce = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)) != cudaSuccess ||
      (ce = cudaEventCreateWithFlags(&done, cudaEventDisableTiming)) != cudaSuccess ||
      (ce = cudaMalloc(&scratch, sizeof(float))) != cudaSuccess) {
    if (stream) cudaStreamDestroy(stream);
    if (done) cudaEventDestroy(done);
    nc_.ncclCommAbort(comm);
    return absl::ResourceExhaustedError(absl::StrCat(where, ": ", CudaErr(ce)));
  }
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(nc_, comm, stream, done, scratch, rank, size, device, timeout));
}

absl::Status NcclSelfTest(Communicator& c) {
  const int n = c.size(), me = c.rank();
  auto err = [&](const std::string& what) {
    return absl::InternalError(absl::StrCat("nccl self-test on rank ", me, ": ", what));
  };
  const size_t kFloats = 65537;
  void* d = nullptr;
  void* d2 = nullptr;
  if (cudaMalloc(&d, kFloats * 4 * (n + 1)) != cudaSuccess ||
      cudaMalloc(&d2, kFloats * 4 * (n + 1)) != cudaSuccess) {
    cudaFree(d);
    return err("cudaMalloc failed");
  }
  struct Free {
    void* a;
    void* b;
    ~Free() {
      cudaFree(a);
      cudaFree(b);
    }
  } free_them{d, d2};
  std::vector<float> h(kFloats);
  auto up = [&](void* dst, const void* src, size_t bytes) {
    return cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice) == cudaSuccess;
  };
  auto down = [&](void* dst, const void* src, size_t bytes) {
    return cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost) == cudaSuccess;
  };
  auto val = [](int r, size_t i) { return static_cast<float>((r + 1) * 3 + static_cast<int>(i % 101)); };

  // All-reduce.
  for (size_t i = 0; i < kFloats; ++i) h[i] = val(me, i);
  if (!up(d, h.data(), kFloats * 4)) return err("upload");
  if (absl::Status s = c.AllReduceSum(static_cast<float*>(d), kFloats); !s.ok()) return s;
  if (!down(h.data(), d, kFloats * 4)) return err("download");
  for (size_t i = 0; i < kFloats; ++i) {
    float want = 0;
    for (int r = 0; r < n; ++r) want += val(r, i);
    if (h[i] != want) return err(absl::StrCat("all-reduce [", i, "] = ", h[i], ", want ", want));
  }
  // Reduce and broadcast from each root.
  for (int root = 0; root < n; ++root) {
    for (size_t i = 0; i < kFloats; ++i) h[i] = val(me, i);
    if (!up(d, h.data(), kFloats * 4)) return err("upload");
    if (absl::Status s = c.ReduceSum(static_cast<float*>(d), kFloats, root); !s.ok()) return s;
    if (!down(h.data(), d, kFloats * 4)) return err("download");
    if (me == root) {
      float want = 0;
      for (int r = 0; r < n; ++r) want += val(r, 5);
      if (h[5] != want) return err(absl::StrCat("reduce to ", root, ": ", h[5], ", want ", want));
    }
    for (size_t i = 0; i < kFloats; ++i) h[i] = me == root ? val(root, i) + 0.5f : -1.f;
    if (!up(d, h.data(), kFloats * 4)) return err("upload");
    if (absl::Status s = c.Broadcast(d, kFloats * 4, root); !s.ok()) return s;
    if (!down(h.data(), d, kFloats * 4)) return err("download");
    for (size_t i = 0; i < kFloats; ++i)
      if (h[i] != val(root, i) + 0.5f) return err(absl::StrCat("broadcast from ", root, " [", i, "]"));
  }
  // All-to-all-v: (s + 2d) % 3 * 1000 floats from s to d.
  {
    std::vector<size_t> so(n), sb(n), ro(n), rb(n);
    size_t off = 0;
    for (int p = 0; p < n; ++p) {
      so[p] = off;
      sb[p] = ((me + 2 * p) % 3) * 1000 * 4;
      off += sb[p];
    }
    std::vector<float> hs(off / 4);
    for (int p = 0; p < n; ++p)
      for (size_t i = 0; i < sb[p] / 4; ++i) hs[so[p] / 4 + i] = me * 10000.f + p * 1000.f + i;
    if (!hs.empty() && !up(d, hs.data(), off)) return err("upload");
    off = 0;
    for (int p = 0; p < n; ++p) {
      ro[p] = off;
      rb[p] = ((p + 2 * me) % 3) * 1000 * 4;
      off += rb[p];
    }
    if (absl::Status s = c.AllToAllV(d, so, sb, d2, ro, rb); !s.ok()) return s;
    std::vector<float> hr(off / 4);
    if (!hr.empty() && !down(hr.data(), d2, off)) return err("download");
    for (int p = 0; p < n; ++p)
      for (size_t i = 0; i < rb[p] / 4; ++i)
        if (hr[ro[p] / 4 + i] != p * 10000.f + me * 1000.f + i)
          return err(absl::StrCat("all-to-all-v from ", p, " [", i, "]"));
  }
  // Send/Recv between partners 2k <-> 2k+1.
  const int partner = me ^ 1;
  if (partner < n) {
    for (size_t i = 0; i < 1000; ++i) h[i] = me * 7.f + i;
    if (!up(d, h.data(), 4000)) return err("upload");
    absl::Status s1, s2;
    if (me % 2 == 0) {
      s1 = c.Send(partner, d, 4000, 1);
      s2 = c.Recv(partner, d2, 4000, 1);
    } else {
      s2 = c.Recv(partner, d2, 4000, 1);
      s1 = c.Send(partner, d, 4000, 1);
    }
    if (!s1.ok()) return s1;
    if (!s2.ok()) return s2;
    if (!down(h.data(), d2, 4000)) return err("download");
    for (size_t i = 0; i < 1000; ++i)
      if (h[i] != partner * 7.f + i) return err(absl::StrCat("recv from ", partner, " [", i, "]"));
  }
  return c.Barrier();
}

}  // namespace rs::par
