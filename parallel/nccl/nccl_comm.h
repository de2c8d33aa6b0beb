// The NCCL backend of the Communicator (GPU workers). Every data pointer passed to its ops is a
// device pointer on the communicator's device; the ops run on the communicator's own CUDA
// stream and return when the stream has finished them (or the timeout passed).
//
// Rendezvous: rank 0 creates the NCCL unique id and puts it in the KvStore under
// "<prefix>/nccl_id"; the other ranks wait for it (within the timeout). The communicator is
// created non-blocking, so that a peer that never joins makes creation fail within the timeout.
// Timeouts: every op polls its completion event and ncclCommGetAsyncError; past the timeout, or
// on an asynchronous NCCL error, the communicator is aborted (ncclCommAbort) and every later op
// returns FailedPrecondition; the caller reconnects under a new prefix.
//
// Tags: NCCL has none; messages between a pair arrive in the order they were sent, so Send/Recv
// ignore `tag` and callers must issue them in the same order on both sides.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace rs::par {

// Whether libnccl can be loaded (it is loaded at run time, nccl_api.h), with its version code
// (e.g. 22304 for 2.23.4); else *why says why.
bool NcclAvailable(std::string* why, int* version = nullptr);

// Unavailable "no CUDA device" where the machine has none (the tests skip on that message);
// Unavailable "NCCL is not installed (...)" where the library cannot be loaded.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    int rank, int size, KvStore* store, const std::string& prefix, int device,
    std::chrono::milliseconds timeout);

// Runs every op of `comm` (an NCCL communicator) on device buffers it allocates and checks the
// results on the host: AllReduceSum, ReduceSum, Broadcast from each root, AllToAllV with
// uneven sizes, a ring of Send/Recv, Barrier. Collective: every rank calls it. For tests and
// the GPU check script.
absl::Status NcclSelfTest(Communicator& comm);

}  // namespace rs::par
