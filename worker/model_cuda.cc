// The CUDA backend of the Qwen3.5 model. Built only with CUDA (RIGSERVE_HAVE_CUDA); without it
// CreateCudaBackend says so.
#include "worker/model_internal.h"

#ifndef RIGSERVE_HAVE_CUDA
namespace rs {
absl::StatusOr<std::unique_ptr<CudaBackend>> CreateCudaBackend(const Model&) {
  return absl::UnimplementedError(
      "this rigserve was built without CUDA (nvcc was not found at configure time); use "
      "--backend cpu");
}
}  // namespace rs
#else
namespace rs {
absl::StatusOr<std::unique_ptr<CudaBackend>> CreateCudaBackend(const Model&) {
  return absl::UnimplementedError("the cuda model backend is being written");
}
}  // namespace rs
#endif
