// NCCL's entry points, loaded at run time (dlopen of libnccl.so.2) instead of linked: a binary of
// a CUDA build then starts on a host without NCCL (a CPU-only install, a bare GPU host that the
// GPU check's binaries travel to), and only creating an NCCL communicator needs the library.
// The types and constants come from nccl.h at build time.
#pragma once

#include <nccl.h>

#include <string>

namespace rs::par {

struct NcclApi {
  decltype(&::ncclGetVersion) ncclGetVersion;
  decltype(&::ncclGetUniqueId) ncclGetUniqueId;
  decltype(&::ncclCommInitRankConfig) ncclCommInitRankConfig;
  decltype(&::ncclCommGetAsyncError) ncclCommGetAsyncError;
  decltype(&::ncclGetErrorString) ncclGetErrorString;
  decltype(&::ncclGetLastError) ncclGetLastError;
  decltype(&::ncclCommAbort) ncclCommAbort;
  decltype(&::ncclCommDestroy) ncclCommDestroy;
  decltype(&::ncclSend) ncclSend;
  decltype(&::ncclRecv) ncclRecv;
  decltype(&::ncclBroadcast) ncclBroadcast;
  decltype(&::ncclReduce) ncclReduce;
  decltype(&::ncclAllReduce) ncclAllReduce;
  decltype(&::ncclGroupStart) ncclGroupStart;
  decltype(&::ncclGroupEnd) ncclGroupEnd;
};

// The library's entry points (loaded once, on the first call), or nullptr with *why naming the
// library and the loader's error, or the missing symbol.
const NcclApi* LoadNccl(std::string* why);

}  // namespace rs::par
