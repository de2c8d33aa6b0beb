// The rendezvous KvStore of a worker: the coordinator's Rendezvous service over gRPC.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace rs {

std::unique_ptr<par::KvStore> MakeGrpcKvStore(const std::string& coordinator_address);

}  // namespace rs
