// NCCL loaded at run time; see nccl_api.h.
#include "parallel/nccl/nccl_api.h"

#include <dlfcn.h>

#include <mutex>

#include "absl/strings/str_cat.h"

namespace rs::par {
namespace {

struct Loaded {
  NcclApi api{};
  bool ok = false;
  std::string why;
};

template <typename F>
bool Bind(void* lib, const char* name, F* out, std::string* why) {
  void* p = dlsym(lib, name);
  if (p == nullptr) {
    *why = absl::StrCat("NCCL library lacks ", name, " (older than NCCL 2.14?)");
    return false;
  }
  *out = reinterpret_cast<F>(p);
  return true;
}

Loaded Load() {
  Loaded l;
  void* lib = nullptr;
  std::string errors;
#ifdef RS_NCCL_BUILD_LIBRARY
  const char* const names[] = {"libnccl.so.2", "libnccl.so", RS_NCCL_BUILD_LIBRARY};
#else
  const char* const names[] = {"libnccl.so.2", "libnccl.so"};
#endif
  for (const char* name : names) {
    lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib != nullptr) break;
    const char* e = dlerror();
    absl::StrAppend(&errors, errors.empty() ? "" : "; ", e ? e : name);
  }
  if (lib == nullptr) {
    l.why = absl::StrCat("NCCL is not installed (", errors, ")");
    return l;
  }
  NcclApi& a = l.api;
  std::string* w = &l.why;
  l.ok = Bind(lib, "ncclGetVersion", &a.ncclGetVersion, w) &&
         Bind(lib, "ncclGetUniqueId", &a.ncclGetUniqueId, w) &&
         Bind(lib, "ncclCommInitRankConfig", &a.ncclCommInitRankConfig, w) &&
         Bind(lib, "ncclCommGetAsyncError", &a.ncclCommGetAsyncError, w) &&
         Bind(lib, "ncclGetErrorString", &a.ncclGetErrorString, w) &&
         Bind(lib, "ncclGetLastError", &a.ncclGetLastError, w) &&
         Bind(lib, "ncclCommAbort", &a.ncclCommAbort, w) &&
         Bind(lib, "ncclCommDestroy", &a.ncclCommDestroy, w) &&
         Bind(lib, "ncclSend", &a.ncclSend, w) && Bind(lib, "ncclRecv", &a.ncclRecv, w) &&
         Bind(lib, "ncclBroadcast", &a.ncclBroadcast, w) &&
         Bind(lib, "ncclReduce", &a.ncclReduce, w) &&
         Bind(lib, "ncclAllReduce", &a.ncclAllReduce, w) &&
         Bind(lib, "ncclGroupStart", &a.ncclGroupStart, w) &&
         Bind(lib, "ncclGroupEnd", &a.ncclGroupEnd, w);
  return l;  // the library stays loaded for the process's life
}

}  // namespace

const NcclApi* LoadNccl(std::string* why) {
  static const Loaded* loaded = new Loaded(Load());
  if (!loaded->ok) {
    if (why) *why = loaded->why;
    return nullptr;
  }
  return &loaded->api;
}

}  // namespace rs::par
