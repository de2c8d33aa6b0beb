// Sampling on the GPU (kernels/sampler.h's pipeline without logprobs): one token per logits row,
// the logits never leave the device. Plain C++ API like cuda_ops.h.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/sample_pack.h"

namespace rs::cuda {

// Reusable device buffers for the per-row parameters, penalty statistics and ids. They grow
// (doubling) the first time a batch needs more; otherwise Sample allocates nothing.
class DeviceSampler {
 public:
  // d_logits: n rows of `vocab` floats, row stride ldx (device; overwritten with the penalised,
  // scaled logits). reqs: one per row (params validated by the caller; top_logprobs ignored).
  // Writes the n chosen ids to ids (host) and waits for them.
  absl::Status Sample(float* d_logits, int64_t ldx, int64_t vocab,
                      std::span<const SampleRequest> reqs, int32_t* ids, Stream s);
  // Sizes the buffers up front (at model load) for `rows` rows and `entries` penalty / bias
  // entries in all, so that steps allocate nothing unless a batch exceeds them.
  absl::Status Reserve(int64_t rows, int64_t entries);

 private:
  sampling::Packed packed_;
  DeviceBuffer rows_, pens_, biases_, ids_;
};

}  // namespace rs::cuda
