// Communication between workers (never through the coordinator): point-to-point, broadcast,
// reductions, variable all-to-all and barrier, each with a timeout. Backends: Gloo over TCP
// (CPU workers) and NCCL (GPU workers). Rendezvous goes through a KvStore that the coordinator
// serves, so a worker needs nothing but the coordinator's address.
//
// Every call is collective over the group unless it is point-to-point; all workers must issue
// the same collectives in the same order (they all execute the same StepPlan). A peer that
// does not answer within the timeout makes the call return DeadlineExceeded / Unavailable,
// never hang.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rs::par {

// The rendezvous key-value store (Gloo's store, the NCCL unique id exchange).
class KvStore {
 public:
  virtual ~KvStore() = default;
  virtual absl::Status Set(const std::string& key, const std::vector<char>& value) = 0;
  // Waits until the key exists or the timeout passes (DeadlineExceeded naming the key).
  virtual absl::StatusOr<std::vector<char>> Get(const std::string& key,
                                                std::chrono::milliseconds timeout) = 0;
};

// In-process store (tests, single-process groups).
std::unique_ptr<KvStore> MakeMemoryKvStore();
// A directory on a shared filesystem (tests with several processes on one host).
std::unique_ptr<KvStore> MakeFileKvStore(const std::string& dir);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* backend() const = 0;  // "gloo" or "nccl"
  virtual void set_timeout(std::chrono::milliseconds t) = 0;

  // Point-to-point; `tag` separates concurrent messages between the same pair.
  virtual absl::Status Send(int dst, const void* data, size_t bytes, uint32_t tag) = 0;
  virtual absl::Status Recv(int src, void* data, size_t bytes, uint32_t tag) = 0;
  // `bytes` from root to everybody.
  virtual absl::Status Broadcast(void* data, size_t bytes, int root) = 0;
  // Element-wise float sum; the result on `root` only (ReduceSum) or everywhere.
  virtual absl::Status ReduceSum(float* data, size_t n, int root) = 0;
  virtual absl::Status AllReduceSum(float* data, size_t n) = 0;
  // Variable all-to-all: send_bytes[r] bytes at send + send_offsets[r] go to rank r; from rank
  // r, recv_bytes[r] bytes arrive at recv + recv_offsets[r] (sizes agreed beforehand).
  virtual absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_offsets,
                                 const std::vector<size_t>& send_bytes, void* recv,
                                 const std::vector<size_t>& recv_offsets,
                                 const std::vector<size_t>& recv_bytes) = 0;
  virtual absl::Status Barrier() = 0;
  // Leaves the group without waiting for the peers (a regroup after a failure: some may be
  // gone). Every later op fails. NCCL aborts its communicator (destroying it could wait for a
  // dead peer); the Gloo and solo ones have nothing to wait for and do nothing.
  virtual void Abort() {}
};

// Gloo over TCP on `bind_address` (an IP of this host; "127.0.0.1" on loopback). `prefix`
// namespaces the store keys (a new prefix per (re)connection generation).
absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(
    int rank, int size, KvStore* store, const std::string& prefix, const std::string& bind_address,
    std::chrono::milliseconds timeout);

// A group of one: every collective is a local no-op (a single worker).
std::unique_ptr<Communicator> MakeSoloCommunicator();

}  // namespace rs::par
